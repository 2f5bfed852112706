package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/internal/proc"
	"github.com/rbee-dev/rbee/internal/watchdog"
	"github.com/rbee-dev/rbee/provision"
	"github.com/rbee-dev/rbee/remote"
)

// Conn is a connected hive: its agent's client and how it is reached.
type Conn struct {
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

// Name is the hive's name.
func (h *Conn) Name() string { return h.name }

// Client is the agent's API client.
func (h *Conn) Client() *hiveapi.Client { return h.client }

// SSH is the hive's SSH connection; nil for this machine's hive.
func (h *Conn) SSH() *remote.Conn {
	if h.remote == nil {
		return nil
	}
	return h.remote.conn
}

// DialSocket connects to a unix socket on the hive's machine (an RPC
// server's relay): directly for this machine's hive; for a remote one over
// SSH, by streamlocal forwarding, or through the agent's bridge where the
// host's sshd refuses it.
func (h *Conn) DialSocket(ctx context.Context, path string) (net.Conn, error) {
	if h.remote == nil {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
	c, err := h.remote.conn.DialUnix(ctx, path)
	if !errors.Is(err, remote.ErrForwardingRefused) {
		return c, err
	}
	bc, berr := h.remote.conn.DialBridge(ctx, []string{h.remote.layout.AgentPath(h.handshake.Version), "bridge", "--home", h.remote.layout.RbeeDir(), "--socket", path})
	if berr != nil {
		return nil, fmt.Errorf("%w; bridge: %w", err, berr)
	}
	return bc, nil
}

// alive reports whether the connection can still carry requests.
func (h *Conn) alive() bool {
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
type connector func(ctx context.Context, step func(string), ev Events) (*Conn, error)

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
	stopLocal  func(h *Conn)
	// slots bounds the connect attempts that run at once (dial, SSH
	// handshake, agent install): a hundred hosts started together
	// queue here instead of all thrashing the CPU, and an attempt's
	// bound starts when its own dial does.
	slots chan struct{}

	ctx    context.Context // ends with the pool: background redials
	cancel context.CancelFunc
	wg     sync.WaitGroup // watchers and redialers

	mu     sync.Mutex
	hives  map[string]*poolEntry
	closed bool
}

type poolEntry struct {
	connect   connector
	conn      *Conn
	err       error  // why there is no conn
	dialing   *dial  // the attempt in flight
	step      string // what the attempt in flight is doing
	redialing bool
	retired   bool // being removed: no attempt starts any more
}

func newPool(timeout time.Duration, status func(name string, online bool, reason string), stopLocal func(*Conn)) *pool {
	ctx, cancel := context.WithCancel(context.Background())
	return &pool{timeout: timeout, minBackoff: time.Second, maxBackoff: 30 * time.Second, status: status, stopLocal: stopLocal,
		slots: make(chan struct{}, connectSlots()), ctx: ctx, cancel: cancel, hives: map[string]*poolEntry{}}
}

// connectSlots is how many hives connect at once: four per core, at least
// 8 and at most 64 (a connect is mostly the host's work, the handshake and
// the upload partly this machine's).
func connectSlots() int { return min(max(4*runtime.NumCPU(), 8), 64) }

// errPoolClosed: the queen is shutting down.
var errPoolClosed = errors.New("the queen is shutting down")

// get returns the live connection to name, connecting with connect when
// there is none, or joining the attempt in flight: one attempt serves every
// caller, and it runs on the pool's own context, so a caller that gives up
// (its bound, a cancelled job) never cuts it short for the others. ctx
// bounds only this caller's wait; the connector bounds each step that waits
// for the host's answer with the pool's timeout (pushes are bounded by the
// keepalives), and a timeout names the step that hung. The attempt's
// progress (each step, each buffer uploaded) is reported on ctx
// (watchdog.Alive), so a caller bounded by silence waits for an upload on
// a slow link as long as bytes flow. ev hears the attempt this call
// starts, for as long as this call waits.
func (p *pool) get(ctx context.Context, name string, connect connector, ev Events) (*Conn, error) {
	return p.getWith(ctx, name, connect, ev, true)
}

// getWith is get; keep=false uses connect for an attempt this call starts
// without keeping it for later redials (a connector that accepts a new
// host key is for the one command the person ran, never a background
// redial).
func (p *pool) getWith(ctx context.Context, name string, connect connector, ev Events, keep bool) (*Conn, error) {
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
	if e.retired {
		p.mu.Unlock()
		return nil, rbee.Errorf(rbee.CodeHiveUnknown, "hive %s is being removed", name)
	}
	if connect != nil && keep {
		e.connect = connect
	}
	if e.conn != nil && e.conn.alive() {
		hc := e.conn
		p.mu.Unlock()
		return hc, nil
	}
	d := e.dialing
	if d == nil {
		if connect == nil {
			connect = e.connect
		}
		if connect == nil {
			p.mu.Unlock()
			return nil, rbee.Errorf(rbee.CodeHiveUnknown, "hive %s: no way to reach it", name)
		}
		d = &dial{done: make(chan struct{})}
		e.dialing, e.step = d, "connect"
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.dialOnce(name, e, d, connect)
		}()
	}
	p.mu.Unlock()
	// Whoever waits hears the attempt: what it said so far, then the rest.
	defer d.join(&narrator{ev: ev})()
	// The attempt's progress (steps, bytes uploaded) is this caller's: a
	// bound on its silence waits as long as the attempt moves.
	defer d.listen(func() { watchdog.Alive(ctx) })()
	select {
	case <-d.done:
		return d.hc, d.err
	case <-ctx.Done():
		return nil, p.timeoutError(ctx, name)
	}
}

// dial is one connect attempt; its outcome is set before done closes.
type dial struct {
	done chan struct{}
	hc   *Conn
	err  error

	mu        sync.Mutex
	listeners map[*func()]struct{}   // the waiters' progress reports
	hear      map[*narrator]struct{} // the waiters' streams
	said      []rbee.Event           // the attempt's narration so far
}

// maxSaid bounds the narration an attempt keeps for callers that join it.
const maxSaid = 64

// join passes the attempt's events to n — first what it said so far —
// until the returned func is called.
func (d *dial) join(n *narrator) (leave func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ev := range d.said {
		n.Send(ev)
	}
	if d.hear == nil {
		d.hear = map[*narrator]struct{}{}
	}
	d.hear[n] = struct{}{}
	return func() {
		d.mu.Lock()
		delete(d.hear, n)
		d.mu.Unlock()
		n.leave()
	}
}

// Send counts ev as the attempt's progress and passes it to everyone
// waiting on it; narration is kept for those who join later. A caller
// whose stream does not take a progress event at once misses it: a
// client that stops reading must not stall the upload for the others.
func (d *dial) Send(ev rbee.Event) {
	d.progress()
	d.mu.Lock()
	if ev.Type != rbee.EventProgress && len(d.said) < maxSaid {
		d.said = append(d.said, ev)
	}
	hear := make([]*narrator, 0, len(d.hear))
	for n := range d.hear {
		hear = append(hear, n)
	}
	d.mu.Unlock()
	for _, n := range hear {
		if ev.Type == rbee.EventProgress {
			n.trySend(ev)
		} else {
			n.Send(ev)
		}
	}
}

// Narrate sends a line of the queen's narration about the attempt.
func (d *dial) Narrate(action, msg string) { d.Send(rbee.Narrate(me, action, msg)) }

// listen passes the attempt's progress reports to fn until the returned
// func is called.
func (d *dial) listen(fn func()) (stop func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.listeners == nil {
		d.listeners = map[*func()]struct{}{}
	}
	d.listeners[&fn] = struct{}{}
	return func() {
		d.mu.Lock()
		delete(d.listeners, &fn)
		d.mu.Unlock()
	}
}

// progress reports that the attempt moved to everyone waiting on it.
func (d *dial) progress() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for fn := range d.listeners {
		(*fn)()
	}
}

