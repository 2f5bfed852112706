package remote

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/kevinburke/ssh_config"
)

// Target says where to connect, before ~/.ssh/config is applied.
type Target struct {
	Host          string   // alias, host name or IP address
	User          string   // "" = from ssh config, else $USER
	Port          int      // 0 = from ssh config, else 22
	IdentityFiles []string // keys to offer first (--identity)
}

// Config holds what every connection shares.
type Config struct {
	// KnownHosts is the known_hosts file to check and, with
	// AcceptNewHostKey, append to. Default ~/.ssh/known_hosts.
	KnownHosts string
	// AcceptNewHostKey records the key of a host not yet known, like
	// OpenSSH's StrictHostKeyChecking=accept-new. A changed key is refused
	// regardless.
	AcceptNewHostKey bool
	// SSHConfig is the ssh_config file to apply. Default ~/.ssh/config;
	// "none" (as with ssh -F none) or a missing file applies none.
	SSHConfig string
	// UseAgent offers the keys of the ssh-agent at $SSH_AUTH_SOCK.
	UseAgent bool
	// Keepalive is how often a keepalive@openssh.com request is sent; three
	// unanswered in a row end the connection. Default 15s.
	Keepalive time.Duration
	// DialTimeout bounds each hop's connect and handshake. Default 10s.
	DialTimeout time.Duration
	// SFTPIdle is how long an unused SFTP session stays open (each holds
	// an sftp-server process on the host); checked at each keepalive.
	// Default 30s.
	SFTPIdle time.Duration
}

// Resolved is a Target with ~/.ssh/config applied.
type Resolved struct {
	Host          string   // the name asked for (Target.Host)
	Addr          string   // host:port dialed
	User          string   // remote user
	IdentityFiles []string // key files to offer, in order
	ProxyJump     []string // jump hosts, first dialed first ([user@]host[:port])
	// KnownHosts is the config's UserKnownHostsFile for the host (its
	// first file, as OpenSSH writes to); "" when it sets none.
	KnownHosts string
}

