package sse

import (
	"errors"
	"net/http"
	"sync"
	"time"
)

// FlushInterval is the longest a token may wait in a stream's buffer. The
// first token after a pause goes out at once; tokens that follow within the
// interval are flushed together. On a machine whose cores run ggml's
// spinning threads, every flush wakes the reader's process and costs
// generation speed; people do not see 20 ms.
const FlushInterval = 20 * time.Millisecond

// ErrClosed is returned by writes after Close.
var ErrClosed = errors.New("stream closed")

// Batcher writes a streamed HTTP response, flushing urgent writes at once
// and the others at most once per interval. It is safe for concurrent use;
// Close must be called before the handler returns.
type Batcher struct {
	mu       sync.Mutex
	w        http.ResponseWriter
	rc       *http.ResponseController
	interval time.Duration
	last     time.Time // last flush that a non-urgent write caused
	timer    *time.Timer
	pending  bool // written but not flushed
	closed   bool
	err      error
}

// NewBatcher returns a Batcher on w; interval 0 flushes every write.
func NewBatcher(w http.ResponseWriter, interval time.Duration) *Batcher {
	return &Batcher{w: w, rc: http.NewResponseController(w), interval: interval}
}

// Write writes p; urgent writes are flushed before Write returns.
func (b *Batcher) Write(p []byte, urgent bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	if b.err != nil {
		return b.err
	}
	if len(p) > 0 {
		if _, err := b.w.Write(p); err != nil {
			b.err = err
			return err
		}
	}
	switch since := time.Since(b.last); {
	case urgent || b.interval <= 0:
		b.flushLocked()
	case since >= b.interval:
		b.flushLocked()
		b.last = time.Now()
	case !b.pending:
		b.pending = true
		b.timer = time.AfterFunc(b.interval-since, b.timerFlush)
	}
	return b.err
}

func (b *Batcher) timerFlush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed && b.pending && b.err == nil {
		b.flushLocked()
		b.last = time.Now()
	}
}

func (b *Batcher) flushLocked() {
	b.pending = false
	if err := b.rc.Flush(); err != nil && b.err == nil {
		b.err = err
	}
}

// Close flushes what is pending and stops the timer. After Close the
// ResponseWriter is not touched again.
func (b *Batcher) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return b.err
	}
	if b.timer != nil {
		b.timer.Stop()
	}
	if b.pending && b.err == nil {
		b.flushLocked()
	}
	b.closed = true
	return b.err
}
