package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/scheduler"
	"github.com/rbee-dev/rbee/sse"
)

// LocalHive is the name of the hive on the queen's own machine.
const LocalHive = "localhost"

// me is the actor of the fleet's narration: the queen.
const me = "queen"

// ErrShuttingDown ends what is still running when the queen stops.
var ErrShuttingDown = errors.New("the queen is shutting down")

// Config configures a Fleet.
type Config struct {
	Home      rbee.Home     // ~/.rbee: sockets, logs, caches
	HiveBin   string        // rbee-hive, started for the local hive
	WorkerBin string        // rbee-worker, handed to the local hive
	EngineDir string        // engine bundle the local hive must use; "" = its worker catalog's
	KeepAlive time.Duration // idle workers stop after this (the hive enforces it)
	HiveArgs  []string      // extra flags for the local hive (tests: --nvml-library)
	SSH       SSH           // remote hives
	// OwnsLocalHive: the local agent is this queen's even when an earlier
	// queen of this home started it (one that was killed): Close stops it.
	OwnsLocalHive bool
	// ConnectTimeout bounds each wait for a hive's answer (dial, SSH
	// handshake, agent handshake, snapshot).
	ConnectTimeout time.Duration
	Scheduler      scheduler.Scheduler
	Log            *slog.Logger
	// EngineRegistry and EngineArchive: where the pinned engine bundle
	// comes from for a hive that has none (see queen.Config).
	EngineRegistry string
	EngineArchive  string
	// Changed is called when a hive's model catalog changed through the
	// queen (a pull, a push, an alias, a removal): the door looks again.
	Changed func()
}

// Fleet is the queen's view of its hives: one connection per hive, the
// snapshots, the model spec, planning and admission, pushes, engines and
// copies, and the worker registry those keep.
type Fleet struct {
	cfg     Config
	log     *slog.Logger
	db      *catalog.Queen
	pool    *pool
	plan    *planner
	shas    shaCache
	changed func()

	closing  chan struct{} // closed when the queen begins to stop
	once     sync.Once
	handover atomic.Bool // the local agent hands its workers over when it stops

	pushMu sync.Mutex
	pushes map[string]*pushCall // model pushes in flight, by hive and sha256

	mu       sync.Mutex
	workers  map[string]rbee.WorkerInfo // worker registry, by worker id
	contacts map[string]bool            // hives whose devices this queen has seen
	active   map[string]*workActivity   // jobs counted by hive/worker
	devices  map[string][]rbee.Device   // each hive's latest snapshot
}

// New returns the fleet over the queen's catalog db.
func New(cfg Config, db *catalog.Queen) *Fleet {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Scheduler == nil {
		cfg.Scheduler = scheduler.Basic{}
	}
	f := &Fleet{cfg: cfg, log: cfg.Log, db: db, changed: cfg.Changed, closing: make(chan struct{}),
		workers: map[string]rbee.WorkerInfo{}, contacts: map[string]bool{}, active: map[string]*workActivity{}, devices: map[string][]rbee.Device{}}
	if f.changed == nil {
		f.changed = func() {}
	}
	f.pool = newPool(cfg.ConnectTimeout, f.SetStatus, f.stopLocal)
	f.plan = &planner{sched: cfg.Scheduler, bound: cfg.ConnectTimeout + time.Second, estimate: f.Estimate, fresh: f.fresh}
	return f
}

// Reconnect connects, in the background, every SSH hive of the inventory
// the catalog knows (a queen that starts picks its fleet up again without
// waiting for a command); they show as connecting until then. Connects run
// a bounded number at a time.
func (f *Fleet) Reconnect(ctx context.Context) {
	inv, err := f.loadInventory()
	if err != nil {
		f.log.Warn("reconnect: inventory", "err", err)
		return
	}
	for _, h := range inv.Hives {
		if h.Disabled {
			continue
		}
		if _, err := f.db.Hive(ctx, h.Name); err != nil {
			continue // never added: nothing to pick up
		}
		f.pool.warm(h.Name, f.remoteConnector(h, false))
	}
}

// Stopping tells the fleet the queen is stopping: from now on a lost
// connection is not a hive's fault and is not recorded as one.
func (f *Fleet) Stopping() { f.once.Do(func() { close(f.closing) }) }

// HandOver makes Close leave this machine's workers running for the next
// queen's agent, which adopts them (an upgrade), instead of stopping them.
func (f *Fleet) HandOver() { f.handover.Store(true) }

// Close closes every hive connection (stopping the local agent this queen
// started, which stops its workers; remote agents keep theirs warm). It
// never waits on a stalled host.
func (f *Fleet) Close() {
	f.Stopping()
	f.pool.close()
}

