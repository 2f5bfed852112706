package download

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sync/atomic"
	"time"
)

// stallWatch cancels its context when nothing arrives for d: no answer to
// a request, no byte of a body. A server that accepts the connection and
// then says nothing would otherwise hold a pull forever, since the client
// has no overall timeout (a download may rightly take hours).
type stallWatch struct {
	d       time.Duration
	t       *time.Timer
	stalled atomic.Bool
}

// watchStall starts a watch on a context derived from ctx; stop ends the
// watch and cancels that context.
func watchStall(ctx context.Context, d time.Duration) (wctx context.Context, w *stallWatch, stop func()) {
	wctx, cancel := context.WithCancel(ctx)
	w = &stallWatch{d: d}
	w.t = time.AfterFunc(d, func() {
		w.stalled.Store(true)
		cancel()
	})
	return wctx, w, func() {
		w.t.Stop()
		cancel()
	}
}

// kick says something arrived: the next d starts now.
func (w *stallWatch) kick() { w.t.Reset(w.d) }

// reader kicks the watch on every read that returns bytes.
func (w *stallWatch) reader(r io.Reader) io.Reader { return kickReader{r, w} }

type kickReader struct {
	r io.Reader
	w *stallWatch
}

func (k kickReader) Read(p []byte) (int, error) {
	n, err := k.r.Read(p)
	if n > 0 {
		k.w.kick()
	}
	return n, err
}

// failed returns the error for a request under the watch that failed with
// err: the caller's own cancellation as is, a cut by the watch as a
// retryable stallError (at is the byte the body had reached, -1 before
// any body), anything else as is.
func (w *stallWatch) failed(ctx context.Context, err error, at int64) error {
	if ctx.Err() == nil && w.stalled.Load() {
		return retryError{&stallError{d: w.d, at: at}}
	}
	return err
}

// stallError is a request cut because nothing arrived for d.
type stallError struct {
	d  time.Duration
	at int64 // the body's byte the stall came at; -1: no answer yet
}

func (e *stallError) Error() string {
	if e.at < 0 {
		return fmt.Sprintf("no answer for %s", e.d)
	}
	return fmt.Sprintf("no data for %s at byte %d", e.d, e.at)
}

// retry runs op until it succeeds, fails for a reason not worth a retry,
// or has failed opt.Retries+1 times, waiting backoff between tries. Before
// each retry, told (if set) hears which attempt comes next and why the
// last one failed: a person watching a slow pull must see the reason.
func retry(ctx context.Context, opt Options, told func(attempt int, err error), op func(ctx context.Context) error) error {
	for attempt := 1; ; attempt++ {
		err := op(ctx)
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return err
		}
		if attempt > opt.Retries {
			return fmt.Errorf("giving up after %d attempts: %w", attempt, err)
		}
		if told != nil {
			told(attempt+1, err)
		}
		if err := sleep(ctx, backoff(opt, attempt)); err != nil {
			return err
		}
	}
}

// reason is a short account of why an attempt failed, for a progress
// line that already names the file: the stall, the network error or the
// status, without the ref and URL.
func reason(err error) string {
	var se *stallError
	var he *httpError
	var ue *url.Error
	switch {
	case errors.As(err, &se):
		return se.Error()
	case errors.As(err, &he):
		return he.status
	case errors.As(err, &ue):
		return ue.Err.Error()
	}
	return err.Error()
}
