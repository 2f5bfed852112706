package door

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/queen/fleet"
	"github.com/rbee-dev/rbee/queenapi"
)

const (
	// refreshEvery is how often the door looks at every hive's workers
	// (while it is in use or deployments exist).
	refreshEvery = 2 * time.Second
	// placeTimeout bounds starting a replica (a model download included).
	placeTimeout = 30 * time.Minute
	// placeBackoff and placeBackoffMax bound how often requests may start
	// a placement again after one failed.
	placeBackoff    = 5 * time.Second
	placeBackoffMax = 5 * time.Minute
)

// errQueueFull and errQueueTimeout are answered 429 and 503.
var (
	errQueueFull    = rbee.Errorf(rbee.CodeBusy, "queue full")
	errQueueTimeout = rbee.Errorf(rbee.CodeBusy, "no replica could take the request in time")
)

// router sends the front door's requests to replicas — ready workers of
// the model — and queues those that find every slot taken. What it knows
// of the workers comes from the hives' snapshots (refreshed every
// refreshEvery while in use) and from its own placements; a replica that
// fails is dropped at once.
type router struct {
	door  *Door
	depth int
	wait  time.Duration
	ctx   context.Context // the queen's life: placements and the refresh loop
	wg    sync.WaitGroup

	mu      sync.Mutex
	groups  map[groupKey]*group
	snaps   map[string]fleet.Snapshot // the latest look at each hive
	hives   []fleet.Hive              // the candidates they were taken of
	snapsAt time.Time
	deps    []catalog.Deployment // cached; depsOK false = read again
	depsOK  bool
	used    time.Time // last door request
	// retiring are the workers being stopped as idle above their
	// deployment's min, by hive/worker, with their hive/device: no
	// request goes to them, even while a snapshot still shows them.
	retiring map[string]string
	kick     chan struct{}
	closed   bool // no new placements: the queen is closing
}

// groupKey names what replicas serve: a model (sha256, or the reference
// while none is downloaded) for completions or for embeddings.
type groupKey struct {
	model      string
	embeddings bool
}

// group is one model's replicas and queue.
type group struct {
	key      groupKey
	spec     *fleet.ModelSpec
	replicas map[string]*replica // by hive/worker
	queue    []*ticket           // requests waiting for a slot, first come first
	wake     chan struct{}       // closed (and replaced) when a slot frees or replicas change
	placing  *placeCall          // a first replica being started for a request
	deployed bool                // a deployment keeps it: requests wait for its replicas
	// label is the name clients last asked for the model by (an alias, a
	// deployment, a file name): the model label of its replicas' metrics,
	// the same as its requests'. "" until a request came.
	label string
	// deployErr is the deployment's last failure to place a replica: with
	// none ready, a request fails with it at once instead of waiting.
	deployErr error
	// placeErr is the last failure of a placement requests started, until
	// placeRetry: requests meanwhile fail with it at once instead of each
	// starting another (a model a client names that cannot be fetched must
	// not make the queen reach out for every request). The wait doubles
	// with each failure in a row, from placeBackoff to placeBackoffMax.
	placeErr   error
	placeAt    time.Time // when it failed
	placeFails int
}

// placeCall is a placement others wait on.
type placeCall struct {
	done chan struct{}
	err  error
}

// replica is one worker serving a group.
type replica struct {
	hive, worker, device, modelID string
	deployment                    string
	slots, inflight               int
	ready                         bool
	generated                     int64     // tokens of the requests it answered
	lastUsed                      time.Time // a request began or ended on it, or it joined
}

func (r *replica) id() string { return r.hive + "/" + r.worker }

func newRouter(ctx context.Context, door *Door, depth int, wait time.Duration) *router {
	return &router{door: door, depth: depth, wait: wait, ctx: ctx, groups: map[groupKey]*group{}, retiring: map[string]string{}, kick: make(chan struct{}, 1)}
}

