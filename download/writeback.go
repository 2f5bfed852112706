package download

import "os"

// writebackChunk is how much the download receives between two flushes.
const writebackChunk = 8 << 20

// writeback flushes a download to disk behind it, on its own goroutine
// (fdatasync every writebackChunk), so that the fsync before the file
// enters blobs/ finds little left to do. On loopback that final fsync
// (about 100 ms for 64 MB on the dev machine, even after sync_file_range
// had written the pages: the device's cache flush is what costs) was most
// of what kept a verified download behind curl, sha256 being hashed on its
// own goroutine already (asyncHash). Flushing along the way overlaps it
// with receiving.
type writeback struct {
	f     *os.File
	flush func(*os.File) // flushData; tests count calls
	kick  chan struct{}  // a flush is due; one pending is enough
	done  chan struct{}
	sent  int64 // the file's size at the last kick
}

// newWriteback starts the goroutine; stop and wait end it.
func newWriteback(f *os.File) *writeback {
	w := &writeback{f: f, flush: flushData, kick: make(chan struct{}, 1), done: make(chan struct{})}
	go w.loop()
	return w
}

// wrote says the file now holds end bytes. It never blocks: while a flush
// runs, the next one waits its turn and then covers everything written.
func (w *writeback) wrote(end int64) {
	if end < w.sent {
		w.sent = 0 // the download started over
	}
	if end-w.sent < writebackChunk {
		return
	}
	select {
	case w.kick <- struct{}{}:
	default:
	}
	w.sent = end
}

func (w *writeback) loop() {
	defer close(w.done)
	for range w.kick {
		w.flush(w.f)
	}
}

// stop tells the goroutine to end after the flush it may be running; the
// caller's fsync need not wait for that flush first.
func (w *writeback) stop() { close(w.kick) }

// wait waits for the goroutine to end; call it after stop, before the file
// is closed.
func (w *writeback) wait() { <-w.done }
