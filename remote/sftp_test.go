package remote

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/sshtest"
)

func TestUpload(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	c := dial(t, h)
	ctx := testCtx(t)
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	local := func(p string) string { return filepath.Join(h.Home, p) }

	tests := []struct {
		name string
		path string
		mode os.FileMode
		data []byte
	}{
		{"new dirs, tilde", "~/up/a/b/blob.bin", 0o750, data},
		{"overwrite", "~/up/a/b/blob.bin", 0o600, data[:1000]},
		{"relative", "plain.txt", 0o644, []byte("hi")},
		{"absolute", h.Home + "/abs.txt", 0o640, []byte{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.Upload(ctx, bytes.NewReader(tt.data), int64(len(tt.data)), tt.path, tt.mode)
			if err != nil {
				t.Fatal(err)
			}
			s := sha256.Sum256(tt.data)
			if want := hex.EncodeToString(s[:]); got != want {
				t.Errorf("sha256 %s, want %s", got, want)
			}
			rel := tt.path
			if filepath.IsAbs(rel) {
				rel = rel[len(h.Home)+1:]
			} else if len(rel) > 2 && rel[:2] == "~/" {
				rel = rel[2:]
			}
			b, err := os.ReadFile(local(rel))
			if err != nil || !bytes.Equal(b, tt.data) {
				t.Errorf("remote content: %d bytes (%v), want %d", len(b), err, len(tt.data))
			}
			fi, err := os.Stat(local(rel))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tt.mode {
				t.Errorf("mode %v, want %v", fi.Mode().Perm(), tt.mode)
			}
			if uid := fi.Sys().(*syscall.Stat_t).Uid; int(uid) != h.UID {
				t.Errorf("owner uid %d, want %d", uid, h.UID)
			}
			assertNoTemp(t, filepath.Dir(local(rel)))
		})
	}
	for _, d := range []string{"up", "up/a", "up/a/b"} {
		if fi, err := os.Stat(local(d)); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v (%v), want 0700", d, fi.Mode().Perm(), err)
		}
	}

	t.Run("short source", func(t *testing.T) {
		_, err := c.Upload(ctx, bytes.NewReader(data[:100]), 200, "~/up/short.bin", 0o644)
		if err == nil {
			t.Fatal("got nil, want an error for a short source")
		}
		assertAbsent(t, local("up/short.bin"))
		assertNoTemp(t, local("up"))
	})
	t.Run("long source", func(t *testing.T) {
		_, err := c.Upload(ctx, bytes.NewReader(data[:300]), 200, "~/up/long.bin", 0o644)
		if err == nil {
			t.Fatal("got nil, want an error for a long source")
		}
		assertAbsent(t, local("up/long.bin"))
		assertNoTemp(t, local("up"))
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		r := &cancelAfter{r: bytes.NewReader(data), n: 1 << 20, cancel: cancel}
		_, err := c.Upload(ctx, r, int64(len(data)), "~/up/cancelled.bin", 0o644)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		assertAbsent(t, local("up/cancelled.bin"))
		assertNoTemp(t, local("up"))
	})
}

// cancelAfter cancels its context once n bytes have been read.
type cancelAfter struct {
	r      io.Reader
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.n -= n; c.n <= 0 {
		c.cancel()
	}
	return n, err
}

func assertAbsent(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("%s exists (%v), want absent", path, err)
	}
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(dir, "*.tmp-*"))
	if len(matches) > 0 {
		t.Errorf("temporary files left: %v", matches)
	}
}

// TestSFTPClosedWhenIdle: an SFTP session nobody uses is closed after the
// idle time (each host kept an sftp-server for the life of the
// connection); one in use is not; the next upload opens another.
func TestSFTPClosedWhenIdle(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	cfg := config(t, h)
	cfg.SFTPIdle, cfg.Keepalive = 300*time.Millisecond, 100*time.Millisecond
	c, err := Dial(testCtx(t), target(h), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	up := func() {
		t.Helper()
		if _, err := c.Upload(testCtx(t), strings.NewReader("hello"), 5, "~/idle.txt", 0o600); err != nil {
			t.Fatal(err)
		}
	}
	up()
	cl, release, err := c.SFTP()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond) // held past the idle time: no event to wait for
	if _, err := cl.Stat("idle.txt"); err != nil {
		t.Fatalf("a session in use was closed: %v", err)
	}
	release()
	closed := make(chan error, 1)
	go func() { closed <- cl.Wait() }()
	select {
	case <-closed: // the session's channel is closed: the server's end exits
	case <-time.After(30 * time.Second):
		t.Fatal("the idle SFTP session is still open after 30s")
	}
	up()
}
