package split

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/internal/peer"
	"github.com/rbee-dev/rbee/queen/fleet"
	"github.com/rbee-dev/rbee/queenapi"
	"github.com/rbee-dev/rbee/scheduler"
)

// A split runs one model across several hives with llama.cpp's RPC
// backend. The main hive runs the worker; every other part's hive runs an
// RPC server bound to its own 127.0.0.1, held by a lease (POST /v1/rpc),
// and the worker reaches it through a forward the queen holds over the
// SSH connections it already has:
//
//	worker → 127.0.0.1:F on the main hive → sshd (tcpip-forward) → the queen
//	       → the RPC hive's sshd (streamlocal) → the agent's unix relay
//	       → 127.0.0.1:P → rpc-server
//
// (direct-tcpip to 127.0.0.1:P where streamlocal is refused: it works, but
// sshd's TCP socket keeps Nagle's algorithm, a 40 ms stall per small RPC
// message.)
// The local hive's side of a forward is a listener on the queen's own
// loopback (it is the same machine) or a dial to it. The main hive's own
// share stays in the worker (rbee-worker --tensor-split gives each part
// the layers the plan gave it). No port is opened on any network.
//
// The split lives as long as its worker: when the worker exits (the
// keep-alive), the forwards close and the leases end, which stops the RPC
// servers. When a part is lost — its RPC server died, its forward's far
// end closed, its SSH connection broke — the worker is killed, and the job
// fails naming that hive.
type split struct {
	owner     *Splitter
	key       string
	job       string
	main      string
	mainHC    *fleet.Conn
	device    string // the main worker's device
	plan      scheduler.SplitPlan
	leases    map[string]*hiveapi.RPCLease // by hive
	conns     map[string]*fleet.Conn       // by hive, as the split was set up
	fwds      []*forward
	endpoints []string

	ctx    context.Context // ends when the split is torn down
	cancel context.CancelFunc
	wg     sync.WaitGroup // watchers

	mu         sync.Mutex
	model      string             // the model's id on the main hive
	worker     string             // the split worker, once ready
	abortStart context.CancelFunc // cancels the worker's start, while it starts
	lostHive   string
	lostErr    error
	lost       chan struct{} // closed at the first loss
	done       chan struct{} // closed once torn down
	ended      bool
	stopWorker bool // the teardown kills the worker
}

func (ss *Splitter) add(s *split) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.m == nil {
		ss.m = map[*split]struct{}{}
	}
	ss.m[s] = struct{}{}
}

func (ss *Splitter) remove(s *split) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.m, s)
}

// warm returns a live split with key whose worker is running.
func (ss *Splitter) warm(key string) *split {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for s := range ss.m {
		s.mu.Lock()
		ok := s.key == key && s.worker != "" && !s.ended && s.lostErr == nil
		s.mu.Unlock()
		if ok {
			return s
		}
	}
	return nil
}

// Close tears every split down (the queen is stopping: a split worker
// cannot outlive its forwards) and waits.
func (ss *Splitter) Close() {
	ss.mu.Lock()
	all := make([]*split, 0, len(ss.m))
	for s := range ss.m {
		all = append(all, s)
	}
	ss.mu.Unlock()
	for _, s := range all {
		s.mu.Lock()
		s.stopWorker = true
		s.mu.Unlock()
		s.end()
	}
	ss.wg.Wait()
}

