package queen

import (
	"crypto/subtle"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/rbee-dev/rbee"
)

// ReadToken reads a bearer token from a file that only its owner may read
// (mode 0600 or stricter): a token others can read protects nothing.
func ReadToken(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("token file %s is mode %#o: others can read it; chmod 600 %s", path, st.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 {
		return "", fmt.Errorf("token file %s holds %d characters; use at least 16 (e.g. openssl rand -hex 32)", path, len(tok))
	}
	return tok, nil
}

// RequireToken lets requests through only with "Authorization: Bearer
// <token>", compared in constant time. /health stays open: it is how
// keepers and supervisors see the queen is up. The token is never logged.
func RequireToken(token string, h http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="rbee"`)
			writeErr(w, http.StatusUnauthorized, rbee.CodeQueenDown, "this queen needs a bearer token: set RBEE_TOKEN_FILE (or --token-file) to its token file")
			return
		}
		h.ServeHTTP(w, r)
	})
}
