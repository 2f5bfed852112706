package poll

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Config bounds the polling.
type Config struct {
	Initial     time.Duration // first wait; default 10ms
	Max         time.Duration // longest wait between tries; default 500ms
	MaxAttempts int           // default 100
	Timeout     time.Duration // default 15s
}

// ErrGaveUp means the check never succeeded within the bounds.
var ErrGaveUp = errors.New("gave up")

// Until calls check until it reports done, returns an error that is
// Permanent, ctx ends, or the bounds are reached. The last transient error
// is wrapped in the ErrGaveUp error.
func Until(ctx context.Context, cfg Config, check func(ctx context.Context) (done bool, err error)) error {
	if cfg.Initial <= 0 {
		cfg.Initial = 10 * time.Millisecond
	}
	if cfg.Max <= 0 {
		cfg.Max = 500 * time.Millisecond
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 100
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 15 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	wait := cfg.Initial
	var last error
	for attempt := 1; ; attempt++ {
		done, err := check(ctx)
		if done {
			return nil
		}
		var p *permanent
		if errors.As(err, &p) {
			return p.err
		}
		if err != nil {
			last = err
		}
		if attempt >= cfg.MaxAttempts {
			return gaveUp(attempt, cfg.Timeout, last)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return gaveUp(attempt, cfg.Timeout, last)
			}
			return ctx.Err()
		case <-t.C:
		}
		wait = min(wait*2, cfg.Max)
	}
}

func gaveUp(attempts int, timeout time.Duration, last error) error {
	if last != nil {
		return fmt.Errorf("%w after %d attempts (limit %s): %w", ErrGaveUp, attempts, timeout, last)
	}
	return fmt.Errorf("%w after %d attempts (limit %s)", ErrGaveUp, attempts, timeout)
}

type permanent struct{ err error }

func (p *permanent) Error() string { return p.err.Error() }
func (p *permanent) Unwrap() error { return p.err }

// Permanent marks an error that retrying cannot fix; Until returns it at once.
func Permanent(err error) error { return &permanent{err: err} }
