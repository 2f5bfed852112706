package remote

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/sshtest"
	"golang.org/x/crypto/ssh"
)

// The test binary doubles as a helper process on the hosts (uploaded to
// them): a unix-socket echo server, and a bridge from stdio to a socket.
func TestMain(m *testing.M) {
	switch os.Getenv("RBEE_REMOTE_HELPER") {
	case "unix-echo":
		os.Exit(serveUnixEcho(os.Args[1]))
	case "unix-bridge":
		os.Exit(bridgeUnix(os.Args[1]))
	}
	os.Exit(m.Run())
}

func serveUnixEcho(path string) int {
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Chmod(path, 0o600)
	time.AfterFunc(5*time.Minute, func() { os.Exit(0) })
	for {
		c, err := l.Accept()
		if err != nil {
			return 1
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

func bridgeUnix(path string) int {
	c, err := net.Dial("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() {
		io.Copy(c, os.Stdin)
		c.(*net.UnixConn).CloseWrite()
	}()
	io.Copy(os.Stdout, c)
	return 0
}

// target is how the remote package reaches h with its own client key.
func target(h *sshtest.Host) Target {
	ip, _, _ := net.SplitHostPort(h.Addr)
	return Target{Host: ip, Port: h.Port, User: h.User, IdentityFiles: []string{h.ClientKey}}
}

// config checks host keys against a copy of h's known_hosts (tests may
// change it) and reads no ssh config.
func config(t testing.TB, hosts ...*sshtest.Host) Config {
	t.Helper()
	kh := filepath.Join(t.TempDir(), "known_hosts")
	var all []byte
	for _, h := range hosts {
		b, err := os.ReadFile(h.KnownHosts)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	if err := os.WriteFile(kh, all, 0o600); err != nil {
		t.Fatal(err)
	}
	return Config{KnownHosts: kh, SSHConfig: "none", DialTimeout: 10 * time.Second}
}

func dial(t testing.TB, h *sshtest.Host) *Conn {
	t.Helper()
	c, err := Dial(testCtx(t), target(h), config(t, h))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// newKey writes a fresh ed25519 key no host knows; with a passphrase, an
// encrypted one.
func newKey(t testing.TB, passphrase string) string {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var blk *pem.Block
	if passphrase == "" {
		blk, err = ssh.MarshalPrivateKey(priv, "test")
	} else {
		blk, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "test", []byte(passphrase))
	}
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "key"+strconv.Itoa(len(passphrase)))
	if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func hostPub(t testing.TB, line string) ssh.PublicKey {
	t.Helper()
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// within waits for cond, polling, for at most d.
func within(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
