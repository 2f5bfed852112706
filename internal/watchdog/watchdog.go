package watchdog

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

type key struct{}

// hook is one link of the chain of progress listeners in a context.
type hook struct {
	fn     func()
	parent *hook
}

func (h *hook) fire() {
	for ; h != nil; h = h.parent {
		h.fn()
	}
}

func hookOf(ctx context.Context) *hook {
	h, _ := ctx.Value(key{}).(*hook)
	return h
}

// Alive reports progress on ctx: every silence bound and hook in its chain
// starts counting again. It is cheap enough to call per buffer copied.
func Alive(ctx context.Context) {
	hookOf(ctx).fire()
}

// WithHook returns a context whose progress reports also call fn (from the
// reporting goroutine: fn must be quick and must not block).
func WithHook(ctx context.Context, fn func()) context.Context {
	return context.WithValue(ctx, key{}, &hook{fn: fn, parent: hookOf(ctx)})
}

// silence is a context that ends when its parent does, or when no progress
// was reported for bound. Its Deadline is the parent's: the silence bound
// is no fixed moment (a dialer or connection deadline set from it would
// cut work that progresses).
type silence struct {
	context.Context
	bound time.Duration
	last  atomic.Int64 // unix nanoseconds of the last report
	self  *hook
	done  chan struct{}
	stop  chan struct{}
	wg    sync.WaitGroup

	mu  sync.Mutex
	err error
}

// WithSilence returns a context that ends with context.DeadlineExceeded
// once bound passes without a progress report on it (or on a context
// derived from it), or when parent ends. cancel releases its timer and
// must be called.
func WithSilence(parent context.Context, bound time.Duration) (context.Context, context.CancelFunc) {
	s := &silence{Context: parent, bound: bound, done: make(chan struct{}), stop: make(chan struct{})}
	s.self = &hook{fn: s.kick, parent: hookOf(parent)}
	s.kick()
	s.wg.Add(1)
	go s.watch()
	var once sync.Once
	return s, func() {
		once.Do(func() {
			close(s.stop)
			s.wg.Wait()
		})
	}
}

func (s *silence) kick() { s.last.Store(time.Now().UnixNano()) }

func (s *silence) watch() {
	defer s.wg.Done()
	t := time.NewTimer(s.bound)
	defer t.Stop()
	for {
		select {
		case <-s.Context.Done():
			s.end(s.Context.Err())
			return
		case <-s.stop:
			s.end(context.Canceled)
			return
		case <-t.C:
			quiet := time.Since(time.Unix(0, s.last.Load()))
			if quiet >= s.bound {
				s.end(context.DeadlineExceeded)
				return
			}
			t.Reset(s.bound - quiet)
		}
	}
}

func (s *silence) end(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
		close(s.done)
	}
	s.mu.Unlock()
}

func (s *silence) Done() <-chan struct{} { return s.done }

func (s *silence) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *silence) Value(k any) any {
	if k == (key{}) {
		return s.self
	}
	return s.Context.Value(k)
}
