package sse

import (
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"
)

// flushRecorder counts flushes and records what each one delivered.
type flushRecorder struct {
	mu      sync.Mutex
	h       http.Header
	buf     []byte
	flushes []string
	flushed chan struct{}
}

func (f *flushRecorder) Header() http.Header { return f.h }
func (f *flushRecorder) WriteHeader(int)     {}
func (f *flushRecorder) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.buf = append(f.buf, p...)
	return len(p), nil
}
func (f *flushRecorder) Flush() {
	f.mu.Lock()
	f.flushes = append(f.flushes, string(f.buf))
	f.buf = nil
	f.mu.Unlock()
	select {
	case f.flushed <- struct{}{}:
	default:
	}
}

func (f *flushRecorder) got() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.flushes...)
}

func TestBatcher(t *testing.T) {
	rec := &flushRecorder{h: http.Header{}, flushed: make(chan struct{}, 16)}
	b := NewBatcher(rec, time.Hour) // the timer never fires during the test
	b.Write([]byte("a"), false)     // first after a pause: at once
	b.Write([]byte("b"), false)     // batched
	b.Write([]byte("c"), false)     // batched
	if got := rec.got(); len(got) != 1 || got[0] != "a" {
		t.Fatalf("flushes = %q, want [a]", got)
	}
	b.Write([]byte("!"), true) // urgent: everything pending goes now
	if got := rec.got(); len(got) != 2 || got[1] != "bc!" {
		t.Fatalf("flushes = %q, want [a bc!]", got)
	}
	b.Write([]byte("d"), false)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if got := rec.got(); len(got) != 3 || got[2] != "d" {
		t.Fatalf("after Close flushes = %q, want the pending d flushed", got)
	}
	if err := b.Write([]byte("e"), true); !errors.Is(err, ErrClosed) {
		t.Errorf("write after Close: %v, want ErrClosed", err)
	}
}

func TestBatcherTimer(t *testing.T) {
	rec := &flushRecorder{h: http.Header{}, flushed: make(chan struct{}, 16)}
	b := NewBatcher(rec, 5*time.Millisecond)
	defer b.Close()
	b.Write([]byte("a"), false)
	<-rec.flushed
	b.Write([]byte("b"), false) // within the interval: the timer flushes it
	select {
	case <-rec.flushed:
	case <-time.After(10 * time.Second):
		t.Fatal("the pending write was never flushed")
	}
	if got := rec.got(); len(got) != 2 || got[1] != "b" {
		t.Errorf("flushes = %q, want [a b]", got)
	}
}
