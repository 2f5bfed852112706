package remote

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/rbee-dev/rbee/internal/sshtest"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// Keys held by ssh-agent log in with no key file at all, and are named in
// the refusal when they do not fit. Not parallel: it sets SSH_AUTH_SOCK.
func TestAgentAuth(t *testing.T) {
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	b, err := os.ReadFile(h.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := ssh.ParseRawPrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	keyring := agent.NewKeyring()
	if err := keyring.Add(agent.AddedKey{PrivateKey: raw, Comment: "host key"}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
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
				agent.ServeAgent(keyring, c)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	t.Setenv("SSH_AUTH_SOCK", sock)

	tg := target(h)
	tg.IdentityFiles = []string{filepath.Join(t.TempDir(), "absent")}
	cfg := config(t, h)
	cfg.UseAgent = true
	c, err := Dial(testCtx(t), tg, cfg)
	if err != nil {
		t.Fatalf("agent login: %v", err)
	}
	if out, err := c.Run(testCtx(t), []string{"id", "-un"}, nil); err != nil || strings.TrimSpace(string(out)) != h.User {
		t.Errorf("id -un: %q, %v; want %s", out, err, h.User)
	}
	c.Close()

	cfg.UseAgent = false
	if _, err := Dial(testCtx(t), tg, cfg); err == nil {
		t.Error("UseAgent false: logged in anyway, want the agent unused")
	}
}
