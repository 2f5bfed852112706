package poll

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name      string
		cfg       Config
		succeedAt int // attempt that succeeds; 0 = never
		permAt    int
		wantErr   error
		wantCalls int
	}{
		{"first try", Config{}, 1, 0, nil, 1},
		{"third try", Config{Initial: time.Millisecond}, 3, 0, nil, 3},
		{"attempt bound", Config{Initial: time.Millisecond, MaxAttempts: 4}, 0, 0, ErrGaveUp, 4},
		{"time bound", Config{Initial: time.Millisecond, Max: time.Millisecond, MaxAttempts: 1 << 30, Timeout: 30 * time.Millisecond}, 0, 0, ErrGaveUp, -1},
		{"permanent", Config{Initial: time.Millisecond}, 0, 2, boom, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			err := Until(context.Background(), tt.cfg, func(context.Context) (bool, error) {
				calls++
				if calls == tt.permAt {
					return false, Permanent(boom)
				}
				return calls == tt.succeedAt, boom
			})
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Errorf("got %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == ErrGaveUp && !errors.Is(err, boom) {
				t.Errorf("gave-up error lacks the last failure: %v", err)
			}
			if tt.wantCalls >= 0 && calls != tt.wantCalls {
				t.Errorf("calls = %d, want %d", calls, tt.wantCalls)
			}
		})
	}
}

func TestUntilBackoffGrows(t *testing.T) {
	var times []time.Time
	_ = Until(context.Background(), Config{Initial: 2 * time.Millisecond, Max: 16 * time.Millisecond, MaxAttempts: 6}, func(context.Context) (bool, error) {
		times = append(times, time.Now())
		return false, nil
	})
	if len(times) != 6 {
		t.Fatalf("attempts = %d, want 6", len(times))
	}
	// Waits are 2, 4, 8, 16, 16 ms: the last gap must be at least 8x the first wait.
	if gap := times[5].Sub(times[4]); gap < 16*time.Millisecond {
		t.Errorf("last wait %v, want at least 16ms (backoff capped at Max)", gap)
	}
}

func TestUntilCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Until(ctx, Config{Initial: time.Hour}, func(context.Context) (bool, error) { return false, nil })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
}
