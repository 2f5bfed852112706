package queen

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/internal/proc"
	"github.com/rbee-dev/rbee/provision"
	"github.com/rbee-dev/rbee/remote"
)

// hiveConn is a connected hive: its agent's client and how it is reached.
type hiveConn struct {
	name      string
	client    *hiveapi.Client
	handshake hiveapi.Handshake
	remote    *remoteHive // hives reached over SSH
	local     *proc.Proc  // the local agent, when this queen started it
}

// remoteHive is the SSH side of a hiveConn.
type remoteHive struct {
	conn   *remote.Conn
	layout provision.Layout
	res    provision.Result
}

// alive reports whether the connection can still carry requests.
func (h *hiveConn) alive() bool {
	if h.remote != nil {
		return h.remote.conn.Err() == nil
	}
	if h.local != nil {
		select {
		case <-h.local.Exited():
			return false
		default:
		}
	}
	return true
}

// connector connects one hive: dial, start its agent if needed, handshake.
// step names what it is doing, so a timeout can say where it hung.
type connector func(ctx context.Context, step func(string), narrate func(action, msg string)) (*hiveConn, error)

// pool holds the queen's one connection per hive. Connecting is
// single-flight (parallel first uses share one dial and one agent start)
// and bounded; a connection that dies marks its hive offline at once, with
// the reason, and is redialed in the background with backoff. Nothing in
// it waits on a stalled peer while holding its lock.
type pool struct {
	timeout    time.Duration // bounds one dial + handshake
	minBackoff time.Duration
	maxBackoff time.Duration
	status     func(name string, online bool, reason string)
	stopLocal  func(h *hiveConn)

	ctx    context.Context // ends with the pool: background redials
	cancel context.CancelFunc
	wg     sync.WaitGroup // watchers and redialers

	mu     sync.Mutex
	hives  map[string]*poolEntry
	closed bool
}

type poolEntry struct {
	connect   connector
	conn      *hiveConn
	err       error         // why there is no conn
	dialing   chan struct{} // closed when the attempt in flight ends
	step      string        // what the attempt in flight is doing
	redialing bool
}

func newPool(timeout time.Duration, status func(name string, online bool, reason string), stopLocal func(*hiveConn)) *pool {
	ctx, cancel := context.WithCancel(context.Background())
	return &pool{timeout: timeout, minBackoff: time.Second, maxBackoff: 30 * time.Second, status: status, stopLocal: stopLocal,
		ctx: ctx, cancel: cancel, hives: map[string]*poolEntry{}}
}

// errPoolClosed: the queen is shutting down.
var errPoolClosed = errors.New("the queen is shutting down")

// get returns the live connection to name, connecting with connect when
// there is none (joining an attempt already in flight). ctx bounds the
// wait; the connector bounds each step that waits for the host's answer
// with the pool's timeout (pushes are bounded by the keepalives), and a
// timeout names the step that hung.
func (p *pool) get(ctx context.Context, name string, connect connector, narrate func(action, msg string)) (*hiveConn, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, rbee.Errorf(rbee.CodeQueenDown, "hive %s: %w", name, errPoolClosed)
		}
		e := p.hives[name]
		if e == nil {
			e = &poolEntry{}
			p.hives[name] = e
		}
		if connect != nil {
			e.connect = connect
		}
		if e.conn != nil && e.conn.alive() {
			hc := e.conn
			p.mu.Unlock()
			return hc, nil
		}
		if e.dialing != nil {
			// Join the attempt in flight: its outcome is ours too.
			ch := e.dialing
			p.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return nil, p.timeoutError(ctx, name)
			}
			p.mu.Lock()
			hc, err := e.conn, e.err
			p.mu.Unlock()
			if hc != nil && hc.alive() {
				return hc, nil
			}
			if err != nil && !errors.Is(err, context.Canceled) {
				return nil, err
			}
			continue // the attempt was cancelled by its caller: try again
		}
		if e.connect == nil {
			p.mu.Unlock()
			return nil, rbee.Errorf(rbee.CodeHiveUnknown, "hive %s: no way to reach it", name)
		}
		return p.attempt(ctx, name, e, narrate) // unlocks
	}
}

// attempt runs one connect for e; p.mu is held on entry and released.
func (p *pool) attempt(ctx context.Context, name string, e *poolEntry, narrate func(action, msg string)) (*hiveConn, error) {
	ch := make(chan struct{})
	e.dialing, e.step = ch, "connect"
	connect := e.connect
	p.mu.Unlock()
	step := func(s string) {
		p.mu.Lock()
		e.step = s
		p.mu.Unlock()
	}
	hc, err := connect(ctx, step, narrate)

	p.mu.Lock()
	e.dialing = nil
	close(ch)
	stepAt := e.step
	if err == nil && (p.closed || p.hives[name] != e) {
		p.mu.Unlock()
		p.closeConn(hc)
		return nil, rbee.Errorf(rbee.CodeQueenDown, "hive %s: %w", name, errPoolClosed)
	}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = p.stepError(name, stepAt, err)
		}
		if errors.Is(err, context.Canceled) || p.closed {
			// The caller gave up (a job cancelled, the queen stopping):
			// nothing is known about the hive.
			p.mu.Unlock()
			return nil, err
		}
		e.err = err
		if !e.redialing && !p.closed && name != LocalHive {
			// Keep trying in the background, so a hive that comes back
			// is online again without a job having to ask for it.
			e.redialing = true
			p.wg.Add(1)
			go p.redial(name, e)
		}
		p.mu.Unlock()
		p.status(name, false, err.Error())
		return nil, err
	}
	e.conn, e.err = hc, nil
	if hc.remote != nil {
		p.wg.Add(1)
		go p.watch(name, e, hc)
	}
	p.mu.Unlock()
	p.status(name, true, "")
	return hc, nil
}