// runSplit runs a split job: explicit (--split names the hives) or
// proposed by the planner when no single device has room (auto).
func (sp *Splitter) runSplit(ctx context.Context, id string, req queenapi.JobRequest, spec *fleet.ModelSpec, plan scheduler.SplitPlan, ev fleet.Events) error {
	names := plan.Hives()
	key := splitKey(spec, names)
	if s := sp.warm(key); s != nil {
		s.mu.Lock()
		worker := s.worker
		s.mu.Unlock()
		ev.Narrate("device_picked", fmt.Sprintf("split worker %s on hive %s already holds the model across %s: no spawn", worker, s.main, strings.Join(names, ", ")))
		ireq := hiveapi.InferRequest{Job: id, Prompt: req.Prompt, Mode: req.Mode, MaxTokens: req.MaxTokens, Temperature: req.Temperature, Seed: req.Seed,
			Worker: worker, Device: s.device}
		m, ok := s.modelID()
		if !ok {
			return rbee.Errorf(rbee.CodeInternal, "split worker %s: no model", worker)
		}
		ireq.Model = m
		return sp.fleet.Relay(ctx, sp.fleet.Live(s.main, false), ireq, newSplitEvents(ev, s))
	}
	if !req.Explain {
		ev.Narrate("split_planned", strings.ReplaceAll(strings.Replace(plan.Explain(), ":\n  ", ": ", 1), "\n  ", "; "))
	}
	s, model, reservation, err := sp.setUpSplit(ctx, id, spec, plan, key, ev)
	if err != nil {
		return err
	}
	ireq := hiveapi.InferRequest{Job: id, Model: model.ID, Prompt: req.Prompt, Mode: req.Mode, MaxTokens: req.MaxTokens,
		Temperature: req.Temperature, Seed: req.Seed, Device: s.device, Reservation: reservation, RPC: s.endpoints, TensorSplit: plan.Shares()}
	ictx, abort := context.WithCancel(ctx)
	defer abort()
	s.mu.Lock()
	s.abortStart = abort
	s.model = model.ID
	s.mu.Unlock()
	err = sp.fleet.Relay(ictx, sp.fleet.Live(s.main, false), ireq, newSplitEvents(ev, s))
	s.mu.Lock()
	started := s.worker != ""
	s.abortStart = nil
	s.mu.Unlock()
	if !started {
		s.end() // the worker never came up: nothing to keep
	}
	if err != nil && ctx.Err() == nil && ictx.Err() != nil {
		// The start was aborted by a loss: say which hive.
		if hive, why, ok := s.lostNow(); ok {
			return rbee.Errorf(rbee.CodeWorkerCrashed, "the split lost hive %s while the worker started: %v", hive, why)
		}
	}
	return err
}

