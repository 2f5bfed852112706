package remote

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/sshtest"
)

func hostBlock(alias string, h *sshtest.Host, extra string) string {
	ip, port, _ := net.SplitHostPort(h.Addr)
	return fmt.Sprintf("Host %s\n  HostName %s\n  Port %s\n  User %s\n  IdentityFile %s\n%s\n", alias, ip, port, h.User, h.ClientKey, extra)
}

// An alias from ~/.ssh/config connects; ProxyJump through one and through
// two hops reaches the target, and the jump host really carries it.
func TestSSHConfigAliasAndProxyJump(t *testing.T) {
	t.Parallel()
	hosts := sshtest.Start(t, 3, sshtest.Options{})
	target, jump1, jump2 := hosts[0], hosts[1], hosts[2]
	cfgPath := filepath.Join(t.TempDir(), "config")
	text := hostBlock("gpu-box", target, "") +
		hostBlock("jump1", jump1, "") +
		hostBlock("jump2", jump2, "") +
		hostBlock("via-one", target, "  ProxyJump jump1") +
		hostBlock("via-two", target, "  ProxyJump jump1,jump2")
	if err := os.WriteFile(cfgPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config(t, hosts...)
	cfg.SSHConfig = cfgPath
	cfg.Keepalive = 200 * time.Millisecond

	tests := []struct {
		alias     string
		wantJumps []string
		breaks    *sshtest.Host // killing it must end the connection
	}{
		{"gpu-box", nil, nil},
		{"via-one", []string{"jump1"}, jump1},
		{"via-two", []string{"jump1", "jump2"}, jump2},
	}
	for _, tt := range tests {
		t.Run(tt.alias, func(t *testing.T) {
			r, err := Resolve(Target{Host: tt.alias}, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if r.Addr != target.Addr || r.User != target.User || !reflect.DeepEqual(r.ProxyJump, tt.wantJumps) {
				t.Errorf("resolved %+v, want %s as %s via %v", r, target.Addr, target.User, tt.wantJumps)
			}
			c, err := Dial(testCtx(t), Target{Host: tt.alias}, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			out, err := c.Run(testCtx(t), []string{"id", "-un"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(string(out)); got != target.User {
				t.Errorf("id -un = %q, want %q", got, target.User)
			}
			if tt.breaks == nil {
				return
			}
			tt.breaks.Kill()
			defer tt.breaks.Restart(t)
			select {
			case <-c.Done():
			case <-time.After(10 * time.Second):
				t.Fatalf("connection via %v survived killing %s", tt.wantJumps, tt.breaks.Name)
			}
		})
	}

	t.Run("jump host key unknown", func(t *testing.T) {
		// Only the target is known: the jump host must be refused too.
		c := config(t, target)
		c.SSHConfig = cfgPath
		_, err := Dial(testCtx(t), Target{Host: "via-one"}, c)
		if err == nil || !strings.Contains(err.Error(), "jump host jump1") || !strings.Contains(err.Error(), "unknown host key") {
			t.Errorf("got %v, want the jump host's key refused", err)
		}
	})
}
