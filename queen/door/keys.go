package door

import (
	"bufio"
	"context"
	"crypto/subtle"
	"fmt"
	"log/slog"
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

// Guard lets a door request through to next when the door is open (no
// token and no keys: loopback only) or when it bears the token or an API
// key; a key limited to some models gets only those. Keys and the token
// are compared in constant time and never logged.
func Guard(token string, keys []APIKey, log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if token == "" && len(keys) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		got, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1 {
			next.ServeHTTP(w, r)
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
			refuse(w, r, http.StatusUnauthorized, "invalid_request_error", "invalid_api_key", "this queen needs an API key: send Authorization: Bearer KEY")
			return
		}
		if r.URL.Path == "/metrics" && len(match.Models) > 0 {
			// The metrics name every model and hive: not for a key that
			// may see only some.
			refuse(w, r, http.StatusForbidden, "invalid_request_error", "metrics_not_allowed",
				fmt.Sprintf("key %s is limited to some models; /metrics needs the token or a key for every model", match.ID))
			return
		}
		log.Info("front door", "key", match.ID, "path", r.URL.Path)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), keyCtx{}, match)))
	})
}