// narrator passes an attempt's events to one caller while that caller
// still waits (its stream may be gone after).
type narrator struct {
	mu   sync.Mutex
	ev   Events
	gone bool
}

// Send passes ev on while the caller waits.
func (n *narrator) Send(ev rbee.Event) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.gone && n.ev != nil {
		n.ev.Send(ev)
	}
}

// trySend passes ev on unless the caller's stream is busy taking another.
func (n *narrator) trySend(ev rbee.Event) {
	if !n.mu.TryLock() {
		return
	}
	defer n.mu.Unlock()
	if !n.gone && n.ev != nil {
		n.ev.Send(ev)
	}
}

func (n *narrator) leave() {
	n.mu.Lock()
	n.gone = true
	n.mu.Unlock()
}

// dialOnce runs attempt d for e on the pool's context and records its
// outcome: the connection (watched from now on), or the reason, the hive
// marked offline and a background redial started.
func (p *pool) dialOnce(name string, e *poolEntry, d *dial, connect connector) {
	defer close(d.done)
	if !p.takeSlot(e, d) {
		p.mu.Lock()
		e.dialing = nil
		p.mu.Unlock()
		d.err = rbee.Errorf(rbee.CodeQueenDown, "hive %s: %w", name, errPoolClosed)
		return
	}
	defer func() { <-p.slots }()
	step := func(s string) {
		p.mu.Lock()
		e.step = s
		p.mu.Unlock()
		d.progress()
	}
	hc, err := connect(watchdog.WithHook(p.ctx, d.progress), step, d)

	p.mu.Lock()
	e.dialing = nil
	stepAt := e.step
	if err == nil && (p.closed || p.hives[name] != e) {
		p.mu.Unlock()
		p.closeConn(hc)
		d.err = rbee.Errorf(rbee.CodeQueenDown, "hive %s: %w", name, errPoolClosed)
		return
	}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = p.stepError(name, stepAt, err)
		}
		d.err = err
		if errors.Is(err, context.Canceled) || p.closed {
			p.mu.Unlock() // the queen is stopping: nothing is known about the hive
			return
		}
		e.err = err
		p.redialLocked(name, e)
		p.mu.Unlock()
		p.status(name, false, err.Error())
		return
	}
	e.conn, e.err = hc, nil
	if hc.remote != nil {
		p.wg.Add(1)
		go p.watch(name, e, hc)
	}
	p.mu.Unlock()
	p.status(name, true, "")
	d.hc = hc
}