// timeoutError says which step of the attempt in flight had not finished
// when ctx ended.
func (p *pool) timeoutError(ctx context.Context, name string) error {
	p.mu.Lock()
	step := "connect"
	if e := p.hives[name]; e != nil && e.step != "" {
		step = e.step
	}
	p.mu.Unlock()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return p.stepError(name, step, ctx.Err())
	}
	return ctx.Err()
}

// stepError explains a failed step; a timeout says how long was waited.
func (p *pool) stepError(name, step string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return (&rbee.Error{Code: rbee.CodeHiveDown, Err: err,
			Message: fmt.Sprintf("hive %s did not answer within %s (step: %s)", name, p.timeout, step)}).
			WithHint("check that the host is up and its sshd answers (rbee doctor --hive " + name + "); rbee hive ls shows the last reason")
	}
	if e := (*rbee.Error)(nil); errors.As(err, &e) {
		return err
	}
	return rbee.Errorf(rbee.CodeHiveDown, "hive %s: %s: %w", name, step, err)
}

// watch marks the hive offline the moment its SSH connection dies
// (keepalives unanswered, reset, closed) and starts the redial.
func (p *pool) watch(name string, e *poolEntry, hc *hiveConn) {
	defer p.wg.Done()
	select {
	case <-hc.remote.conn.Done():
	case <-p.ctx.Done():
		return
	}
	err := hc.remote.conn.Err()
	p.mu.Lock()
	if e.conn != hc || p.hives[name] != e || p.closed {
		p.mu.Unlock()
		return
	}
	e.conn, e.err = nil, err
	start := !e.redialing
	e.redialing = true
	if start {
		p.wg.Add(1)
		go p.redial(name, e)
	}
	p.mu.Unlock()
	hc.client.Close()
	p.status(name, false, fmt.Sprintf("SSH connection lost: %v", err))
}

// redial reconnects a lost hive in the background, waiting minBackoff,
// then twice as long after each failure up to maxBackoff. A job does not
// wait for it: it starts its own attempt (or joins one in flight).
func (p *pool) redial(name string, e *poolEntry) {
	defer p.wg.Done()
	defer func() {
		p.mu.Lock()
		e.redialing = false
		p.mu.Unlock()
	}()
	quiet := func(string, string) {}
	for delay := p.minBackoff; ; delay = min(2*delay, p.maxBackoff) {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-p.ctx.Done():
			t.Stop()
			return
		}
		p.mu.Lock()
		if p.closed || p.hives[name] != e || (e.conn != nil && e.conn.alive()) {
			p.mu.Unlock()
			return
		}
		if ch := e.dialing; ch != nil {
			p.mu.Unlock()
			select {
			case <-ch:
			case <-p.ctx.Done():
				return
			}
			continue
		}
		// The connector bounds each wait for the host's answer itself;
		// an agent start is not cut short.
		if _, err := p.attempt(p.ctx, name, e, quiet); err == nil { // unlocks
			return
		}
	}
}

// fail drops a connection that stopped answering although its transport
// looked alive (a stalled host): it is closed without waiting on the peer
// and the hive is marked offline with reason.
func (p *pool) fail(name string, hc *hiveConn, reason error) {
	p.mu.Lock()
	e := p.hives[name]
	if e != nil && e.conn == hc {
		e.conn, e.err = nil, reason
	}
	p.mu.Unlock()
	if hc.remote != nil {
		hc.remote.conn.Close() // the watcher redials
	}
	p.status(name, false, reason.Error())
}

// connected returns the hives with a live connection now.
func (p *pool) connected() []*hiveConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*hiveConn
	for _, e := range p.hives {
		if e.conn != nil && e.conn.alive() {
			out = append(out, e.conn)
		}
	}
	return out
}

// state tells whether name is connected, and why not.
func (p *pool) state(name string) (connected bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.hives[name]
	if e == nil {
		return false, nil
	}
	if e.conn != nil && e.conn.alive() {
		return true, nil
	}
	return false, e.err
}

// down returns why name is known to be unreachable now: its connection
// was lost or its last attempt failed, and no connection has been made
// since. A fleet job leaves such a hive out at once instead of waiting on
// it (the background redial, or a job naming the hive, brings it back).
func (p *pool) down(name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.hives[name]
	if e == nil || (e.conn != nil && e.conn.alive()) {
		return nil
	}
	return e.err
}

// setConnector sets how name is reconnected.
func (p *pool) setConnector(name string, c connector) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.hives[name]; e != nil {
		e.connect = c
	}
}

// drop forgets a hive and closes its connection.
func (p *pool) drop(name string) {
	p.mu.Lock()
	e := p.hives[name]
	delete(p.hives, name)
	p.mu.Unlock()
	if e != nil && e.conn != nil {
		p.closeConn(e.conn)
	}
}

// closeConn closes a connection without waiting on the peer. A local agent
// this queen started is stopped (with its workers).
func (p *pool) closeConn(hc *hiveConn) {
	hc.client.Close()
	switch {
	case hc.remote != nil:
		hc.remote.conn.Close()
	case hc.name == LocalHive && p.stopLocal != nil:
		p.stopLocal(hc)
	}
}

// close closes every connection and waits for the pool's goroutines.
// Remote agents keep running: they serve the next queen, their workers
// stay warm.
func (p *pool) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	var conns []*hiveConn
	for _, e := range p.hives {
		if e.conn != nil {
			conns = append(conns, e.conn)
		}
	}
	p.mu.Unlock()
	p.cancel()
	var wg sync.WaitGroup
	for _, hc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.closeConn(hc)
		}()
	}
	wg.Wait()
	p.wg.Wait()
}
