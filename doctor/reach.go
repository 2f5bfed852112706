package doctor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/skeema/knownhosts"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/rbee-dev/rbee/remote"
)

const dialTimeout = 10 * time.Second

// reach walks the steps to a login on t (resolve, connect, handshake with
// the host key check, auth), reports the first that fails, and returns the
// connection when all pass.
func reach(ctx context.Context, rep *Report, t remote.Target, cfg remote.Config) (*remote.Conn, bool) {
	if cfg.KnownHosts == "" {
		if home, err := os.UserHomeDir(); err == nil {
			cfg.KnownHosts = filepath.Join(home, ".ssh", "known_hosts")
		}
	}
	timeout := cfg.DialTimeout
	if timeout <= 0 {
		timeout = dialTimeout
	}
	r, err := remote.Resolve(t, cfg)
	if err != nil {
		rep.add(checkReach, Fail, "check the host name, and the entry for it in ~/.ssh/config", "resolve: %v", err)
		return nil, false
	}
	rep.Target = fmt.Sprintf("%s@%s", r.User, r.Addr)
	steps := "resolved, connected"
	if len(r.ProxyJump) == 0 {
		host, _, _ := net.SplitHostPort(r.Addr)
		if net.ParseIP(host) == nil {
			addrs, err := net.DefaultResolver.LookupHost(ctx, host)
			if err != nil {
				rep.add(checkReach, Fail, "check the host name (DNS, /etc/hosts) or use its IP address", "resolve %s: %v", host, err)
				return nil, false
			}
			steps = fmt.Sprintf("resolved to %s, connected", addrs[0])
		}
		dctx, cancel := context.WithTimeout(ctx, timeout)
		var d net.Dialer
		nc, err := d.DialContext(dctx, "tcp", r.Addr)
		cancel()
		if err != nil {
			rep.add(checkReach, Fail, "check that the host is up, that sshd listens on that port, and that no firewall drops it",
				"connect to %s: %v", r.Addr, err)
			return nil, false
		}
		nc.Close()
	} else {
		steps = fmt.Sprintf("connected through %v", r.ProxyJump)
	}

	strict := cfg
	strict.AcceptNewHostKey = false
	c, err := remote.Dial(ctx, t, strict)
	recorded := false
	if errors.Is(err, remote.ErrUnknownHostKey) && cfg.AcceptNewHostKey {
		c, err = remote.Dial(ctx, t, cfg)
		recorded = err == nil
	}
	var hkErr *remote.HostKeyError
	var authErr *remote.AuthError
	switch {
	case errors.As(err, &hkErr):
		rep.add(checkReach, Fail, "", "%s; stopped at the host key check of the handshake", steps)
		rep.Facts.HostKey = "unknown"
		hint := "if that is the host's fingerprint, pass --accept-new-host-key (or connect once with ssh to record it)"
		if errors.Is(err, remote.ErrHostKeyChanged) {
			rep.Facts.HostKey = "changed"
			hint = "if the host was reinstalled, remove the old key from known_hosts (see above) and run again"
		}
		rep.add(checkHostKey, Fail, hint, "%v", err)
		return nil, false
	case errors.As(err, &authErr):
		rep.Facts.HostKey = "known"
		rep.add(checkReach, Fail, "", "%s, handshake ok; stopped at auth", steps)
		rep.add(checkHostKey, OK, "", "known (%s)", cfg.KnownHosts)
		rep.add(checkAuth, Fail, "", "%v", err)
		return nil, false
	case err != nil:
		rep.add(checkReach, Fail, "is it an SSH server on that port?", "%s; handshake: %v", steps, err)
		return nil, false
	}
	rep.add(checkReach, OK, "", "%s, handshake and login ok", steps)

	info := sshDetails(ctx, c.Resolved(), cfg, timeout)
	if recorded {
		rep.Facts.HostKey = "recorded"
		rep.add(checkHostKey, OK, "", "new host key %s recorded in %s (--accept-new-host-key)", info.hostKey, cfg.KnownHosts)
	} else {
		rep.Facts.HostKey = "known"
		rep.add(checkHostKey, OK, "", "known: %s (%s)", orUnknown(info.hostKey), cfg.KnownHosts)
	}
	rep.Facts.AuthMethod = "publickey"
	if info.key != "" {
		rep.add(checkAuth, OK, "", "publickey: %s", info.key)
		rep.Facts.AuthMethod += " " + info.key
	} else {
		rep.add(checkAuth, OK, "", "publickey")
	}
	rep.Facts.Forwarding = info.forwarding
	switch info.forwarding {
	case "allowed":
		rep.add(checkForwarding, OK, "", "allowed: rbee reaches the agent through a forwarded socket")
	case "refused":
		rep.add(checkForwarding, Warn, "set AllowStreamLocalForwarding yes (and no DisableForwarding) in the host's sshd_config, or drop no-port-forwarding/restrict from the key in authorized_keys",
			"refused by the server (%s): rbee falls back to carrying the agent's traffic over an exec channel, which is slower", info.forwardingDetail)
	default:
		rep.add(checkForwarding, Skip, "", "not checked: %s", info.forwardingDetail)
	}
	return c, true
}

func orUnknown(s string) string {
	if s == "" {
		return "key not read"
	}
	return s
}

// sshInfo is what a second, short connection learns that remote.Conn does
// not say: the host key, the key the server accepted, and whether it
// forwards.
type sshInfo struct {
	hostKey          string // "ssh-ed25519 SHA256:…"
	key              string // the accepted key, as named in the auth error
	forwarding       string // "allowed", "refused", "" (unknown)
	forwardingDetail string
}

