package peer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"

	"golang.org/x/sys/unix"
)

type uidKey struct{}

// UID is the uid of the process at the other end of a unix socket, as the
// kernel tells it (SO_PEERCRED): nothing the peer says about itself.
func UID(c net.Conn) (int, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return -1, errors.New("peer uid: not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("peer uid: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return -1, fmt.Errorf("peer uid: %w", err)
	}
	if cerr != nil {
		return -1, fmt.Errorf("peer uid: %w", cerr)
	}
	return int(cred.Uid), nil
}

// Context records the uid of a unix-socket peer in the connection's
// context (http.Server.ConnContext); OwnerOnly reads it.
func Context(ctx context.Context, c net.Conn) context.Context {
	uid, err := UID(c)
	if err != nil {
		return ctx
	}
	return context.WithValue(ctx, uidKey{}, uid)
}

// Allowed says whether uid may use a socket of this process: its own user,
// or root (who can reach the process anyway).
func Allowed(uid int) bool { return uid == os.Getuid() || uid == 0 }

// OwnerOnly passes to h only requests whose peer is allowed (its uid read
// by Context); every other request goes to refuse. The socket's mode keeps
// other users out; this keeps them out when the mode is loosened.
func OwnerOnly(h http.Handler, refuse func(w http.ResponseWriter, me int)) http.Handler {
	me := os.Getuid()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uid, ok := r.Context().Value(uidKey{}).(int)
		if !ok || !Allowed(uid) {
			refuse(w, me)
			return
		}
		h.ServeHTTP(w, r)
	})
}