// setUpSplit reserves each part's room, brings the model to the main
// hive, starts the RPC servers and the forwards, and returns the split,
// watched from now on, with the model's entry on the main hive and the
// reservation the worker takes over (the main hive's share).
func (sp *Splitter) setUpSplit(ctx context.Context, id string, spec *fleet.ModelSpec, plan scheduler.SplitPlan, key string, ev fleet.Events) (*split, hiveapi.Model, string, error) {
	mainPart := plan.Parts[0]
	conns := map[string]*fleet.Conn{}
	for _, pt := range plan.Parts {
		hc, err := sp.fleet.Conn(ctx, pt.Hive, ev)
		if err != nil {
			return nil, hiveapi.Model{}, "", err
		}
		conns[pt.Hive] = hc
	}
	// Every part needs llama.cpp's RPC backend (the main worker to reach
	// the servers, the others to serve): said before any room is taken.
	if err := checkRPCEngines(ctx, plan, conns); err != nil {
		return nil, hiveapi.Model{}, "", err
	}
	// Admission: every part's room, or none.
	res := map[string]string{}
	release := func() {
		for h, id := range res {
			_ = sp.fleet.Live(h, false).Release(context.WithoutCancel(ctx), id)
		}
	}
	for _, pt := range plan.Parts {
		r, err := sp.fleet.Live(pt.Hive, false).Reserve(ctx, hiveapi.ReserveRequest{Device: pt.Device.ID, Bytes: pt.Bytes, Purpose: id})
		if err != nil {
			release()
			return nil, hiveapi.Model{}, "", fmt.Errorf("split: hive %s: %w", pt.Hive, err)
		}
		res[pt.Hive] = r
		ev.Narrate("room_checked", fmt.Sprintf("hive %s reserved %s on %s for its share", pt.Hive, rbee.Bytes(pt.Bytes), pt.Device.ID))
	}
	snap, err := sp.fleet.Live(mainPart.Hive, false).Snapshot(ctx, fleet.Quiet{})
	if err != nil {
		release()
		return nil, hiveapi.Model{}, "", err
	}
	model, err := sp.fleet.Live(mainPart.Hive, false).Model(ctx, spec, snap, ev)
	if err != nil {
		release()
		return nil, hiveapi.Model{}, "", err
	}

	sctx, cancel := context.WithCancel(context.Background())
	s := &split{owner: sp, key: key, job: id, main: mainPart.Hive, mainHC: conns[mainPart.Hive], device: mainPart.Device.ID, plan: plan,
		leases: map[string]*hiveapi.RPCLease{}, conns: conns, ctx: sctx, cancel: cancel, lost: make(chan struct{}), done: make(chan struct{})}
	sp.add(s)
	fail := func(err error) (*split, hiveapi.Model, string, error) {
		release()
		s.end()
		<-s.done
		return nil, hiveapi.Model{}, "", err
	}

	// The RPC servers, all at once; each takes its part's reservation.
	type started struct {
		hive  string
		lease *hiveapi.RPCLease
		err   error
	}
	parts := plan.Parts[1:] // the main hive's share stays in the worker
	out := make(chan started, len(parts))
	for _, pt := range parts {
		go func() {
			l, err := conns[pt.Hive].Client().StartRPC(ctx, hiveapi.RPCRequest{Job: id, Device: pt.Device.ID, Reservation: res[pt.Hive]})
			out <- started{pt.Hive, l, err}
		}()
	}
	var errs []error
	for range parts {
		st := <-out
		if st.err != nil {
			errs = append(errs, fmt.Errorf("hive %s: start its RPC server: %w", st.hive, fleet.HiveError(st.err)))
			delete(res, st.hive) // the hive gave it back
			continue
		}
		delete(res, st.hive)
		s.leases[st.hive] = st.lease
		ev.Narrate("rpc_ready", fmt.Sprintf("hive %s: RPC server %s (pid %d) in a network namespace of its own, reached only through the hive's socket", st.hive, st.lease.Server.ID, st.lease.Server.PID))
	}
	if len(errs) > 0 {
		err := errors.Join(errs...)
		code := rbee.CodeWorkerFailed
		if c := rbee.CodeOf(errs[0]); c == rbee.CodeHiveDown || c == rbee.CodeNoRoom || c == rbee.CodeEngine {
			code = c
		}
		return fail(&rbee.Error{Code: code, Message: "split: " + err.Error(), Err: err})
	}
	// The endpoints, in the plan's order, each through its forward.
	var fwds []*forward
	for _, pt := range parts {
		l := s.leases[pt.Hive]
		f, err := sp.forwardTo(ctx, s, conns[s.main], pt.Hive, conns[pt.Hive], l.Server.Port, l.Server.Socket)
		if err != nil {
			for _, f := range fwds {
				f.Close()
			}
			return fail(err)
		}
		fwds = append(fwds, f)
		s.endpoints = append(s.endpoints, f.Endpoint())
		where := "the queen's 127.0.0.1"
		if conns[s.main].SSH() != nil {
			where = "hive " + s.main + "'s 127.0.0.1 (an SSH remote forward)"
		}
		ev.Narrate("rpc_forward", fmt.Sprintf("forward %s on %s → hive %s's RPC server, inside SSH", f.Endpoint(), where, pt.Hive))
	}
	s.mu.Lock()
	s.fwds = fwds
	ended := s.ended
	s.mu.Unlock()
	if ended { // lost while the forwards were made: the teardown missed them
		for _, f := range fwds {
			f.Close()
		}
		hive, why, _ := s.lostNow()
		return fail(rbee.Errorf(rbee.CodeWorkerFailed, "split: lost hive %s while setting up: %v", hive, why))
	}
	for _, h := range names(parts) {
		s.watchLease(h, s.leases[h])
	}
	workerRes := res[s.main] // the worker takes the main hive's share
	delete(res, s.main)
	return s, model, workerRes, nil
}

