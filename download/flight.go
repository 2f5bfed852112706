package download

import (
	"context"
	"slices"
	"sync"
)

// flights shares downloads between the Fetches of one process: one flight
// per store directory and key.
var flights group

// group is a singleflight whose work outlives any one caller: it runs while
// at least one caller waits and is cancelled when the last one leaves.
// (golang.org/x/sync/singleflight runs the work on the first caller's
// context, so that caller's Ctrl-C would fail everyone else's pull.)
type group struct {
	mu      sync.Mutex
	running map[string]*flight
	closing map[string]*flight // cancelled, still stopping
}

type flight struct {
	done      chan struct{}
	path, sum string
	err       error
	cancel    context.CancelFunc
	waiters   int
	subs      []func(Progress) // guarded by group.mu; nil once its caller left
}

// do runs fn once per key at a time. Callers that come while it runs wait
// for its result and get its progress too. A caller whose ctx ends returns
// ctx.Err(); when it was the last one waiting, fn's context is cancelled and
// do returns only after fn has returned, so the partial file is closed.
func (g *group) do(ctx context.Context, key string, progress func(Progress),
	fn func(ctx context.Context, report func(Progress)) (string, string, error)) (string, string, error) {
	g.mu.Lock()
	if g.running == nil {
		g.running, g.closing = map[string]*flight{}, map[string]*flight{}
	}
	f := g.running[key]
	if f == nil {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{done: make(chan struct{}), cancel: cancel}
		g.running[key] = f
		prev := g.closing[key]
		report := func(p Progress) {
			g.mu.Lock()
			subs := slices.Clone(f.subs)
			g.mu.Unlock()
			for _, s := range subs {
				if s != nil {
					s(p)
				}
			}
		}
		go func() {
			defer cancel()
			if prev != nil {
				<-prev.done // never two writers on one partial file
			}
			f.path, f.sum, f.err = fn(fctx, report)
			g.mu.Lock()
			if g.running[key] == f {
				delete(g.running, key)
			}
			if g.closing[key] == f {
				delete(g.closing, key)
			}
			g.mu.Unlock()
			close(f.done)
		}()
	}
	f.waiters++
	id := len(f.subs)
	f.subs = append(f.subs, progress)
	g.mu.Unlock()

	select {
	case <-f.done:
		return f.path, f.sum, f.err
	case <-ctx.Done():
	}
	g.mu.Lock()
	f.subs[id] = nil
	f.waiters--
	last := f.waiters == 0
	if last {
		f.cancel()
		if g.running[key] == f {
			delete(g.running, key)
			g.closing[key] = f
		}
	}
	g.mu.Unlock()
	if last {
		<-f.done
	}
	return "", "", ctx.Err()
}