// SetStatus records a hive's reachability in the catalog (hive ls reads
// it): the pool calls it the moment a connection is made or lost.
func (f *Fleet) SetStatus(name string, online bool, reason string) {
	select {
	case <-f.closing:
		return // shutting down is not a hive's fault
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if online {
		_ = f.db.SetStatus(ctx, name, "online", "", time.Now())
		// A hive back online brings its models: the door must not go on
		// with snapshots taken while it was away.
		f.changed()
		return
	}
	f.log.Warn("hive offline", "hive", name, "reason", reason)
	_ = f.db.SetStatus(ctx, name, "offline", reason, time.Time{})
}

// seen records what a snapshot found: the hive is online, its devices and
// agent, and the worker registry's view of it.
func (f *Fleet) seen(ctx context.Context, name string, hc *Conn, s Snapshot) {
	entry, err := f.db.Hive(ctx, name)
	if errors.Is(err, catalog.ErrNotFound) {
		// A hive of a hand-written inventory, reached for the first time.
		entry, _, err = f.resolveHive(ctx, name)
	}
	if err == nil {
		entry.Status, entry.StatusReason, entry.AgentVersion, entry.LastSeen = "online", "", hc.handshake.Version, time.Now()
		entry.Capabilities = map[string]string{"os": hc.handshake.OS, "arch": hc.handshake.Arch}
		_ = f.db.UpsertHive(ctx, entry)
		_ = f.db.SetDevices(ctx, name, s.Devices, time.Now())
	}
	f.mu.Lock()
	f.devices[name] = s.Devices
	f.mu.Unlock()
	f.syncWorkers(name, s.Workers)
}

// fresh reports whether this is the queen's first look at a hive's
// devices (they are narrated then).
func (f *Fleet) fresh(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.contacts[name] {
		return false
	}
	f.contacts[name] = true
	return true
}

// syncWorkers replaces the registry's view of a hive's workers.
func (f *Fleet) syncWorkers(hive string, ws []rbee.WorkerInfo) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, w := range f.workers {
		if w.Hive == hive {
			delete(f.workers, id)
		}
	}
	for _, w := range ws {
		w.Hive = hive
		f.workers[w.ID] = w
	}
	// Counts of workers gone with nothing in flight go with them.
	for k, a := range f.active {
		h, id, _ := strings.Cut(k, "/")
		if _, ok := f.workers[id]; h == hive && !ok && a.inFlight == 0 {
			delete(f.active, k)
		}
	}
}

// Workers lists the worker registry: every worker the queen knows of.
func (f *Fleet) Workers() []rbee.WorkerInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]rbee.WorkerInfo, 0, len(f.workers))
	for _, wi := range f.workers {
		out = append(out, wi)
	}
	return out
}

// workActivity is what the queen counted of a worker's jobs.
type workActivity struct {
	inFlight  int
	generated int64
}

// activity returns the count of hive/worker key, made on first use; f.mu
// is held.
func (f *Fleet) activity(key string) *workActivity {
	a := f.active[key]
	if a == nil {
		a = &workActivity{}
		f.active[key] = a
	}
	return a
}

// Activity returns, by hive/worker, the jobs in flight on each worker and
// the tokens it generated for jobs since the queen started.
func (f *Fleet) Activity() (inFlight map[string]int, generated map[string]int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	inFlight, generated = map[string]int{}, map[string]int64{}
	for k, a := range f.active {
		inFlight[k], generated[k] = a.inFlight, a.generated
	}
	return inFlight, generated
}

// WorkerCounts counts the worker registry by hive.
func (f *Fleet) WorkerCounts() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for _, w := range f.workers {
		out[w.Hive]++
	}
	return out
}

// Candidates are the hives a job may run on: the one it names, or this
// machine and every enabled hive of the inventory.
func (f *Fleet) Candidates(ctx context.Context, pinned string, ev Events) ([]Hive, error) {
	n, err := f.db.CountHives(ctx)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		if err := f.ensureLocalEntry(ctx); err != nil {
			return nil, err
		}
		ev.Narrate("hive_added", "the hive catalog is empty: added this machine as hive localhost")
	}
	if pinned != "" {
		if _, _, err := f.resolveHive(ctx, pinned); err != nil {
			return nil, err
		}
		return []Hive{&liveHive{f: f, name: pinned}}, nil
	}
	inv, err := f.loadInventory()
	if err != nil {
		return nil, err
	}
	hives := []Hive{&liveHive{f: f, name: LocalHive}}
	for _, h := range inv.Hives {
		if !h.Disabled && h.Name != LocalHive {
			hives = append(hives, &liveHive{f: f, name: h.Name, many: true})
		}
	}
	return hives, nil
}

// Resolve checks that name is a hive (the inventory, the catalog, or this
// machine), before anything reaches it.
func (f *Fleet) Resolve(ctx context.Context, name string) error {
	_, _, err := f.resolveHive(ctx, name)
	return err
}

// Live is hive name reached through the pool, unchecked (see Resolve).
// many: one of several candidates, left out at once when known down.
func (f *Fleet) Live(name string, many bool) Hive {
	return &liveHive{f: f, name: name, many: many}
}