func names(parts []scheduler.SplitPart) []string {
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = p.Hive
	}
	return out
}

// forwardTo opens a forward port on the main hive's loopback (an SSH
// remote forward, or the queen's own loopback for the local hive) whose
// connections go to port on the RPC hive's loopback (through its SSH
// connection, or directly on this machine).
func (sp *Splitter) forwardTo(ctx context.Context, s *split, main *fleet.Conn, hive string, rpc *fleet.Conn, port int, socket string) (*forward, error) {
	var ln net.Listener
	var err error
	if main.SSH() != nil {
		ln, err = main.SSH().ListenLoopback(ctx)
	} else {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		return nil, rbee.Errorf(rbee.CodeHiveDown, "split: a forward on hive %s: %w", s.main, err).
			WithHint("the split needs TCP forwarding (AllowTcpForwarding yes in the host's sshd_config); rbee doctor --hive " + s.main + " checks it")
	}
	dial := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	}
	switch {
	case socket != "":
		// The agent's 0600 relay, for its owner only: the server itself
		// runs in a network namespace of its own, on no port of the host.
		dial = func(ctx context.Context) (net.Conn, error) { return rpc.DialSocket(ctx, socket) }
	case rpc.SSH() != nil: // an agent that names no relay: sshd's own TCP dial
		conn := rpc.SSH()
		dial = func(ctx context.Context) (net.Conn, error) { return conn.DialLoopback(ctx, port) }
	}
	// Only the worker's user may use the forward: its listener is on a
	// loopback every local user reaches.
	admit := admitLocal
	if main.SSH() != nil {
		client := main.Client()
		admit = func(ctx context.Context, c net.Conn) error {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			// On the main hive's machine: the connection's client socket is
			// the one whose local address is the forward's remote one.
			p, err := client.TCPPeer(ctx, c.RemoteAddr().String(), c.LocalAddr().String())
			if err == nil && !p.Allowed {
				err = fmt.Errorf("a connection of uid %d on hive %s, not its owner's", p.UID, s.main)
			}
			return err
		}
	}
	return newForward(hive, ln, dial, s.lose, admit, sp.log.Warn, sp.stall), nil
}

// admitLocal lets through a connection to a forward on this machine only
// when its client is this user's (or root's), by the kernel's socket
// tables.
func admitLocal(_ context.Context, c net.Conn) error {
	uid, err := peer.TCPUID(c)
	if err == nil && !peer.Allowed(uid) {
		err = fmt.Errorf("a connection of uid %d, not this user's", uid)
	}
	return err
}

func splitKey(spec *fleet.ModelSpec, hives []string) string {
	id := spec.SHA256
	if id == "" {
		id = spec.Raw
	}
	hs := slices.Clone(hives)
	slices.Sort(hs)
	return id + "|" + strings.Join(hs, ",")
}

// watchLease reports the loss of hive's RPC server.
func (s *split) watchLease(hive string, l *hiveapi.RPCLease) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-l.Done():
			err := l.Err()
			if err == nil {
				err = errors.New("its lease ended")
			}
			// Said the same way whichever notices first, the lease or
			// the forward: "the RPC server …".
			s.lose(hive, fmt.Errorf("the RPC server went away: %w", err))
		case <-s.ctx.Done():
		}
	}()
}