// sshDetails logs in once more, on its own, to learn what remote.Conn
// does not expose: which key the server accepted (the one signer asked
// to sign: x/crypto/ssh queries each key and signs only with an accepted
// one) and whether the server forwards. Forwarding is tested with a
// direct-tcpip open to 127.0.0.1 port 0, which nothing can listen on:
// OpenSSH answers "administratively prohibited" when forwarding is off
// (AllowTcpForwarding, DisableForwarding, no-port-forwarding) and
// "connect failed" when it is on. (Its streamlocal answer to a missing
// socket is "connect failed" either way, so it cannot tell; rbee sets
// both options alike, and so do sshd's DisableForwarding and a key's
// restrict.) Nothing is written on the host.
func sshDetails(ctx context.Context, r remote.Resolved, cfg remote.Config, timeout time.Duration) sshInfo {
	var info sshInfo
	if len(r.ProxyJump) > 0 {
		info.forwardingDetail = "the host is behind a ProxyJump"
		return info
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(dctx, "tcp", r.Addr)
	if err != nil {
		info.forwardingDetail = err.Error()
		return info
	}
	stop := context.AfterFunc(dctx, func() { nc.Close() })
	defer stop()

	var hostKeyCB ssh.HostKeyCallback
	var algos []string
	if db, err := knownhosts.NewDB(cfg.KnownHosts); err == nil {
		hostKeyCB = db.HostKeyCallback()
		algos = db.HostKeyAlgorithms(r.Addr)
		for _, a := range ssh.SupportedAlgorithms().HostKeys {
			if len(algos) > 0 && !slices.Contains(algos, a) {
				algos = append(algos, a)
			}
		}
	} else {
		nc.Close()
		info.forwardingDetail = fmt.Sprintf("read %s: %v", cfg.KnownHosts, err)
		return info
	}
	signers, closeAgent := offeredKeys(r.IdentityFiles, cfg.UseAgent)
	defer closeAgent()
	var mu sync.Mutex
	var wrapped []ssh.Signer
	for _, s := range signers {
		wrapped = append(wrapped, &namedSigner{Signer: s.Signer, name: s.name, used: func(name string) {
			mu.Lock()
			info.key = name
			mu.Unlock()
		}})
	}
	ccfg := &ssh.ClientConfig{
		User: r.User,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(wrapped...)},
		HostKeyCallback: func(host string, addr net.Addr, key ssh.PublicKey) error {
			mu.Lock()
			info.hostKey = key.Type() + " " + ssh.FingerprintSHA256(key)
			mu.Unlock()
			return hostKeyCB(host, addr, key)
		},
		HostKeyAlgorithms: algos,
	}
	sc, chans, reqs, err := ssh.NewClientConn(nc, r.Addr, ccfg)
	if err != nil {
		nc.Close()
		info.forwardingDetail = fmt.Sprintf("second login: %v", err)
		return info
	}
	client := ssh.NewClient(sc, chans, reqs)
	defer client.Close()
	ch, err := client.DialContext(dctx, "tcp", "127.0.0.1:0")
	var oce *ssh.OpenChannelError
	switch {
	case err == nil:
		ch.Close()
		info.forwarding = "allowed"
	case errors.As(err, &oce) && oce.Reason == ssh.Prohibited:
		info.forwarding, info.forwardingDetail = "refused", oce.Error()
	case errors.As(err, &oce):
		info.forwarding = "allowed" // the server tried to connect
	default:
		info.forwardingDetail = err.Error()
	}
	return info
}

type offered struct {
	ssh.Signer
	name string
}

// offeredKeys loads what remote offers, in its order: agent keys, then
// key files (those that parse without a passphrase).
func offeredKeys(files []string, useAgent bool) ([]offered, func()) {
	var keys []offered
	closeAgent := func() {}
	if sock := os.Getenv("SSH_AUTH_SOCK"); useAgent && sock != "" {
		if conn, err := net.DialTimeout("unix", sock, 2*time.Second); err == nil {
			closeAgent = func() { conn.Close() }
			if ss, err := agent.NewClient(conn).Signers(); err == nil {
				for _, s := range ss {
					keys = append(keys, offered{s, "agent key " + ssh.FingerprintSHA256(s.PublicKey())})
				}
			}
		}
	}
	for _, path := range files {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		s, err := ssh.ParsePrivateKey(b)
		if err != nil {
			continue
		}
		keys = append(keys, offered{s, fmt.Sprintf("%s (%s %s)", path, s.PublicKey().Type(), ssh.FingerprintSHA256(s.PublicKey()))})
	}
	return keys, closeAgent
}

// namedSigner reports its name when asked to sign: the server accepted
// its key.
type namedSigner struct {
	ssh.Signer
	name string
	used func(string)
}

func (s *namedSigner) Sign(rand io.Reader, data []byte) (*ssh.Signature, error) {
	s.used(s.name)
	return s.Signer.Sign(rand, data)
}

// SignWithAlgorithm keeps rsa-sha2 working: the library signs RSA keys
// through it when the signer has it.
func (s *namedSigner) SignWithAlgorithm(rand io.Reader, data []byte, algorithm string) (*ssh.Signature, error) {
	s.used(s.name)
	if as, ok := s.Signer.(ssh.AlgorithmSigner); ok {
		return as.SignWithAlgorithm(rand, data, algorithm)
	}
	if algorithm != "" && algorithm != s.PublicKey().Type() {
		return nil, fmt.Errorf("sign with %s: key %s cannot", algorithm, s.name)
	}
	return s.Signer.Sign(rand, data)
}