// Conn returns the live connection to a hive, connecting it (one attempt
// for all callers) when there is none; narrate hears the connect.
func (f *Fleet) Conn(ctx context.Context, name string, ev Events) (*Conn, error) {
	return f.hiveConn(ctx, name, ev)
}

// Client is the agent's client of a connected hive.
func (f *Fleet) Client(ctx context.Context, name string) (*hiveapi.Client, error) {
	hc, err := f.hiveConn(ctx, name, Quiet{})
	if err != nil {
		return nil, err
	}
	return hc.client, nil
}

// Snapshots asks every candidate at once; each answer is bounded. With
// one candidate its failure is the job's; with several, the unreachable
// are left out (and said so) unless none answers.
func (f *Fleet) Snapshots(ctx context.Context, hives []Hive, ev Events) (map[string]Snapshot, error) {
	return f.plan.snapshots(ctx, hives, ev)
}

// Place plans job once across hives and admits it (see planner.place).
func (f *Fleet) Place(ctx context.Context, job PlaceJob, hives []Hive, ev Events) (Placement, error) {
	return f.plan.place(ctx, job, hives, ev)
}

// Stream sends a job's (or an operation's) events on its SSE stream.
type Stream struct {
	ID string // the job's id, set on every event; "" for an operation
	SW *sse.Writer
}

// Send sends ev, stamped with the job and the time.
func (e Stream) Send(ev rbee.Event) {
	if e.ID != "" {
		ev.Job = e.ID
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	_ = e.SW.Send(ev)
}

// Narrate sends one line of the queen's narration.
func (e Stream) Narrate(action, msg string) { e.Send(rbee.Narrate(me, action, msg)) }

// Relay runs the prompt on the placed hive and passes its stream on:
// tokens untouched (straight to a Stream), other events decoded to keep
// the worker registry.
func (f *Fleet) Relay(ctx context.Context, h Hive, ireq hiveapi.InferRequest, ev Events) error {
	name := h.Name()
	jev, _ := ev.(Stream)
	counted := "" // the worker this job is counted in flight on
	defer func() {
		if counted != "" {
			f.mu.Lock()
			f.activity(counted).inFlight--
			f.mu.Unlock()
		}
	}()
	err := h.Infer(ctx, ireq, func(evType string, data []byte) error {
		if evType == rbee.EventToken && jev.SW != nil {
			return jev.SW.SendRaw(evType, data) // the hot path: tokens pass untouched
		}
		var e rbee.Event
		if err := json.Unmarshal(data, &e); err != nil {
			return fmt.Errorf("hive %s: decode event: %w", name, err)
		}
		if e.Worker != nil {
			wi := *e.Worker
			wi.Hive = name
			f.mu.Lock()
			f.workers[wi.ID] = wi
			if counted == "" {
				counted = name + "/" + wi.ID
				f.activity(counted).inFlight++
			}
			f.mu.Unlock()
		}
		if e.Done != nil && e.Done.Worker != "" {
			f.mu.Lock()
			f.activity(name + "/" + e.Done.Worker).generated += int64(e.Done.CompletionTokens)
			f.mu.Unlock()
		}
		if e.Type == rbee.EventError && (e.Code == rbee.CodeWorkerCrashed || e.Code == rbee.CodeWorkerNotFound) {
			if s, err := h.Snapshot(context.WithoutCancel(ctx), Quiet{}); err == nil {
				f.syncWorkers(name, s.Workers)
			}
		}
		ev.Send(e)
		return nil
	})
	if err != nil && ctx.Err() == nil && rbee.CodeOf(err) == rbee.CodeHiveDown {
		f.SetStatus(name, false, err.Error())
	}
	return err
}

// Routes adds the owner's routes of the fleet: the hives, the models on
// them and their engines and worker types.
func (f *Fleet) Routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/hives", f.listHiveInfo)
	mux.HandleFunc("POST /v1/hives", f.addHive)
	mux.HandleFunc("GET /v1/hives/{name}", f.hiveStatus)
	mux.HandleFunc("DELETE /v1/hives/{name}", f.removeHive)
	mux.HandleFunc("GET /v1/hives/{name}/logs", f.hiveLogs)
	mux.HandleFunc("POST /v1/up", f.up)
	mux.HandleFunc("POST /v1/models/pull", f.pullModel)
	mux.HandleFunc("GET /v1/catalog", f.listModels)
	mux.HandleFunc("DELETE /v1/models/{key}", f.removeModel)
	mux.HandleFunc("POST /v1/engines", f.installEngine)
	mux.HandleFunc("POST /v1/worker-types", f.addWorkerType)
	mux.HandleFunc("DELETE /v1/worker-types/{name}", f.removeWorkerType)
	mux.HandleFunc("GET /v1/engines", f.listEngines)
	mux.HandleFunc("DELETE /v1/engines/{id}", f.removeEngine)
}