// setWorker records the worker once it is up, and watches it: its exit
// ends the split.
func (s *split) setWorker(id string) {
	s.mu.Lock()
	if s.worker != "" || s.ended {
		s.mu.Unlock()
		return
	}
	s.worker = id
	lost := s.lostErr != nil
	s.mu.Unlock()
	if lost {
		s.killWorker(id)
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_, err := s.mainHC.Client().WaitWorker(s.ctx, id)
		if s.ctx.Err() != nil {
			return
		}
		var ae *hiveapi.APIError
		if err != nil && !errors.As(err, &ae) {
			s.lose(s.main, fmt.Errorf("the way to the main worker broke: %w", err))
			return
		}
		// A worker that died of a loss (llama.cpp aborts) may go just
		// before the loss is seen: give it a moment to be recorded.
		t := time.NewTimer(time.Second)
		select {
		case <-s.lost:
		case <-t.C:
		}
		t.Stop()
		s.owner.log.Info("split worker exited", "worker", id, "hive", s.main)
		s.end()
	}()
}

func (s *split) modelID() (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.model, s.model != ""
}

// lose records the first loss, kills the worker (or aborts its start) and
// ends the split. hive "" is the main hive.
func (s *split) lose(hive string, err error) {
	if hive == "" {
		hive = s.main
	}
	s.mu.Lock()
	if s.lostErr != nil {
		s.mu.Unlock()
		return
	}
	// Recorded even after the teardown began: the worker may have died of
	// the loss a moment before the loss itself was seen.
	s.lostHive, s.lostErr = hive, err
	close(s.lost)
	ended := s.ended
	worker, abort := s.worker, s.abortStart
	s.stopWorker = worker != ""
	s.mu.Unlock()
	if ended {
		return
	}
	s.owner.log.Warn("split lost a hive", "job", s.job, "hive", hive, "err", err, "worker", worker)
	if abort != nil && worker == "" {
		abort()
	}
	s.end()
}

func (s *split) lostNow() (string, error, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lostHive, s.lostErr, s.lostErr != nil
}

// killWorker kills the split worker at once: without its RPC servers it
// can only hang or abort.
func (s *split) killWorker(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.mainHC.Client().KillWorker(ctx, id); err != nil {
		s.owner.log.Warn("kill split worker", "worker", id, "hive", s.main, "err", err)
	}
}

// end tears the split down once, in the background: the worker killed
// if it was lost, the forwards closed, the leases ended (the hives stop
// their RPC servers).
func (s *split) end() {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.ended = true
	worker, kill, fwds := s.worker, s.stopWorker, s.fwds
	s.mu.Unlock()
	s.owner.wg.Add(1)
	go func() {
		defer s.owner.wg.Done()
		defer close(s.done)
		s.cancel()
		if kill && worker != "" {
			s.killWorker(worker)
		}
		for _, f := range fwds {
			f.Close()
			up, down := f.Bytes()
			s.owner.log.Info("split forward closed", "job", s.job, "hive", f.hive, "bytes_up", up, "bytes_down", down)
		}
		var wg sync.WaitGroup
		for _, l := range s.leases {
			wg.Go(l.Close)
		}
		wg.Wait()
		s.wg.Wait()
		s.owner.remove(s)
	}()
}

// splitEvents passes a split job's events on: it learns the worker's id
// from them, and turns the worker's failure into the loss that caused it.
type splitEvents struct {
	fleet.Events
	s    *split
	base int64 // bytes the forwards had carried when the job began
}

func newSplitEvents(ev fleet.Events, s *split) splitEvents {
	return splitEvents{Events: ev, s: s, base: s.carried()}
}

// carried is what the split's forwards have carried, both ways.
func (s *split) carried() int64 {
	s.mu.Lock()
	fwds := s.fwds
	s.mu.Unlock()
	var n int64
	for _, f := range fwds {
		up, down := f.Bytes()
		n += up + down
	}
	return n
}

