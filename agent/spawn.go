package agent

import (
	"context"
	"sync"
)

// spawnKey names what a worker serves: one model on one device, by one
// engine type. The hive runs at most one worker per key: jobs that race
// to start the same one share a single start.
type spawnKey struct{ model, device, typ string }

// spawns is the single-flight of worker starts.
type spawns struct {
	mu    sync.Mutex
	calls map[spawnKey]*spawnCall
}

type spawnCall struct {
	done chan struct{}
	wp   *workerProc
	err  error
}

// start returns a live worker for key: one already running, the one being
// started by another job (joined), or a new one from start. joined says
// the caller did not start it (its reservation is not needed).
func (s *spawns) start(ctx context.Context, key spawnKey, find func() *workerProc, start func() (*workerProc, error)) (wp *workerProc, joined bool, err error) {
	for {
		s.mu.Lock()
		if wp := find(); wp != nil {
			s.mu.Unlock()
			return wp, true, nil
		}
		if c := s.calls[key]; c != nil {
			s.mu.Unlock()
			select {
			case <-c.done:
			case <-ctx.Done():
				return nil, true, ctx.Err()
			}
			if c.err == nil {
				return c.wp, true, nil
			}
			continue // that start failed: try ours
		}
		c := &spawnCall{done: make(chan struct{})}
		if s.calls == nil {
			s.calls = map[spawnKey]*spawnCall{}
		}
		s.calls[key] = c
		s.mu.Unlock()

		c.wp, c.err = start()
		s.mu.Lock()
		delete(s.calls, key)
		s.mu.Unlock()
		close(c.done)
		return c.wp, false, c.err
	}
}