// takeSlot waits for a connect slot; the wait counts as the attempt's
// progress (the host has not been asked yet, so its silence is not
// measured). False: the pool closed first.
func (p *pool) takeSlot(e *poolEntry, d *dial) bool {
	select {
	case p.slots <- struct{}{}:
		return true
	default:
	}
	p.mu.Lock()
	e.step = fmt.Sprintf("waiting for a connect slot (%d hives connect at once)", cap(p.slots))
	p.mu.Unlock()
	tick := time.NewTicker(max(p.timeout/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case p.slots <- struct{}{}:
			p.mu.Lock()
			e.step = "connect"
			p.mu.Unlock()
			return true
		case <-tick.C:
			d.progress()
		case <-p.ctx.Done():
			return false
		}
	}
}

// redialLocked starts the background redial of a remote hive unless one
// runs; p.mu is held.
func (p *pool) redialLocked(name string, e *poolEntry) {
	if e.redialing || p.closed || e.retired || name == LocalHive {
		return
	}
	e.redialing = true
	p.wg.Add(1)
	go p.redial(name, e)
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
func (p *pool) watch(name string, e *poolEntry, hc *Conn) {
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
	p.redialLocked(name, e)
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
	for delay := p.minBackoff; ; delay = min(2*delay, p.maxBackoff) {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-p.ctx.Done():
			t.Stop()
			return
		}
		p.mu.Lock()
		if p.closed || p.hives[name] != e || e.retired || (e.conn != nil && e.conn.alive()) {
			p.mu.Unlock()
			return
		}
		if d := e.dialing; d != nil {
			p.mu.Unlock()
			select {
			case <-d.done:
			case <-p.ctx.Done():
				return
			}
			continue
		}
		if e.connect == nil {
			p.mu.Unlock()
			return // never reached the way the inventory says
		}
		d := &dial{done: make(chan struct{})}
		e.dialing, e.step = d, "connect"
		connect := e.connect
		p.mu.Unlock()
		if p.dialOnce(name, e, d, connect); d.err == nil {
			return
		}
	}
}

// fail drops a connection that stopped answering although its transport
// looked alive (a stalled host): it is closed without waiting on the peer
// and the hive is marked offline with reason.
func (p *pool) fail(name string, hc *Conn, reason error) {
	p.mu.Lock()
	e := p.hives[name]
	if e != nil && e.conn == hc {
		e.conn, e.err = nil, reason
		p.redialLocked(name, e) // the watcher sees a conn no longer current
	}
	p.mu.Unlock()
	if hc.remote != nil {
		hc.remote.conn.Close()
	}
	p.status(name, false, reason.Error())
}

// warm starts connecting name in the background, unless it is connected
// or an attempt runs (a queen that starts reconnects the hives it knows:
// until then they are connecting, not online). A failure is recorded and
// redialed like a lost connection's.
func (p *pool) warm(name string, connect connector) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	e := p.hives[name]
	if e == nil {
		e = &poolEntry{}
		p.hives[name] = e
	}
	e.connect = connect
	if (e.conn != nil && e.conn.alive()) || e.dialing != nil || e.retired {
		return
	}
	d := &dial{done: make(chan struct{})}
	e.dialing, e.step = d, "connect"
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.dialOnce(name, e, d, connect)
	}()
}

// hiveView is what the pool knows of a hive now, for a listing.
type hiveView struct {
	online     bool
	connecting bool      // an attempt runs (or waits for its slot)
	alive      time.Time // when the host last answered (SSH hives)
}

func (p *pool) view(name string) hiveView {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.hives[name]
	if e == nil {
		return hiveView{}
	}
	v := hiveView{connecting: e.dialing != nil}
	if e.conn != nil && e.conn.alive() {
		v.online = true
		if e.conn.remote != nil {
			v.alive = e.conn.remote.conn.LastAlive()
		}
	}
	return v
}

// connected returns the hives with a live connection now.
func (p *pool) connected() []*Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*Conn
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

// retire stops every new connect attempt to name (jobs, background
// redials) and waits for the one in flight, so that nothing starts an
// agent on the host behind a purge's back. It returns the live connection,
// if any; drop forgets the hive after.
func (p *pool) retire(ctx context.Context, name string) (*Conn, error) {
	p.mu.Lock()
	e := p.hives[name]
	if e == nil {
		p.mu.Unlock()
		return nil, nil
	}
	e.retired = true
	d := e.dialing
	p.mu.Unlock()
	if d != nil {
		select {
		case <-d.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.conn != nil && e.conn.alive() {
		return e.conn, nil
	}
	return nil, nil
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
func (p *pool) closeConn(hc *Conn) {
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
	var conns []*Conn
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
