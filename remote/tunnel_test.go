package remote

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/sshtest"
)

// installHelper copies this test binary into h's home as ./helper (the
// hosts share this machine's file system).
func installHelper(t testing.TB, h *sshtest.Host) {
	t.Helper()
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(h.Home, "helper")
	if err := os.WriteFile(dst, self, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dst, h.UID, h.GID); err != nil {
		t.Fatal(err)
	}
}

// startUnixEcho serves an echo server on ~/echo.sock on h, as h's user.
func startUnixEcho(t testing.TB, h *sshtest.Host) {
	t.Helper()
	installHelper(t, h)
	h.Run(t, "RBEE_REMOTE_HELPER=unix-echo ./helper ~/echo.sock </dev/null >helper.log 2>&1 &")
	within(t, 10*time.Second, "echo.sock to appear", func() bool {
		_, err := os.Stat(filepath.Join(h.Home, "echo.sock"))
		return err == nil
	})
}

func roundTrip(t *testing.T, rw io.ReadWriter, msg string) {
	t.Helper()
	if _, err := io.WriteString(rw, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(rw, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != msg {
		t.Errorf("got %q, want %q", got, msg)
	}
}

func TestDialUnix(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	startUnixEcho(t, h)
	c := dial(t, h)
	ctx := testCtx(t)
	for _, path := range []string{"~/echo.sock", filepath.Join(h.Home, "echo.sock")} {
		t.Run(path, func(t *testing.T) {
			u, err := c.DialUnix(ctx, path)
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			roundTrip(t, u, "ping through streamlocal\n")
		})
	}
	if _, err := c.DialUnix(ctx, "~/no-such.sock"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing socket: got %v, want os.ErrNotExist", err)
	}
}

// Where sshd forbids forwarding, DialUnix says so and DialBridge carries
// the stream instead.
func TestForwardingRefusedBridgeWorks(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{NoForwarding: true})[0]
	startUnixEcho(t, h)
	c := dial(t, h)
	ctx := testCtx(t)

	_, err := c.DialUnix(ctx, "~/echo.sock")
	if !errors.Is(err, ErrForwardingRefused) {
		t.Fatalf("got %v, want ErrForwardingRefused", err)
	}
	t.Logf("forwarding refused: %v", err)
	if !strings.Contains(err.Error(), "AllowStreamLocalForwarding") || !strings.Contains(err.Error(), "echo.sock") {
		t.Errorf("error %q does not say what was refused", err)
	}

	t.Run("cat", func(t *testing.T) {
		b, err := c.DialBridge(ctx, []string{"cat"})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		roundTrip(t, b, "hello bridge\n")
		roundTrip(t, b, strings.Repeat("0123456789", 100000)) // 1 MB, both ways
	})
	t.Run("to the socket", func(t *testing.T) {
		b, err := c.DialBridge(ctx, []string{"env", "RBEE_REMOTE_HELPER=unix-bridge", "./helper", h.Home + "/echo.sock"})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		roundTrip(t, b, "ping through the bridge\n")
	})
}
