package e2e

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/internal/sshtest"
)

// proxy6 forwards [::1]:PORT to addr, so that a host of the harness (which
// listens on 127.0.0.1) is reached by an IPv6 address. It is closed with
// the test.
func proxy6(t *testing.T, addr string) string {
	t.Helper()
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatalf("no IPv6 loopback here: %v", err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				up, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{})
				go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); close(done) }()
				io.Copy(c, up)
				c.(*net.TCPConn).CloseWrite()
				<-done
			}()
		}
	}()
	return l.Addr().String()
}

// TestBadInputHosts: host strings that used to be misread are refused
// before anything starts, with what to write instead; a bracketed IPv6
// address with a port works; localhost is reserved for this machine.
func TestBadInputHosts(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	h := hosts[0]
	_, port, _ := net.SplitHostPort(h.Addr)

	for _, tt := range []struct {
		target, want string
		extra        []string
	}{
		{target: "me@127.0.0.1:0", want: "port 0 is out of range: use 1-65535"},
		{target: "me@127.0.0.1:99999", want: "port 99999 is out of range"},
		{target: "me@127.0.0.1:", want: `port "" is not a number`},
		{target: "@127.0.0.1", want: "nothing before '@'"},
		{target: "me@", want: "no host: write USER@HOST[:PORT]"},
		{target: "me@[::1", want: "no ']'"},
		{target: "me@[127.0.0.1]:22", want: "brackets are for IPv6 only"},
		{target: "me@::1:2222:zz", want: "write an IPv6 address with a port as [ADDRESS]:PORT"},
		{target: target(h), extra: []string{"--name", "localhost"}, want: "hive name localhost is reserved"},
		{target: "me@localhost", want: "hive name localhost is reserved"},
	} {
		t.Run(tt.target+strings.Join(tt.extra, " "), func(t *testing.T) {
			args := append([]string{"hive", "add", tt.target, "--identity", h.ClientKey, "--accept-new-host-key"}, tt.extra...)
			r := e.rbee(args...)
			if r.code != rbee.ExitUsage || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("hive add %s: exit %d, want %d with %q:\n%s", tt.target, r.code, rbee.ExitUsage, tt.want, r.stderr)
			}
			if strings.Contains(r.stderr, "hive name") && !strings.Contains(tt.want, "hive name") {
				t.Errorf("hive add %s: the refusal blames the hive name:\n%s", tt.target, r.stderr)
			}
			if strings.Contains(tt.want, "reserved") && !strings.Contains(r.stderr, "hint: name the SSH host with --name") {
				t.Errorf("hive add %s: no hint saying what to do:\n%s", tt.target, r.stderr)
			}
		})
	}
	// Refused before any side effect: no queen was started, nothing was
	// recorded, no host key was learnt.
	if left := e.procs(); len(left) > 0 {
		t.Errorf("refused targets started processes: %v", describe(left))
	}
	if inv := e.inventory(t); inv != "" {
		t.Errorf("refused targets reached the inventory:\n%s", inv)
	}
	if _, err := os.Stat(filepath.Join(e.home, ".ssh", "known_hosts")); err == nil {
		t.Errorf("a refused target recorded a host key")
	}

	// [::1]:PORT is an IPv6 address with a port, not a bad port.
	v6 := proxy6(t, h.Addr)
	_, p6, _ := net.SplitHostPort(v6)
	r := e.rbee("hive", "add", h.User+"@[::1]:"+p6, "--name", "v6", "--identity", h.ClientKey, "--accept-new-host-key")
	if r.code != 0 || !strings.Contains(r.stdout, "hive v6 is ready") {
		t.Fatalf("hive add [::1]:%s (sshd on %s): exit %d\n%s\n%s", p6, port, r.code, r.stdout, r.stderr)
	}
	if inv := e.inventory(t); !strings.Contains(inv, `host = "::1"`) || !strings.Contains(inv, "port = "+p6) {
		t.Errorf("inventory after adding [::1]:%s:\n%s", p6, inv)
	}
	// Without --name, the hive is named after the address.
	r = e.rbee("hive", "add", h.User+"@[::1]:"+p6, "--identity", h.ClientKey, "--dry-run")
	if r.code != 0 || !strings.Contains(r.stdout, "hive 1: dry run") {
		t.Errorf("hive add [::1]:%s --dry-run: exit %d\n%s\n%s", p6, r.code, r.stdout, r.stderr)
	}
	// The local hive is untouched by the refused --name localhost.
	r = e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Errorf("infer on the local hive after the refusals: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	e.stopQueen()
}
