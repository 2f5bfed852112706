package remote

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/sshtest"
)

func TestPoolRedials(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	p := NewPool(config(t, h), func(name string) (Target, error) {
		if name != "gpu-box" {
			return Target{}, errors.New("not in the inventory")
		}
		return target(h), nil
	})
	p.MinBackoff, p.MaxBackoff = 50*time.Millisecond, 400*time.Millisecond
	defer p.Close()
	ctx := testCtx(t)

	c1, err := p.Get(ctx, "gpu-box")
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := p.Get(ctx, "gpu-box"); again != c1 {
		t.Error("second Get dialed again, want the same Conn")
	}
	if _, err := p.Get(ctx, "nowhere"); err == nil {
		t.Error("unknown name: got nil error")
	}

	h.Kill()
	select {
	case <-c1.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection alive 10s after sshd was killed")
	}
	start := time.Now()
	_, err = p.Get(ctx, "gpu-box")
	if err == nil {
		t.Fatal("Get with the host down: got a Conn")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Get with the host down took %s, want it to fail fast", d)
	}

	h.Restart(t)
	var c2 *Conn
	within(t, 15*time.Second, "pool to reconnect", func() bool {
		c2, err = p.Get(ctx, "gpu-box")
		return err == nil
	})
	if c2 == c1 {
		t.Fatal("got the dead Conn back")
	}
	if out, err := c2.Run(ctx, []string{"echo", "back"}, nil); err != nil || string(out) != "back\n" {
		t.Errorf("run on the new Conn: %q, %v", out, err)
	}

	p.Close()
	if err := c2.Err(); !errors.Is(err, ErrClosed) {
		t.Errorf("after pool Close: Err = %v, want ErrClosed", err)
	}
	if _, err := p.Get(context.Background(), "gpu-box"); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close: got %v, want ErrClosed", err)
	}
}
