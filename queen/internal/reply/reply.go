package reply

import (
	"encoding/json"
	"net/http"

	"github.com/rbee-dev/rbee"
)

// JSON answers with v as JSON and the status code.
func JSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// Error answers with rbee's error shape: code, message and hint.
func Error(w http.ResponseWriter, status int, err error) {
	e := rbee.Error{Code: rbee.CodeOf(err), Message: err.Error(), Hint: rbee.HintOf(err)}
	JSON(w, status, map[string]any{"error": e})
}
