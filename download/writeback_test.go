package download

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteback(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "part"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := newWriteback(f)
	flushed := make(chan struct{}, 16)
	release := make(chan struct{})
	// The goroutine is not running a flush yet: swapping the func before
	// the first kick is safe.
	w.flush = func(*os.File) {
		flushed <- struct{}{}
		<-release
	}
	w.wrote(writebackChunk - 1)
	select {
	case <-flushed:
		t.Fatal("flushed before a chunk was written")
	default:
	}
	w.wrote(writebackChunk)
	<-flushed // the first flush runs, and is held
	// While it runs, more chunks arrive: wrote must not block, and one
	// flush stays pending for them all.
	for i := 2; i <= 5; i++ {
		w.wrote(int64(i) * writebackChunk)
	}
	release <- struct{}{}
	<-flushed
	// The download starts over: the count starts over too.
	w.wrote(writebackChunk / 2)
	release <- struct{}{}
	w.wrote(writebackChunk - 1)
	w.stop()
	w.wait()
	if n := len(flushed); n != 0 {
		t.Errorf("flushes after the restart: got %d, want 0 (less than a chunk written)", n)
	}
}
