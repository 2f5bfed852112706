package worker

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzDecodeBody: whatever a client sends as an OpenAI request body,
// decoding never panics, and a body it accepts holds one JSON value.
func FuzzDecodeBody(f *testing.F) {
	for _, s := range []string{
		`{"prompt":"abc","temperature":0,"stream":true}`,
		`{"messages":[{"role":"user","content":"hi"}],"max_tokens":4}`,
		`{"prompt":"a\u0000b"}`, `{"prompt":1}`, `{} {}`, ``, `{`, `[]`, `null`,
		`{"temperature":1e999}`, `{"stop":["a","b","c","d","e"]}`, `{"seed":-1}`, `{}}`, `{}]`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		for _, v := range []any{&completionRequest{}, &chatRequest{}} {
			r := httptest.NewRequest("POST", "/v1/completions", strings.NewReader(body))
			r.Header.Set("Content-Type", "application/json")
			w := httptest.NewRecorder()
			if _, e := decodeBody(w, r, v); e != nil {
				if e.Status < 400 || e.Status > 499 || e.Message == "" {
					t.Fatalf("decodeBody(%q): error %+v is not a client error", body, e)
				}
				continue
			}
			if !json.Valid([]byte(strings.TrimSpace(body))) {
				t.Fatalf("decodeBody accepted %q, which is not one JSON value", body)
			}
		}
	})
}
