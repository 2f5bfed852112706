package download

import "hash"

// asyncHash hashes buffers on its own goroutine, so that hashing a buffer
// overlaps with receiving and writing the next one: sha256 costs about as
// much CPU as the rest of a loopback download together.
//
// Buffers come from buffer() and go back through hash() (or release(),
// unused); they are hashed in the order given. sync waits until every
// buffer given is hashed; only then may h be read or reset.
type asyncHash struct {
	h    hash.Hash
	work chan []byte // nil: a sync marker
	free chan []byte
	ack  chan struct{}
	done chan struct{}
}

func newAsyncHash(h hash.Hash, nbuf, size int) *asyncHash {
	a := &asyncHash{h: h, work: make(chan []byte, nbuf+1), free: make(chan []byte, nbuf),
		ack: make(chan struct{}), done: make(chan struct{})}
	for range nbuf {
		a.free <- make([]byte, size)
	}
	go a.loop()
	return a
}

func (a *asyncHash) loop() {
	defer close(a.done)
	for b := range a.work {
		if b == nil {
			a.ack <- struct{}{}
			continue
		}
		a.h.Write(b)
		a.free <- b[:cap(b)]
	}
}

func (a *asyncHash) buffer() []byte   { return <-a.free }
func (a *asyncHash) hash(b []byte)    { a.work <- b }
func (a *asyncHash) release(b []byte) { a.free <- b[:cap(b)] }
func (a *asyncHash) sync()            { a.work <- nil; <-a.ack }
func (a *asyncHash) close()           { close(a.work); <-a.done }
