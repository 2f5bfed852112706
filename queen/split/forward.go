package split

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// forward carries the connections a split worker makes to one forward
// port (ln: a remote forward on the main hive's loopback, or a listener on
// the queen's own loopback) to one RPC server (dial: through the RPC
// hive's SSH connection, or this machine's loopback), byte for byte, both
// ways. It notices the far end going away first — the RPC server died, or
// the link to its hive broke — and reports it once with lost: the split
// worker cannot go on without it. Every goroutine it starts ends by Close.
type forward struct {
	hive string // the RPC server's hive
	ln   net.Listener
	dial func(ctx context.Context) (net.Conn, error)
	lost func(hive string, err error)
	// admit says whether a connection may be carried: only the split
	// worker's user (the hive's owner) may use the forward; any other
	// local user's connection is closed before anything is dialed.
	admit func(ctx context.Context, c net.Conn) error
	log   func(msg string, args ...any)
	// stall: an RPC server that owes the worker an answer (the worker
	// sent last and waits) and sends nothing for this long is stalled (a
	// stopped process, a hung device): a loss. 0 = never.
	stall time.Duration

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	up, down atomic.Int64 // bytes to the RPC server, and back

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func newForward(hive string, ln net.Listener, dial func(ctx context.Context) (net.Conn, error), lost func(string, error),
	admit func(context.Context, net.Conn) error, log func(string, ...any), stall time.Duration) *forward {
	ctx, cancel := context.WithCancel(context.Background())
	f := &forward{hive: hive, ln: ln, dial: dial, lost: lost, admit: admit, log: log, stall: stall, ctx: ctx, cancel: cancel, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.accept()
	return f
}

// Endpoint is where the split worker connects, on its own host's
// loopback.
func (f *forward) Endpoint() string {
	return fmt.Sprintf("127.0.0.1:%d", f.ln.Addr().(*net.TCPAddr).Port)
}

// Bytes says how much was carried: to the RPC server, and back.
func (f *forward) Bytes() (up, down int64) { return f.up.Load(), f.down.Load() }

// Close stops accepting, closes every carried connection and waits for
// the forward's goroutines.
func (f *forward) Close() {
	f.cancel()
	f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func (f *forward) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx.Err() != nil {
		return false
	}
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
	return true
}

func (f *forward) untrack(cs ...net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range cs {
		delete(f.conns, c)
	}
}

func (f *forward) accept() {
	defer f.wg.Done()
	for {
		down, err := f.ln.Accept()
		if err != nil {
			if f.ctx.Err() == nil {
				// The listener died under us: on a remote forward, the
				// main hive's SSH connection.
				f.lost("", fmt.Errorf("forward to hive %s: %w", f.hive, err))
			}
			return
		}
		if !f.track(down) {
			down.Close()
			return
		}
		f.wg.Add(1)
		go f.carry(down)
	}
}

// carry pipes one connection. Whichever side stops first decides: the
// worker's side (it closed, or its host's link broke) ends the pair
// quietly; the RPC server's side ends it as a loss.
func (f *forward) carry(down net.Conn) {
	defer f.wg.Done()
	defer f.untrack(down)
	defer down.Close()
	if f.admit != nil {
		if err := f.admit(f.ctx, down); err != nil {
			// Not the worker's: closed, and the split goes on.
			if f.log != nil {
				f.log("split forward refused a connection", "hive", f.hive, "from", down.RemoteAddr().String(), "err", err)
			}
			return
		}
	}
	up, err := f.dial(f.ctx)
	if err != nil {
		if f.ctx.Err() == nil {
			f.lost(f.hive, fmt.Errorf("reach its RPC server: %w", err))
		}
		return
	}
	if !f.track(up) {
		up.Close()
		return
	}
	defer f.untrack(up)
	defer up.Close()
	type end struct {
		far bool // the RPC server's side stopped
		err error
	}
	ends := make(chan end, 2)
	var (
		last atomic.Int64 // when bytes last went either way
		owed atomic.Bool  // the worker sent last: the server owes an answer
	)
	last.Store(time.Now().UnixNano())
	go func() { // worker → RPC server: a failed write is the server's end
		err := pipe(up, down, &f.up, func() { last.Store(time.Now().UnixNano()); owed.Store(true) })
		ends <- end{errors.Is(err, errWrite), err}
	}()
	go func() { // RPC server → worker: a failed write is the worker's end
		err := pipe(down, up, &f.down, func() { last.Store(time.Now().UnixNano()); owed.Store(false) })
		ends <- end{!errors.Is(err, errWrite), err}
	}()
	var first end
	stalled := false
	if f.stall > 0 {
		tick := time.NewTicker(max(f.stall/4, 10*time.Millisecond))
	watch:
		for {
			select {
			case first = <-ends:
				break watch
			case <-tick.C:
				if idle := time.Since(time.Unix(0, last.Load())); owed.Load() && idle > f.stall {
					first = end{far: true, err: fmt.Errorf("the RPC server sent nothing for %s while the worker waited for an answer (stopped, or hung)", idle.Round(time.Second))}
					stalled = true
					break watch
				}
			}
		}
		tick.Stop()
	} else {
		first = <-ends
	}
	up.Close()
	down.Close()
	<-ends // the other pipe ends with the connections
	if stalled {
		<-ends // both were still running
	}
	if first.far && f.ctx.Err() == nil {
		why := first.err
		if why == nil || errors.Is(why, io.EOF) {
			why = errors.New("the RPC server closed the connection")
		}
		f.lost(f.hive, why)
	}
}

// errWrite marks a failed write: the side written to is gone, not the
// side read from.
var errWrite = errors.New("write")

// pipe copies src to dst, counting into n, until src ends (nil at EOF) or
// fails. A failed write to dst is reported as the other side's end.
func pipe(dst, src net.Conn, n *atomic.Int64, moved func()) error {
	buf := make([]byte, 64<<10)
	for {
		k, err := src.Read(buf)
		if k > 0 {
			moved()
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return fmt.Errorf("%w: %w", errWrite, werr)
			}
			n.Add(int64(k))
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