func (e splitEvents) Send(ev rbee.Event) {
	if ev.Type == rbee.EventDone && ev.Done != nil {
		// The split's cost, in bytes: what went through SSH for this job.
		n := e.s.carried() - e.base
		msg := fmt.Sprintf("split: %s through the forwards (inside SSH)", rbee.Bytes(uint64(n)))
		if t := ev.Done.CompletionTokens; t > 0 {
			msg += fmt.Sprintf(", %s per generated token", rbee.Bytes(uint64(n/int64(t))))
		}
		nev := rbee.Narrate(me, "split_bytes", msg)
		nev.Data, _ = json.Marshal(map[string]int64{"bytes": n})
		e.Events.Send(nev)
	}
	if ev.Worker != nil && ev.Worker.ID != "" && ev.Worker.State == "ready" {
		e.s.setWorker(ev.Worker.ID)
	}
	if ev.Type == rbee.EventError && (ev.Code == rbee.CodeWorkerCrashed || ev.Code == rbee.CodeWorkerFailed || ev.Code == rbee.CodeWorkerNotFound) {
		ev = e.s.explain(ev)
	}
	e.Events.Send(ev)
}

// explain names the lost hive in the worker's failure. The loss is
// usually known first; the worker's crash may be seen a moment before the
// forward or the lease says why, so it waits for that, briefly.
func (s *split) explain(ev rbee.Event) rbee.Event {
	t := time.NewTimer(3 * time.Second)
	defer t.Stop()
	select {
	case <-s.lost:
	case <-t.C:
		return ev
	}
	hive, why, _ := s.lostNow()
	// A far end that closed may be the SSH connection to the hive, not
	// its RPC server: that connection's end is seen a moment later, if so.
	if hc := s.conns[hive]; hc != nil && hc.SSH() != nil {
		t := time.NewTimer(300 * time.Millisecond)
		select {
		case <-hc.SSH().Done():
			why = fmt.Errorf("the SSH connection to it broke (%w)", hc.SSH().Err())
		case <-t.C:
		}
		t.Stop()
	}
	ev.Code = rbee.CodeWorkerCrashed
	ev.Message = fmt.Sprintf("the split lost hive %s: %v; %s", hive, why, ev.Message)
	ev.Hint = fmt.Sprintf("the next job plans again (rbee hive ls shows whether hive %s is up; --split names the hives to use)", hive)
	return ev
}

// rpcBackend is the engine backend a split's every part needs.
const rpcBackend = "rpc"

// checkRPCEngines refuses a split whose hives lack an engine with the RPC
// backend (the engine rbee installs by itself has none), naming the one
// command that installs one: from a bundle another hive of this machine
// already has, or from the one `make engine` builds.
func checkRPCEngines(ctx context.Context, plan scheduler.SplitPlan, conns map[string]*fleet.Conn) error {
	var lacking []string
	have := ""
	for _, pt := range plan.Parts {
		wbs, err := conns[pt.Hive].Client().WorkerBinaries(ctx)
		if err != nil {
			return fmt.Errorf("split: hive %s: engines: %w", pt.Hive, fleet.HiveError(err))
		}
		ok := false
		for _, wb := range wbs {
			if slices.Contains(wb.Capabilities, rpcBackend) {
				ok = true
				if pt.Hive == fleet.LocalHive && have == "" {
					have = wb.Path
				}
			}
		}
		if !ok {
			lacking = append(lacking, pt.Hive)
		}
	}
	if len(lacking) == 0 {
		return nil
	}
	src := have
	if src == "" {
		src = "DIR"
	}
	cmds := make([]string, len(lacking))
	for i, h := range lacking {
		cmds[i] = "rbee worker install --hive " + h + " " + src
	}
	hint := strings.Join(cmds, "; ")
	if have == "" {
		hint += ", with DIR an engine bundle built with llama.cpp's RPC backend (in rbee's source, `make engine` builds one in .rbee-dev/engine/llama-cpu)"
	}
	which := "hive " + lacking[0] + " has"
	if len(lacking) > 1 {
		which = "hives " + strings.Join(lacking, ", ") + " have"
	}
	return (&rbee.Error{Code: rbee.CodeEngine,
		Message: fmt.Sprintf("split: %s no engine with llama.cpp's RPC backend (the engine rbee installs by itself has none)", which)}).
		WithHint(hint)
}
