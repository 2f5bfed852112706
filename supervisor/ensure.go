package supervisor

import (
	"context"
	"strings"
)

// Key names what a worker serves: one model on one device, by one engine
// type ("" = rbee-worker), completions or embeddings, offloading to RPC
// servers (a split worker: the comma-joined endpoints; "" = none). The hive
// runs at most one worker per key.
type Key struct {
	Model, Device, Type, RPC string
	Embeddings               bool
}

// startCall is a start in progress that others may join.
type startCall struct {
	done chan struct{}
	w    *Worker
	err  error
}

// Ensure returns a live worker for key: one already running, the one
// another caller is starting (joined), or a new one from start (Start or
// StartExternal). joined says the caller did not start it, so the room it
// reserved is not needed. ctx bounds the wait for another caller's start;
// when that start fails, Ensure tries its own.
func (s *Supervisor) Ensure(ctx context.Context, key Key, start func() (*Worker, error)) (w *Worker, joined bool, err error) {
	for {
		s.ensureMu.Lock()
		if w := s.find(key); w != nil {
			s.ensureMu.Unlock()
			return w, true, nil
		}
		if c := s.starts[key]; c != nil {
			s.ensureMu.Unlock()
			select {
			case <-c.done:
			case <-ctx.Done():
				return nil, true, ctx.Err()
			}
			if c.err == nil {
				return c.w, true, nil
			}
			continue // that start failed: try ours
		}
		c := &startCall{done: make(chan struct{})}
		if s.starts == nil {
			s.starts = map[Key]*startCall{}
		}
		s.starts[key] = c
		s.ensureMu.Unlock()

		c.w, c.err = start()
		s.ensureMu.Lock()
		delete(s.starts, key)
		s.ensureMu.Unlock()
		close(c.done)
		return c.w, false, c.err
	}
}

// find returns a live, ready worker serving key, if any.
func (s *Supervisor) find(key Key) *Worker {
	for _, w := range s.all() {
		info := w.Info()
		if info.ModelID != key.Model || info.Device != key.Device || info.Type != key.Type || info.Embeddings != key.Embeddings ||
			strings.Join(info.RPC, ",") != key.RPC || info.State != "ready" {
			continue
		}
		select {
		case <-w.Exited():
		default:
			w.picked()
			return w
		}
	}
	return nil
}