// keyOf is the group key of a model spec.
func keyOf(spec *fleet.ModelSpec, embeddings bool) groupKey {
	if spec.SHA256 != "" {
		return groupKey{model: spec.SHA256, embeddings: embeddings}
	}
	return groupKey{model: spec.Raw, embeddings: embeddings}
}

// group returns the group of spec, made on first use and filled from the
// latest snapshots.
func (rt *router) group(spec *fleet.ModelSpec, embeddings bool) *group {
	k := keyOf(spec, embeddings)
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.used = time.Now()
	g, ok := rt.groups[k]
	if !ok {
		g = &group{key: k, spec: spec, replicas: map[string]*replica{}, wake: make(chan struct{})}
		rt.groups[k] = g
		for name, s := range rt.snaps {
			rt.syncGroup(g, name, s)
		}
	}
	return g
}

// named records the name a request asked for g's model by.
func (rt *router) named(g *group, label string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	g.label = label
}

// lookSnaps returns snapshots of hives no older than two refreshes, taken
// now when the cache is older.
func (rt *router) lookSnaps(ctx context.Context) (map[string]fleet.Snapshot, []fleet.Hive, error) {
	rt.mu.Lock()
	rt.used = time.Now()
	snaps, hives, fresh := rt.snaps, rt.hives, time.Since(rt.snapsAt) < 2*refreshEvery
	rt.mu.Unlock()
	if fresh && len(snaps) > 0 {
		return snaps, hives, nil
	}
	hives, err := rt.door.fleet.Candidates(ctx, "", fleet.Quiet{})
	if err != nil {
		return nil, nil, err
	}
	snaps, err = rt.refresh(ctx, hives)
	return snaps, hives, err
}

// stale makes the next lookup take fresh snapshots: a hive's catalog
// changed through the queen (a pull, a push, an alias, a removal).
func (rt *router) stale() {
	rt.mu.Lock()
	rt.snapsAt = time.Time{}
	rt.mu.Unlock()
}

// deployments are the queen catalog's deployments, read again after a
// change or every refresh.
func (rt *router) deployments(ctx context.Context) ([]catalog.Deployment, error) {
	rt.mu.Lock()
	deps, ok := rt.deps, rt.depsOK
	rt.mu.Unlock()
	if ok {
		return deps, nil
	}
	deps, err := rt.door.db.Deployments(ctx)
	if err != nil {
		return nil, err
	}
	rt.mu.Lock()
	rt.deps, rt.depsOK = deps, true
	rt.mu.Unlock()
	return deps, nil
}

// changed drops what the router holds of the deployments and looks again
// at once.
func (rt *router) changed() {
	rt.mu.Lock()
	rt.depsOK = false
	rt.mu.Unlock()
	select {
	case rt.kick <- struct{}{}:
	default:
	}
}

