package queen

import (
	"bufio"
	"context"
	"crypto/subtle"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
)

// APIKey is a key for the front door, optionally limited to some models.
// Its ID may be logged; the key never is.
type APIKey struct {
	ID     string
	key    string
	Models []string // names the key may use; none = every model
}

// ReadAPIKeys reads a keys file that only its owner may read: one key a
// line, "ID KEY [MODEL,MODEL…]"; blank lines and lines starting with #
// are skipped. Errors name the file and line, never the key.
func ReadAPIKeys(path string) ([]APIKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("api keys: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("api keys file %s is mode %#o: others can read it; chmod 600 %s", path, st.Mode().Perm(), path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("api keys: %w", err)
	}
	defer f.Close()
	var keys []APIKey
	ids := map[string]bool{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fs := strings.Fields(line)
		if len(fs) < 2 || len(fs) > 3 {
			return nil, fmt.Errorf("%s:%d: want ID KEY [MODEL,MODEL…]", path, n)
		}
		if len(fs[1]) < 16 {
			return nil, fmt.Errorf("%s:%d: key %s is shorter than 16 characters (e.g. openssl rand -hex 32)", path, n, fs[0])
		}
		if ids[fs[0]] {
			return nil, fmt.Errorf("%s:%d: key id %s is used twice", path, n, fs[0])
		}
		ids[fs[0]] = true
		k := APIKey{ID: fs[0], key: fs[1]}
		if len(fs) == 3 {
			k.Models = strings.Split(fs[2], ",")
		}
		keys = append(keys, k)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("api keys %s: %w", path, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("api keys file %s holds no key", path)
	}
	return keys, nil
}

type keyCtx struct{}

// allows reports whether the request's key may use model.
func allows(ctx context.Context, model string) bool {
	k, ok := ctx.Value(keyCtx{}).(*APIKey)
	return !ok || len(k.Models) == 0 || slices.Contains(k.Models, model)
}

// TCPHandler serves the queen's TCP port: /health open; the front door
// (models, completions, /metrics) to anyone on loopback when neither a
// token nor keys are configured, else to requests bearing the token or an
// API key (a key limited to some models gets only those); the control
// routes only with the token. Keys and the token are compared in constant
// time and never logged.
func (q *Queen) TCPHandler(token string, keys []APIKey) http.Handler {
	public := q.PublicHandler()
	var control http.Handler
	if token != "" {
		control = RequireToken(token, q.ControlHandler())
	}
	door := map[string]bool{"/v1/models": true, "/v1/completions": true, "/v1/chat/completions": true, "/metrics": true}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			public.ServeHTTP(w, r)
			return
		}
		if !door[r.URL.Path] {
			if control == nil {
				public.ServeHTTP(w, r) // 404: nothing administrative here
				return
			}
			control.ServeHTTP(w, r)
			return
		}
		if token == "" && len(keys) == 0 {
			public.ServeHTTP(w, r)
			return
		}
		got, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1 {
			public.ServeHTTP(w, r)
			return
		}
		var match *APIKey
		for i := range keys {
			if subtle.ConstantTimeCompare([]byte(got), []byte(keys[i].key)) == 1 {
				match = &keys[i]
			}
		}
		if match == nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="rbee"`)
			writeOAI(w, http.StatusUnauthorized, "invalid_request_error", "invalid_api_key", "this queen needs an API key: send Authorization: Bearer KEY")
			return
		}
		q.log.Info("front door", "key", match.ID, "path", r.URL.Path)
		public.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), keyCtx{}, match)))
	})
}
