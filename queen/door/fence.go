package door

import (
	"mime"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
)

// FenceConfig says who may reach the queen's TCP port from a browser's
// point of view: the names it answers to and the web origins allowed to
// call it.
type FenceConfig struct {
	// Hosts are names the queen answers to besides the loopback names
	// (localhost, 127.0.0.1, ::1) and the address it listens on: the
	// owner's names for this machine (--door-host). A request whose Host
	// is none of them is a DNS-rebinding page's and is refused.
	Hosts []string
	// Origins are the web origins (scheme://host[:port]) whose pages may
	// call the door (--cors-origin); none by default. A browser request
	// from any other origin is refused, preflights are answered only for
	// these.
	Origins []string
}

// Fence refuses what a web page could send to the queen's TCP port: a Host
// that does not name this queen (DNS rebinding), an Origin not allowed (a
// page calling the door with the owner's network position). Refusals are
// OpenAI-shaped 403s that say what to configure. Allowed origins get CORS
// headers and preflights. /health stays open. (RequireJSON guards the
// door's bodies.)
func Fence(cfg FenceConfig, listen string, next http.Handler) http.Handler {
	hosts := map[string]bool{"localhost": true, "127.0.0.1": true, "::1": true}
	if h, _, err := net.SplitHostPort(listen); err == nil {
		if ip := net.ParseIP(h); h != "" && (ip == nil || !ip.IsUnspecified()) {
			hosts[strings.ToLower(h)] = true
		} else {
			// Every address: this machine's name and addresses are the
			// queen's names.
			if name, err := os.Hostname(); err == nil {
				hosts[strings.ToLower(name)] = true
			}
			addrs, _ := net.InterfaceAddrs()
			for _, a := range addrs {
				if ipn, ok := a.(*net.IPNet); ok {
					hosts[ipn.IP.String()] = true
				}
			}
		}
	}
	for _, h := range cfg.Hosts {
		hosts[strings.ToLower(strings.TrimSuffix(h, "."))] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			next.ServeHTTP(w, r)
			return
		}
		if !hosts[hostOnly(r.Host)] {
			refuse(w, r, http.StatusForbidden, "invalid_request_error", "host_not_allowed",
				"this queen does not answer to host "+quoteHost(r.Host)+"; if it is this machine's name, start the queen with --door-host "+hostOnly(r.Host)+" (RBEE_DOOR_HOSTS)")
			return
		}
		origin := r.Header.Get("Origin")
		if origin != "" {
			if !slices.Contains(cfg.Origins, origin) {
				refuse(w, r, http.StatusForbidden, "invalid_request_error", "origin_not_allowed",
					"web pages of "+origin+" may not call this queen; to let them, start the queen with --cors-origin "+origin+" (RBEE_CORS_ORIGINS)")
				return
			}
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", origin)
			h.Add("Vary", "Origin")
			if r.Method == http.MethodOptions {
				h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
				h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, OpenAI-Organization, OpenAI-Project, X-Stainless-Lang, X-Stainless-Package-Version, X-Stainless-OS, X-Stainless-Arch, X-Stainless-Runtime, X-Stainless-Runtime-Version, X-Stainless-Retry-Count, X-Stainless-Timeout")
				h.Set("Access-Control-Max-Age", "600")
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// RequireJSON refuses (415) a door POST whose body is not declared JSON: a
// page's "simple" cross-site request (text/plain, a form) needs no
// preflight, so a door that accepted it could be driven by any page.
func RequireJSON(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && !isJSON(r.Header.Get("Content-Type")) {
			refuse(w, r, http.StatusUnsupportedMediaType, "invalid_request_error", "unsupported_media_type",
				"the body must be JSON: send Content-Type: application/json")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// hostOnly is the Host header without its port, lowercased.
func hostOnly(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
}

func quoteHost(h string) string {
	if h == "" {
		return `"" (none)`
	}
	return `"` + h + `"`
}

func isJSON(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "application/json"
}
