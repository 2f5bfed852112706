package supervisor

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Probe asks the worker's health endpoint and reports whether it
// answered at all, within timeout (ctx bounds it too). Any answer counts,
// even "loading" or a 503: a worker that answers is alive; one that does
// not — stopped, deadlocked, swapped out — is hung.
func (w *Worker) Probe(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", w.URL("/health"), nil)
	if err != nil {
		return fmt.Errorf("probe worker %s: %w", w.info.ID, err)
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return fmt.Errorf("probe worker %s: %w", w.info.ID, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return nil
}

// Kill kills a worker that makes no progress at once — its whole process
// group, with SIGKILL, which reaches a stopped process too — and returns
// once it is gone and forgotten, so the next job starts a new one.
func (s *Supervisor) Kill(id string) error {
	w, ok := s.Get(id)
	if !ok {
		return fmt.Errorf("kill worker %s: %w", id, ErrWorkerNotFound)
	}
	s.cfg.Log.Warn("killing hung worker", "worker", id, "pid", w.info.PID)
	if err := w.proc.Kill(); err != nil {
		return fmt.Errorf("kill worker %s: %w", id, err)
	}
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-w.forgotten:
		return nil
	case <-t.C: // a process in uninterruptible sleep outlives SIGKILL
		return fmt.Errorf("kill worker %s: pid %d did not exit after SIGKILL", id, w.info.PID)
	}
}
