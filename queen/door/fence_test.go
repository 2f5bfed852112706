package door

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestFence: what a web page can send is refused — a Host that does not
// name the queen (DNS rebinding), an Origin not allowed, a POST that is not
// JSON (a simple cross-site request) — with what to configure; allowed
// origins get CORS headers and preflights; /health and programs (no
// Origin, JSON) pass.
func TestFence(t *testing.T) {
	t.Parallel()
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	h := Fence(FenceConfig{Hosts: []string{"gpu-box.lan"}, Origins: []string{"https://app.example"}}, "127.0.0.1:7833", RequireJSON(ok))
	tests := []struct {
		name, method, path, host, origin, ctype string
		want                                    int
		body                                    string // in the answer
	}{
		{"program on loopback", "POST", "/v1/completions", "127.0.0.1:7833", "", "application/json", http.StatusTeapot, ""},
		{"localhost", "GET", "/v1/models", "localhost:7833", "", "", http.StatusTeapot, ""},
		{"ipv6 loopback", "GET", "/v1/models", "[::1]:7833", "", "", http.StatusTeapot, ""},
		{"configured name", "GET", "/metrics", "GPU-BOX.lan:7833", "", "", http.StatusTeapot, ""},
		{"json with charset", "POST", "/v1/chat/completions", "localhost", "", "application/json; charset=utf-8", http.StatusTeapot, ""},
		{"rebinding: completions", "POST", "/v1/completions", "evil.example", "", "application/json", http.StatusForbidden, "--door-host evil.example"},
		{"rebinding: models", "GET", "/v1/models", "evil.example:7833", "", "", http.StatusForbidden, "host_not_allowed"},
		{"rebinding: metrics", "GET", "/metrics", "evil.example", "", "", http.StatusForbidden, "host_not_allowed"},
		{"page of another origin", "POST", "/v1/completions", "127.0.0.1:7833", "http://evil.example", "application/json", http.StatusForbidden, "--cors-origin http://evil.example"},
		{"preflight of another origin", "OPTIONS", "/v1/completions", "127.0.0.1:7833", "http://evil.example", "", http.StatusForbidden, "origin_not_allowed"},
		{"text/plain (no preflight)", "POST", "/v1/completions", "127.0.0.1:7833", "", "text/plain", http.StatusUnsupportedMediaType, "application/json"},
		{"form", "POST", "/v1/completions", "127.0.0.1:7833", "", "application/x-www-form-urlencoded", http.StatusUnsupportedMediaType, "application/json"},
		{"allowed origin", "POST", "/v1/chat/completions", "localhost:7833", "https://app.example", "application/json", http.StatusTeapot, ""},
		{"allowed preflight", "OPTIONS", "/v1/chat/completions", "localhost:7833", "https://app.example", "", http.StatusNoContent, ""},
		{"health stays open", "GET", "/health", "evil.example", "http://evil.example", "", http.StatusTeapot, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(tt.method, tt.path, strings.NewReader("{}"))
			r.Host = tt.host
			if tt.origin != "" {
				r.Header.Set("Origin", tt.origin)
			}
			if tt.ctype != "" {
				r.Header.Set("Content-Type", tt.ctype)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			if rec.Code != tt.want || !strings.Contains(rec.Body.String(), tt.body) {
				t.Errorf("got %d %s, want %d with %q", rec.Code, rec.Body, tt.want, tt.body)
			}
			if tt.origin == "https://app.example" && rec.Header().Get("Access-Control-Allow-Origin") != tt.origin {
				t.Errorf("allowed origin: no Access-Control-Allow-Origin: %v", rec.Header())
			}
			if tt.method == "OPTIONS" && tt.want == http.StatusNoContent && !strings.Contains(rec.Header().Get("Access-Control-Allow-Headers"), "Authorization") {
				t.Errorf("preflight headers: %v", rec.Header())
			}
		})
	}
}
