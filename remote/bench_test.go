package remote

import (
	"context"
	"os/exec"
	"testing"

	"github.com/rbee-dev/rbee/internal/sshtest"
)

// BenchmarkDialRun: a fresh connection per command against one kept open,
// with OpenSSH's ssh (a process and a handshake per command) for scale.
func BenchmarkDialRun(b *testing.B) {
	h := sshtest.Start(b, 1, sshtest.Options{})[0]
	cfg := config(b, h)
	ctx := context.Background()
	b.Run("dial+run", func(b *testing.B) {
		for b.Loop() {
			c, err := Dial(ctx, target(h), cfg)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Run(ctx, []string{"true"}, nil); err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
	b.Run("run-reused", func(b *testing.B) {
		c, err := Dial(ctx, target(h), cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		for b.Loop() {
			if _, err := c.Run(ctx, []string{"true"}, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("openssh-ssh", func(b *testing.B) {
		for b.Loop() {
			if out, err := exec.Command("ssh", append(h.SSHArgs(), "true")...).CombinedOutput(); err != nil {
				b.Fatalf("%v: %s", err, out)
			}
		}
	})
}