// refresh takes a snapshot of every hive (bounded, in parallel) and brings
// every group's replicas up to date: new ready workers join, gone ones
// leave, those of a hive that did not answer get nothing until it does.
func (rt *router) refresh(ctx context.Context, hives []fleet.Hive) (map[string]fleet.Snapshot, error) {
	snaps, err := rt.door.fleet.Snapshots(ctx, hives, fleet.Quiet{})
	if err != nil {
		return nil, err
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.snaps, rt.hives, rt.snapsAt = snaps, hives, time.Now()
	for _, g := range rt.groups {
		changed := false
		for _, r := range g.replicas {
			if _, ok := snaps[r.hive]; !ok && r.ready {
				r.ready, changed = false, true // unreachable: health-gated
			}
		}
		for name, s := range snaps {
			changed = rt.syncGroup(g, name, s) || changed
		}
		if changed {
			g.broadcast()
		}
	}
	for id := range rt.retiring { // stopped: the hive no longer shows it
		hive, worker, _ := strings.Cut(id, "/")
		if s, ok := snaps[hive]; ok && !slices.ContainsFunc(s.Workers, func(w rbee.WorkerInfo) bool { return w.ID == worker }) {
			delete(rt.retiring, id)
		}
	}
	return snaps, nil
}

// syncGroup brings g's replicas on hive name in line with its snapshot s.
// The caller holds rt.mu.
func (rt *router) syncGroup(g *group, name string, s fleet.Snapshot) (changed bool) {
	seen := map[string]bool{}
	for _, w := range s.Workers {
		if w.Type != "" || w.Embeddings != g.key.embeddings || !servesModel(s, w.ModelID, g) {
			continue
		}
		id := name + "/" + w.ID
		if _, ok := rt.retiring[id]; ok {
			continue
		}
		seen[id] = true
		r, ok := g.replicas[id]
		if !ok {
			r = &replica{hive: name, worker: w.ID, device: w.Device, modelID: w.ModelID, lastUsed: time.Now()}
			g.replicas[id] = r
			changed = true
		}
		ready := w.State == "ready"
		if r.ready != ready || r.slots != max(w.Slots, 1) {
			changed = true
		}
		r.ready, r.slots, r.deployment = ready, max(w.Slots, 1), w.Deployment
	}
	for id, r := range g.replicas {
		if r.hive == name && !seen[id] {
			delete(g.replicas, id)
			changed = true
		}
	}
	return changed
}

// servesModel says whether catalog entry id of the hive is g's model.
func servesModel(s fleet.Snapshot, id string, g *group) bool {
	for _, m := range s.Models {
		if m.ID == id {
			if g.spec.SHA256 != "" {
				return m.SHA256 == g.spec.SHA256
			}
			return m.Ref == g.spec.Raw || (g.spec.Resolved != "" && m.Ref == g.spec.Resolved)
		}
	}
	return false
}

// broadcast wakes every request waiting on g. The caller holds rt.mu.
func (g *group) broadcast() {
	close(g.wake)
	g.wake = make(chan struct{})
}

// pick returns the ready replica with the fewest requests in flight per
// slot that has a slot free. The caller holds rt.mu.
func (g *group) pick() *replica {
	var best *replica
	for _, r := range g.replicas {
		if !r.ready || r.inflight >= r.slots {
			continue
		}
		if best == nil || r.inflight*best.slots < best.inflight*r.slots ||
			(r.inflight*best.slots == best.inflight*r.slots && r.id() < best.id()) {
			best = r
		}
	}
	return best
}

// readyCount is how many replicas may take requests. The caller holds rt.mu.
func (g *group) readyCount() int {
	n := 0
	for _, r := range g.replicas {
		if r.ready {
			n++
		}
	}
	return n
}

// ticket is one request's place in a group's queue: since when it waits
// (the deployer adds a replica when the first waited too long).
type ticket struct{ since time.Time }

// acquire returns a replica with a slot for one request, waiting in g's
// queue when every slot is taken: first come, first served (a request
// that arrives while others wait queues behind them), at most rt.depth
// wait (the next is refused at once), each at most rt.wait. With no
// replica and no deployment starting one, the first request places one as
// `rbee infer` would (warm wins, else the plan) and the others wait for
// it. A client that leaves (ctx) leaves the queue.
func (rt *router) acquire(ctx context.Context, g *group, waiting func(delta int)) (*replica, error) {
	timer := time.NewTimer(rt.wait)
	defer timer.Stop()
	me := &ticket{since: time.Now()}
	queued := false
	leave := func() { // the caller holds rt.mu
		if i := slices.Index(g.queue, me); i >= 0 {
			g.queue = slices.Delete(g.queue, i, i+1)
			waiting(-1)
			if i == 0 {
				g.broadcast() // the next in line may take a slot
			}
		}
		queued = false
	}
	defer func() {
		if queued {
			rt.mu.Lock()
			leave()
			rt.mu.Unlock()
		}
	}()
	for {
		rt.mu.Lock()
		if len(g.queue) == 0 || (queued && g.queue[0] == me) {
			if r := g.pick(); r != nil {
				r.inflight++
				r.lastUsed = time.Now()
				if queued {
					leave()
				}
				rt.mu.Unlock()
				return r, nil
			}
		}
		if !queued {
			if len(g.queue) >= rt.depth {
				rt.mu.Unlock()
				return nil, errQueueFull
			}
			g.queue = append(g.queue, me)
			queued = true
			waiting(1)
		}
		if g.deployed && g.deployErr != nil && g.readyCount() == 0 {
			err := g.deployErr
			rt.mu.Unlock()
			return nil, err
		}
		var placed <-chan struct{}
		pc := g.placing
		if pc == nil && !g.deployed && g.readyCount() == 0 {
			if retry := g.placeAt.Add(rt.backoff(g.placeFails)); g.placeErr != nil && time.Now().Before(retry) {
				err := fmt.Errorf("%w (that was %s ago; the door tries again in %s)", g.placeErr,
					time.Since(g.placeAt).Round(time.Second), time.Until(retry).Round(time.Second))
				rt.mu.Unlock()
				return nil, err
			}
			pc = rt.startPlace(g)
		}
		if pc != nil {
			placed = pc.done
		}
		wake := g.wake
		rt.mu.Unlock()
		select {
		case <-wake:
		case <-placed:
			if pc.err != nil {
				return nil, pc.err
			}
		case <-timer.C:
			return nil, errQueueTimeout
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// release ends a request on r; failed drops the replica (its worker or
// hive stopped answering) until a snapshot shows it again.
func (rt *router) release(g *group, r *replica, failed bool) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	r.inflight--
	r.lastUsed = time.Now()
	if failed {
		r.ready = false
		delete(g.replicas, r.id())
		select {
		case rt.kick <- struct{}{}: // look again soon
		default:
		}
	}
	g.broadcast()
}

// startPlace starts placing a first replica for g on the queen's
// lifetime (not the request's: waiters share it). The caller holds rt.mu.
func (rt *router) startPlace(g *group) *placeCall {
	pc := &placeCall{done: make(chan struct{})}
	if rt.closed {
		pc.err = fleet.ErrShuttingDown
		close(pc.done)
		return pc
	}
	g.placing = pc
	rt.wg.Add(1)
	go func() {
		defer rt.wg.Done()
		ctx, cancel := context.WithTimeout(rt.ctx, placeTimeout)
		defer cancel()
		r, err := rt.place(ctx, g, placeOpts{})
		rt.mu.Lock()
		g.placing = nil
		if err == nil {
			r.lastUsed = time.Now()
			g.replicas[r.id()] = r
			g.placeErr, g.placeFails = nil, 0
		} else if rt.ctx.Err() == nil {
			g.placeFails++
			g.placeErr, g.placeAt = err, time.Now()
		}
		pc.err = err
		g.broadcast()
		rt.mu.Unlock()
		close(pc.done)
	}()
	return pc
}

// backoff is how long requests wait before placing again after n
// failures in a row.
func (rt *router) backoff(n int) time.Duration {
	d := placeBackoff
	for i := 1; i < n && d < placeBackoffMax; i++ {
		d *= 2
	}
	return min(d, placeBackoffMax)
}

// placeOpts narrow a placement: the deployment the worker is kept for,
// the hives and device it may use, the devices that already hold one,
// and whether a model no single device holds may be split across hives
// (not for a replica added for the queue: it wants a free device).
type placeOpts struct {
	deployment string
	hives      []string
	device     string
	exclude    map[string]bool // "hive/device"
	noSplit    bool
}

// place puts one worker of g's model where `rbee infer` would (a warm
// worker wins, else the plan and the hive's VRAM checker) and waits until
// it is ready. A deployment's worker is marked kept loaded.
func (rt *router) place(ctx context.Context, g *group, o placeOpts) (*replica, error) {
	dr := rt.door
	all, err := dr.fleet.Candidates(ctx, "", fleet.Quiet{})
	if err != nil {
		return nil, err
	}
	hives := all
	if len(o.hives) > 0 {
		hives = nil
		for _, n := range o.hives {
			if err := dr.fleet.Resolve(ctx, n); err != nil {
				return nil, err
			}
			hives = append(hives, dr.fleet.Live(n, len(o.hives) > 1))
		}
	}
	snaps, err := rt.refresh(ctx, hives)
	if err != nil {
		return nil, err
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	id := "place-" + hex.EncodeToString(b[:])
	pl, err := dr.fleet.Place(ctx, fleet.PlaceJob{ID: id, Spec: g.spec, Device: o.device, Fleet: len(hives) > 1, Snaps: snaps,
		Exclude: o.exclude, Embeddings: g.key.embeddings}, hives, fleet.Quiet{})
	if rbee.CodeOf(err) == rbee.CodeNoRoom && dr.cfg.Split != nil && len(snaps) > 1 && !g.key.embeddings && !o.noSplit {
		// No single device holds it: one worker split across hives, as
		// `rbee infer` does (within a host the planner split it already).
		sw, serr := dr.cfg.Split(ctx, g.spec, snaps, o.device, o.deployment, err)
		if serr != nil {
			return nil, serr
		}
		dr.log.Info("replica split", "model", fleet.ShownName(g.spec.Raw), "hive", sw.Hive, "worker", sw.Worker, "hives", strings.Join(sw.Hives, ","), "deployment", o.deployment)
		return &replica{hive: sw.Hive, worker: sw.Worker, device: sw.Device, modelID: sw.ModelID, deployment: o.deployment,
			slots: max(sw.Slots, 1), ready: true}, nil
	}
	if err != nil {
		return nil, err
	}
	name := pl.Hive.Name()
	hc, err := dr.fleet.Client(ctx, name)
	if err != nil {
		if pl.Reservation != "" {
			_ = pl.Hive.Release(context.WithoutCancel(ctx), pl.Reservation)
		}
		return nil, err
	}
	if pl.Worker != "" {
		if err := hc.SetDeployment(ctx, pl.Worker, o.deployment); err != nil && o.deployment != "" {
			return nil, fleet.HiveError(err)
		}
		r := &replica{hive: name, worker: pl.Worker, device: pl.Device, modelID: pl.Model.ID, deployment: o.deployment, slots: 1, ready: true}
		for _, w := range snaps[name].Workers {
			if w.ID == pl.Worker {
				r.slots, r.device = max(w.Slots, 1), w.Device
			}
		}
		dr.log.Info("replica adopted", "model", fleet.ShownName(g.spec.Raw), "hive", name, "worker", pl.Worker, "deployment", o.deployment)
		return r, nil
	}
	info, err := hc.StartWorker(ctx, hiveapi.StartWorkerRequest{Model: pl.Model.ID, Device: pl.Device, Reservation: pl.Reservation,
		Embeddings: g.key.embeddings, Deployment: o.deployment})
	if err != nil {
		return nil, fleet.HiveError(err)
	}
	dr.log.Info("replica started", "model", fleet.ShownName(g.spec.Raw), "hive", name, "worker", info.ID, "device", info.Device, "slots", info.Slots, "deployment", o.deployment)
	return &replica{hive: name, worker: info.ID, device: info.Device, modelID: info.ModelID, deployment: o.deployment,
		slots: max(info.Slots, 1), ready: info.State == "ready"}, nil
}

// run refreshes the replicas every refreshEvery (sooner when a replica
// failed) while the door was used in the last minute or deployments
// exist, and keeps the deployments; between, it scales them with their
// queues (a look at what the router holds, a quarter of the scale wait
// apart).
func (rt *router) run() {
	defer rt.wg.Done()
	tick := time.NewTicker(refreshEvery)
	defer tick.Stop()
	scaleTick := time.NewTicker(min(max(rt.door.cfg.ScaleWait/4, 50*time.Millisecond), time.Second))
	defer scaleTick.Stop()
	for {
		select {
		case <-rt.ctx.Done():
			return
		case <-scaleTick.C:
			rt.door.deploy.scale(time.Now())
			continue
		case <-tick.C:
		case <-rt.kick:
		}
		deps, err := rt.door.db.Deployments(rt.ctx)
		if err != nil {
			rt.door.log.Warn("deployments", "err", err)
		} else {
			rt.mu.Lock()
			rt.deps, rt.depsOK = deps, true
			rt.mu.Unlock()
		}
		rt.mu.Lock()
		idle := time.Since(rt.used) > time.Minute
		rt.mu.Unlock()
		if idle && len(deps) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(rt.ctx, rt.door.cfg.ConnectTimeout+2*time.Second)
		hives, err := rt.door.fleet.Candidates(ctx, "", fleet.Quiet{})
		if err == nil {
			_, err = rt.refresh(ctx, hives)
		}
		cancel()
		if err != nil {
			rt.door.log.Debug("refresh", "err", err)
		}
		rt.door.deploy.keep(rt.ctx, deps)
	}
}

// inUse lists the devices that hold a worker of g, or one being stopped,
// as "hive/device" (placement excludes them: one replica per device). The
// caller holds rt.mu.
func (rt *router) inUse(g *group) map[string]bool {
	out := map[string]bool{}
	for _, r := range g.replicas {
		out[r.hive+"/"+r.device] = true
	}
	for _, dev := range rt.retiring {
		out[dev] = true
	}
	return out
}

// replicaStat is what metrics read of one replica.
type replicaStat struct {
	model                string
	hive, worker, device string
	deployment           string
	slots, inflight      int
}

// close stops the refresh loop and waits for the placements in flight
// (their contexts end with the queen's).
func (rt *router) close(stop context.CancelFunc) {
	rt.mu.Lock()
	rt.closed = true
	rt.mu.Unlock()
	stop()
	rt.wg.Wait()
}

// counted adds the tokens a request generated on replica id (hive/worker).
func (rt *router) counted(id string, tokens int) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for _, g := range rt.groups {
		if r := g.replicas[id]; r != nil {
			r.generated += int64(tokens)
			return
		}
	}
}

// top is the door's part of rbee top: each model's queue and replicas,
// and by hive/worker the requests in flight and the tokens generated.
func (rt *router) top() (models []queenapi.TopModel, inFlight map[string]int, generated map[string]int64) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	inFlight, generated = map[string]int{}, map[string]int64{}
	for _, g := range rt.groups {
		m := queenapi.TopModel{Model: fleet.ShownName(g.spec.Raw), Embeddings: g.key.embeddings, Deployment: g.deployed, Waiting: len(g.queue)}
		for id, r := range g.replicas {
			m.Replicas++
			m.InFlight += r.inflight
			if r.ready {
				m.Ready++
				m.Slots += r.slots
			}
			inFlight[id] += r.inflight
			generated[id] += r.generated
		}
		models = append(models, m)
	}
	slices.SortFunc(models, func(a, b queenapi.TopModel) int { return strings.Compare(a.Model, b.Model) })
	return models, inFlight, generated
}

func (rt *router) stats() []replicaStat {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	var out []replicaStat
	for _, g := range rt.groups {
		name := cmp.Or(g.label, fleet.ShownName(g.spec.Raw))
		for _, r := range g.replicas {
			out = append(out, replicaStat{model: name, hive: r.hive, worker: r.worker, device: r.device, deployment: r.deployment, slots: r.slots, inflight: r.inflight})
		}
	}
	slices.SortFunc(out, func(a, b replicaStat) int {
		if a.hive+a.worker < b.hive+b.worker {
			return -1
		}
		return 1
	})
	return out
}

// describe names a replica for logs and errors.
func (r *replica) describe() string {
	return fmt.Sprintf("%s (hive %s, %s)", r.worker, r.hive, r.device)
}
