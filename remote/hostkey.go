package remote

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"

	"github.com/skeema/knownhosts"
	"golang.org/x/crypto/ssh"
	xknownhosts "golang.org/x/crypto/ssh/knownhosts"
)

// hostKeys checks host keys against one known_hosts file, and appends new
// ones when allowed. It reads the file on every check, so a key recorded by
// another process (or by ssh) counts at once.
type hostKeys struct {
	file   string
	accept bool
	mu     sync.Mutex // appends within this process; flock covers others
}

func (h *hostKeys) db() (*knownhosts.HostKeyDB, error) {
	if h.file == "" {
		return nil, errors.New("no known_hosts file (set Config.KnownHosts or $HOME)")
	}
	if _, err := os.Stat(h.file); errors.Is(err, os.ErrNotExist) {
		return knownhosts.NewDB()
	}
	db, err := knownhosts.NewDB(h.file)
	if err != nil {
		return nil, fmt.Errorf("read known_hosts: %w", err)
	}
	return db, nil
}

// algorithms puts the key types recorded for addr first, so a server with
// several host keys presents the one we know; the rest follow, so a server
// that lost that key shows another and is refused as changed.
func (h *hostKeys) algorithms(addr string) []string {
	db, err := h.db()
	if err != nil {
		return nil
	}
	known := db.HostKeyAlgorithms(addr)
	if len(known) == 0 {
		return nil
	}
	for _, a := range ssh.SupportedAlgorithms().HostKeys {
		if !slices.Contains(known, a) {
			known = append(known, a)
		}
	}
	return known
}

func (h *hostKeys) check(hostname string, remote net.Addr, key ssh.PublicKey) error {
	db, err := h.db()
	if err != nil {
		return err
	}
	err = db.HostKeyCallback()(hostname, remote, key)
	if err == nil {
		return nil
	}
	var ke *xknownhosts.KeyError
	if !errors.As(err, &ke) {
		return fmt.Errorf("check host key of %s: %w", knownhosts.Normalize(hostname), err)
	}
	hkErr := &HostKeyError{Host: knownhosts.Normalize(hostname), File: h.file, Offered: key, Known: ke.Want}
	if len(ke.Want) > 0 || !h.accept {
		return hkErr
	}
	return h.add(hostname, key)
}

// add appends the key, unless another dial recorded this host meanwhile.
func (h *hostKeys) add(hostname string, key ssh.PublicKey) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(h.file), 0o700); err != nil {
		return fmt.Errorf("record host key: %w", err)
	}
	f, err := os.OpenFile(h.file, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("record host key: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("record host key: lock %s: %w", h.file, err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	db, err := h.db()
	if err != nil {
		return err
	}
	if err := db.HostKeyCallback()(hostname, &net.TCPAddr{}, key); err == nil {
		return nil
	} else if knownhosts.IsHostKeyChanged(err) {
		var ke *xknownhosts.KeyError
		errors.As(err, &ke)
		return &HostKeyError{Host: knownhosts.Normalize(hostname), File: h.file, Offered: key, Known: ke.Want}
	}
	// OpenSSH records the name dialed, [host]:port for other ports than 22.
	if _, err := fmt.Fprintln(f, knownhosts.Line([]string{hostname}, key)); err != nil {
		return fmt.Errorf("record host key in %s: %w", h.file, err)
	}
	return nil
}
