package watchdog

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// A silent context ends after its bound, with DeadlineExceeded.
func TestSilenceEnds(t *testing.T) {
	t.Parallel()
	ctx, cancel := WithSilence(t.Context(), 50*time.Millisecond)
	defer cancel()
	<-ctx.Done()
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("err %v, want DeadlineExceeded", ctx.Err())
	}
}

// Progress reported on a derived context (and through a hook) keeps it
// alive well past its bound; when the reports stop, it ends.
func TestProgressKeepsAlive(t *testing.T) {
	t.Parallel()
	const bound = 100 * time.Millisecond
	ctx, cancel := WithSilence(t.Context(), bound)
	defer cancel()
	var hooked atomic.Int64
	child, ccancel := context.WithCancel(WithHook(ctx, func() { hooked.Add(1) }))
	defer ccancel()
	start := time.Now()
	tick := time.NewTicker(bound / 10)
	defer tick.Stop()
	for time.Since(start) < 5*bound {
		select {
		case <-ctx.Done():
			t.Fatalf("ended after %s although progress was reported every %s: %v", time.Since(start), bound/10, ctx.Err())
		case <-tick.C:
			Alive(child)
		}
	}
	if hooked.Load() == 0 {
		t.Error("the hook was never called")
	}
	<-child.Done() // silence now: the bound ends it, and its children
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("err %v, want DeadlineExceeded", ctx.Err())
	}
}

// Nested bounds all hear a report; the parent's end and cancel end it.
func TestNestedAndCancel(t *testing.T) {
	t.Parallel()
	parent, pcancel := context.WithCancel(t.Context())
	outer, ocancel := WithSilence(parent, time.Hour)
	defer ocancel()
	inner, icancel := WithSilence(outer, time.Hour)
	defer icancel()
	if _, ok := inner.Deadline(); ok {
		t.Error("a silence bound must not report a fixed deadline")
	}
	Alive(inner)
	pcancel()
	<-inner.Done()
	if !errors.Is(inner.Err(), context.Canceled) {
		t.Fatalf("err %v, want Canceled", inner.Err())
	}
	c, cancel := WithSilence(t.Context(), time.Hour)
	cancel()
	cancel()
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("after cancel: %v", c.Err())
	}
}

func BenchmarkAlive(b *testing.B) {
	ctx, cancel := WithSilence(b.Context(), time.Minute)
	defer cancel()
	ctx = WithHook(ctx, func() {})
	for b.Loop() {
		Alive(ctx)
	}
}