func (c Config) withDefaults() Config {
	if c.Keepalive <= 0 {
		c.Keepalive = 15 * time.Second
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.SFTPIdle <= 0 {
		c.SFTPIdle = 30 * time.Second
	}
	if c.KnownHosts == "" {
		if home, err := os.UserHomeDir(); err == nil {
			c.KnownHosts = filepath.Join(home, ".ssh", "known_hosts")
		}
	}
	return c
}

// validHost keeps a host name to what DNS names and IP literals use, so a
// name carrying shell or option syntax is refused before anything happens.
var validHost = regexp.MustCompile(`^[A-Za-z0-9_.:%\[\]-]+$`)

// Resolve applies the ssh config (HostName, User, Port, IdentityFile,
// ProxyJump) to t, the way OpenSSH would: values in t win, then the first
// matching value in the file. Default identity files (~/.ssh/id_ed25519,
// id_ecdsa, id_rsa, those that exist) are used only when neither t nor the
// config names one, as OpenSSH does.
func Resolve(t Target, cfg Config) (Resolved, error) {
	r, err := resolve(t, cfg)
	if err != nil {
		return Resolved{}, fmt.Errorf("resolve %s: %w", t.Host, err)
	}
	return r, nil
}

func resolve(t Target, cfg Config) (Resolved, error) {
	if t.Host == "" {
		return Resolved{}, errors.New("no host given")
	}
	if !validHost.MatchString(t.Host) || strings.HasPrefix(t.Host, "-") {
		return Resolved{}, fmt.Errorf("host name %q holds characters no host name has", t.Host)
	}
	sc, err := loadSSHConfig(cfg.SSHConfig)
	if err != nil {
		return Resolved{}, err
	}
	get := func(key string) string {
		if sc == nil {
			return ""
		}
		v, _ := sc.Get(t.Host, key)
		return unquote(v)
	}
	if pc := get("ProxyCommand"); pc != "" && !strings.EqualFold(pc, "none") {
		return Resolved{}, fmt.Errorf("ProxyCommand (%s) is not supported; use ProxyJump", pc)
	}

	host := t.Host
	if hn := get("HostName"); hn != "" {
		host = strings.ReplaceAll(strings.ReplaceAll(hn, "%h", t.Host), "%%", "%")
		if !validHost.MatchString(host) || strings.HasPrefix(host, "-") {
			return Resolved{}, fmt.Errorf("HostName %q in ssh config holds characters no host name has", hn)
		}
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")

	port := t.Port
	if port == 0 {
		if p := get("Port"); p != "" {
			if port, err = strconv.Atoi(p); err != nil || port < 1 || port > 65535 {
				return Resolved{}, fmt.Errorf("ssh config Port %q is not a port", p)
			}
		} else {
			port = 22
		}
	}

	u := t.User
	if u == "" {
		u = get("User")
	}
	if u == "" {
		u = localUser()
	}
	if u == "" {
		return Resolved{}, errors.New("no user given and $USER unset")
	}
	if strings.ContainsFunc(u, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return Resolved{}, fmt.Errorf("user %q holds control characters", u)
	}

	home, _ := os.UserHomeDir()
	var ids []string
	for _, f := range t.IdentityFiles {
		ids = append(ids, expandPath(f, home, t.Host, host, u))
	}
	if sc != nil {
		all, _ := sc.GetAll(t.Host, "IdentityFile")
		for _, f := range all {
			ids = append(ids, expandPath(unquote(f), home, t.Host, host, u))
		}
	}
	if len(ids) == 0 && home != "" {
		for _, name := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			p := filepath.Join(home, ".ssh", name)
			if _, err := os.Stat(p); err == nil {
				ids = append(ids, p)
			}
		}
	}
	ids = dedupe(ids)

	var jumps []string
	if pj := get("ProxyJump"); pj != "" && !strings.EqualFold(pj, "none") {
		for _, hop := range strings.Split(pj, ",") {
			if hop = strings.TrimSpace(hop); hop != "" {
				jumps = append(jumps, hop)
			}
		}
	}
	var knownHosts string
	if f := strings.Fields(get("UserKnownHostsFile")); len(f) > 0 && !strings.EqualFold(f[0], "none") {
		knownHosts = expandPath(unquote(f[0]), home, t.Host, host, u)
	}
	return Resolved{
		Host:          t.Host,
		Addr:          net.JoinHostPort(host, strconv.Itoa(port)),
		User:          u,
		IdentityFiles: ids,
		ProxyJump:     jumps,
		KnownHosts:    knownHosts,
	}, nil
}

func loadSSHConfig(path string) (*ssh_config.Config, error) {
	if path == "none" {
		return nil, nil
	}
	if path == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, nil
		}
		path = filepath.Join(home, ".ssh", "config")
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ssh config: %w", err)
	}
	defer f.Close()
	c, err := ssh_config.Decode(f)
	if err != nil {
		return nil, fmt.Errorf("read ssh config %s: %w", path, err)
	}
	return c, nil
}

func localUser() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
}

func unquote(v string) string {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		return v[1 : len(v)-1]
	}
	return v
}

// expandPath expands ~ and the ssh_config tokens a key path uses: %d
// (local home), %u (local user), %h (remote host), %n (the name asked
// for), %r (remote user), %%.
func expandPath(p, home, alias, host, remoteUser string) string {
	if p == "~" {
		p = home
	} else if rest, ok := strings.CutPrefix(p, "~/"); ok {
		p = filepath.Join(home, rest)
	}
	if strings.Contains(p, "%") {
		p = strings.NewReplacer("%%", "%", "%d", home, "%u", localUser(), "%h", host,
			"%n", alias, "%r", remoteUser).Replace(p)
	}
	return p
}

// parseHop reads one ProxyJump entry: [ssh://][user@]host[:port].
func parseHop(hop string) (Target, error) {
	s := strings.TrimPrefix(hop, "ssh://")
	var t Target
	if i := strings.LastIndex(s, "@"); i >= 0 {
		t.User, s = s[:i], s[i+1:]
	}
	host := s
	if strings.HasPrefix(s, "[") || strings.Count(s, ":") == 1 {
		h, p, err := net.SplitHostPort(s)
		if err != nil {
			return Target{}, fmt.Errorf("ProxyJump %q: %w", hop, err)
		}
		port, err := strconv.Atoi(p)
		if err != nil || port < 1 || port > 65535 {
			return Target{}, fmt.Errorf("ProxyJump %q: bad port", hop)
		}
		host, t.Port = h, port
	}
	if host == "" {
		return Target{}, fmt.Errorf("ProxyJump %q: no host", hop)
	}
	t.Host = host
	return t, nil
}

func dedupe(s []string) []string {
	seen := map[string]bool{}
	out := s[:0]
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}
