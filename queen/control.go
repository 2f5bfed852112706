package queen

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/internal/peer"
	"github.com/rbee-dev/rbee/queen/door"
	"github.com/rbee-dev/rbee/queen/internal/reply"
)

// ListenControl listens on the queen's control socket: mode 0600 in a
// 0700 directory, so only the owner can connect, and every connection's
// peer uid is read (SO_PEERCRED) for OwnerOnly to check. A stale socket
// left by a queen that died is replaced; a live queen's is not.
func ListenControl(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	// One queen per socket, decided by a lock the kernel drops when the
	// process dies: two queens started at once (two keepers on a fresh
	// home) must not both take the socket, the second unlinking the
	// first's.
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, ErrQueenRunning)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		lock.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	// The socket is created 0600 from the start: no window in which
	// another user could connect.
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return &lockedListener{Listener: ln, lock: lock}, nil
}

// lockedListener holds the queen's lock for as long as it listens.
type lockedListener struct {
	net.Listener
	lock *os.File
}

func (l *lockedListener) Close() error {
	err := l.Listener.Close()
	l.lock.Close()
	return err
}

// ErrQueenRunning means another queen already serves that control socket.
var ErrQueenRunning = errors.New("another queen is running")

// PeerContext records the uid of a unix-socket peer in the request
// context (http.Server.ConnContext).
func PeerContext(ctx context.Context, c net.Conn) context.Context { return peer.Context(ctx, c) }

// OwnerOnly refuses (403) every request whose peer is not the queen's own
// user (or root): the socket's mode keeps others out, this keeps them out
// even if the mode is loosened.
func OwnerOnly(h http.Handler) http.Handler {
	return peer.OwnerOnly(h, func(w http.ResponseWriter, me int) {
		reply.Error(w, http.StatusForbidden, rbee.Errorf(rbee.CodeBadRequest, "this queen serves only its owner (uid %d)", me))
	})
}

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
			reply.Error(w, http.StatusUnauthorized, rbee.Errorf(rbee.CodeQueenDown, "this queen needs a bearer token: set RBEE_TOKEN_FILE (or --token-file) to its token file"))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// TCPConfig is how the queen's TCP port is guarded.
type TCPConfig struct {
	Token  string        // grants the control routes and the door; "" = none
	Keys   []door.APIKey // grant the door (a key may be limited to some models)
	Listen string        // the address the port listens on (its host is a name the queen answers to)
	Fence  door.FenceConfig
}

// TCPHandler serves the queen's TCP port: /health and / (Ollama's
// heartbeat) open; everything else
// only to requests a web page could not have made (door.Fence: the Host
// names this queen, no foreign Origin; door.RequireJSON: JSON bodies at
// the door); the front door
// (door.IsRoute: its OpenAI and Ollama routes, /metrics) to anyone on loopback when
// neither a token nor keys are configured, else to requests bearing the
// token or an API key (door.Guard); the control routes only with the token.
func (q *Queen) TCPHandler(cfg TCPConfig) http.Handler {
	public := q.PublicHandler()
	guarded := door.RequireJSON(door.Guard(cfg.Token, cfg.Keys, q.log, public))
	var control http.Handler
	if cfg.Token != "" {
		control = RequireToken(cfg.Token, q.ControlHandler())
	}
	return door.Fence(cfg.Fence, cfg.Listen, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/health", r.URL.Path == "/":
			public.ServeHTTP(w, r) // "/": Ollama's heartbeat, open as Ollama's is
		case door.IsRoute(r.URL.Path):
			guarded.ServeHTTP(w, r)
		case control != nil:
			control.ServeHTTP(w, r)
		default:
			public.ServeHTTP(w, r) // 404: nothing administrative here
		}
	}))
}
