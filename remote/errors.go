package remote

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
	xknownhosts "golang.org/x/crypto/ssh/knownhosts"
)

var (
	// ErrUnknownHostKey: the host is not in known_hosts and new keys are
	// not accepted (Config.AcceptNewHostKey).
	ErrUnknownHostKey = errors.New("unknown host key")
	// ErrHostKeyChanged: the host offered a key other than the one
	// recorded. It is always refused.
	ErrHostKeyChanged = errors.New("host key changed")
	// ErrAuth: the server accepted none of the keys offered.
	ErrAuth = errors.New("authentication refused")
	// ErrForwardingRefused: the server would not forward to a unix socket
	// (AllowStreamLocalForwarding no); use DialBridge instead.
	ErrForwardingRefused = errors.New("forwarding refused by the server")
	// ErrUnsafeArgument: an argument holds a NUL or a newline, which no
	// quoting carries safely through a remote shell.
	ErrUnsafeArgument = errors.New("argument refused")
	// ErrConnLost: the connection died (server gone, keepalives
	// unanswered).
	ErrConnLost = errors.New("connection lost")
	// ErrClosed: the connection was closed by its owner.
	ErrClosed = errors.New("connection closed")
)

// HostKeyError is a refused host key. errors.Is matches it to
// ErrHostKeyChanged when a different key is recorded (Known is not empty),
// else to ErrUnknownHostKey.
type HostKeyError struct {
	Host    string                 // as known_hosts names it: "gpu-box", "[10.0.0.5]:2222"
	File    string                 // the known_hosts file checked
	Offered ssh.PublicKey          // the key the server presented
	Known   []xknownhosts.KnownKey // the recorded keys, with file and line
}

func (e *HostKeyError) Unwrap() error {
	if len(e.Known) > 0 {
		return ErrHostKeyChanged
	}
	return ErrUnknownHostKey
}

func (e *HostKeyError) Error() string {
	offered := fingerprint(e.Offered)
	if len(e.Known) == 0 {
		return fmt.Sprintf("unknown host key for %s: %s is not in %s; "+
			"if that is the host's fingerprint, pass --accept-new-host-key (or connect once with ssh to record it)",
			e.Host, offered, e.File)
	}
	var recorded []string
	for _, k := range e.Known {
		recorded = append(recorded, fmt.Sprintf("%s (%s:%d)", fingerprint(k.Key), k.Filename, k.Line))
	}
	k := e.Known[0]
	return fmt.Sprintf("host key for %s changed: recorded %s, offered %s; refusing to connect "+
		"(the host was reinstalled, or someone is in the middle); if the change is expected, "+
		"remove line %d of %s (ssh-keygen -R '%s' -f %s) and connect again",
		e.Host, strings.Join(recorded, ", "), offered, k.Line, k.Filename, e.Host, k.Filename)
}

func fingerprint(k ssh.PublicKey) string {
	if k == nil {
		return "no key"
	}
	return k.Type() + " " + ssh.FingerprintSHA256(k)
}

// AuthError is a refused login; errors.Is matches it to ErrAuth.
type AuthError struct {
	User    string   // remote user
	Addr    string   // host:port
	Tried   []string // the keys offered, each with its fingerprint
	Skipped []string // keys that could not be offered, and why
	Err     error    // what the SSH library said
}

func (e *AuthError) Unwrap() error { return ErrAuth }

func (e *AuthError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: log in as %s on %s", ErrAuth, e.User, e.Addr)
	if len(e.Tried) == 0 {
		b.WriteString(": no key to offer (no ssh-agent keys, no identity file found)")
	} else {
		fmt.Fprintf(&b, ": server accepted none of %s", strings.Join(e.Tried, ", "))
	}
	if len(e.Skipped) > 0 {
		fmt.Fprintf(&b, "; skipped %s", strings.Join(e.Skipped, ", "))
	}
	fmt.Fprintf(&b, "; check that the public key is in ~%s/.ssh/authorized_keys on the host, "+
		"that ~/.ssh is 0700, authorized_keys 0600, both owned by %s and the home not group- or world-writable, "+
		"or pass --identity with the right key", e.User, e.User)
	if e.Err != nil {
		fmt.Fprintf(&b, " (%v)", e.Err)
	}
	return b.String()
}

// ExitError is a remote command that ran and failed.
type ExitError struct {
	Host    string // the name the caller dialed
	Command string // argv[0]
	Status  int    // exit status; 128+n when signal n ended it
	Signal  string // the signal's name, if one ended it
	Stderr  []byte // the last 32 KiB of its stderr (Run only)
}

func (e *ExitError) Error() string {
	how := fmt.Sprintf("exit status %d", e.Status)
	if e.Signal != "" {
		how = "killed by signal " + e.Signal
	}
	msg := fmt.Sprintf("run %s on %s: %s", e.Command, e.Host, how)
	if s := strings.TrimSpace(string(e.Stderr)); s != "" {
		msg += ": " + s
	}
	return msg
}
