package queen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/queenapi"
	"github.com/rbee-dev/rbee/scheduler"
)

// LocalHive is the name of the hive on the queen's own machine.
const LocalHive = "localhost"

// DefaultConnectTimeout bounds how long an unresponsive hive can hold a
// job: dial and SSH handshake, the agent's handshake, one snapshot.
const DefaultConnectTimeout = 5 * time.Second

// DefaultSSHKeepalive is how long a connected host may stay silent before
// it is declared offline.
const DefaultSSHKeepalive = 15 * time.Second

// Config configures a Queen.
type Config struct {
	Home      rbee.Home     // ~/.rbee: queen.db, sockets, logs
	HiveBin   string        // rbee-hive, started for the local hive
	WorkerBin string        // rbee-worker, handed to the local hive
	EngineDir string        // engine bundle the local hive must use; "" = its worker catalog's
	KeepAlive time.Duration // idle workers stop after this (the hive enforces it)
	HiveArgs  []string      // extra flags for the local hive (tests: --nvml-library)
	SSH       SSH           // remote hives
	// OwnsLocalHive: the local agent is this queen's even when an earlier
	// queen of this home started it (one that was killed): Close stops it.
	// An ephemeral queen stops only what it started itself.
	OwnsLocalHive bool
	// Grace is how long running jobs may finish when the queen stops.
	// Default 10s.
	Grace time.Duration
	// ConnectTimeout bounds each wait for a hive's answer (dial, SSH
	// handshake, agent handshake, snapshot). Default DefaultConnectTimeout.
	ConnectTimeout time.Duration
	Scheduler      scheduler.Scheduler
	Log            *slog.Logger
	// Without EngineDir, a hive with no bundle that fits gets the pinned
	// one (the local hive installs it on first need; a remote host gets it
	// pushed), from EngineRegistry (a mirror; "" = enginefetch.Registry())
	// or EngineArchive (a local tarball or URL of the pinned package).
	EngineRegistry string
	EngineArchive  string
	// QueueDepth and QueueWait bound the front door's queue per model:
	// how many requests may wait for a free slot (the next gets 429) and
	// for how long (then 503). Defaults DefaultQueueDepth, DefaultQueueWait.
	QueueDepth int
	QueueWait  time.Duration
}

// Queen is the orchestrator.
type Queen struct {
	cfg     Config
	log     *slog.Logger
	db      *catalog.Queen
	pool    *pool
	plan    *planner
	metrics *metrics
	reqlog  *reqLog
	router  *router
	deploy  *deployer
	stop    context.CancelFunc // ends the router's loop and placements
	started time.Time
	shas    shaCache
	splits  splits // models spread over hives (split.go)

	mu       sync.Mutex
	state    string
	workers  map[string]rbee.WorkerInfo // worker registry, by worker id
	jobs     map[string]context.CancelCauseFunc
	running  sync.WaitGroup  // jobs, for the drain at Close
	contacts map[string]bool // hives whose devices this queen has seen

	shutdown chan struct{}
	once     sync.Once
	closing  chan struct{} // closed when Close begins
}

// New opens the hive catalog and returns a queen in the ready state.
func New(ctx context.Context, cfg Config) (*Queen, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Scheduler == nil {
		cfg.Scheduler = scheduler.Basic{}
	}
	if cfg.Grace <= 0 {
		cfg.Grace = 10 * time.Second
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.QueueDepth <= 0 {
		cfg.QueueDepth = DefaultQueueDepth
	}
	if cfg.QueueWait <= 0 {
		cfg.QueueWait = DefaultQueueWait
	}
	if cfg.SSH.Keepalive <= 0 {
		cfg.SSH.Keepalive = DefaultSSHKeepalive
	}
	if err := cfg.Home.Make(); err != nil {
		return nil, fmt.Errorf("queen: %w", err)
	}
	db, err := catalog.OpenQueen(ctx, cfg.Home.QueenDB())
	if err != nil {
		return nil, err
	}
	q := &Queen{
		cfg: cfg, log: cfg.Log, db: db, started: time.Now(), state: queenapi.StateReady,
		workers: map[string]rbee.WorkerInfo{}, jobs: map[string]context.CancelCauseFunc{}, contacts: map[string]bool{},
		shutdown: make(chan struct{}), closing: make(chan struct{}),
	}
	q.pool = newPool(cfg.ConnectTimeout, q.setStatus, q.stopLocal)
	q.metrics = newMetrics(q)
	q.reqlog = &reqLog{path: cfg.Home.Log("requests")}
	q.plan = &planner{sched: cfg.Scheduler, bound: cfg.ConnectTimeout + time.Second, estimate: q.estimate, fresh: q.fresh}
	rctx, stop := context.WithCancel(context.Background())
	q.stop = stop
	q.router = newRouter(rctx, q, cfg.QueueDepth, cfg.QueueWait)
	q.deploy = &deployer{rt: q.router, starting: map[string]bool{}, errs: map[string]string{}}
	q.router.wg.Add(1)
	go q.router.run()
	return q, nil
}

// Shutdown is closed when a client asked the queen to stop.
func (q *Queen) Shutdown() <-chan struct{} { return q.shutdown }

// Close cancels running jobs, closes every hive connection (stopping the
// local agent this queen started, which stops its workers; remote agents
// keep theirs warm) and closes the catalog: the cascading shutdown. It
// never waits on a stalled host.
func (q *Queen) Close() error {
	q.mu.Lock() // a job starting now either sees closing or is counted
	close(q.closing)
	q.mu.Unlock()
	// Drain: running jobs get the grace period to finish; then those
	// left end with an explicit "shutting down" error.
	drained := make(chan struct{})
	go func() {
		q.running.Wait()
		close(drained)
	}()
	t := time.NewTimer(q.cfg.Grace)
	select {
	case <-drained:
	case <-t.C:
	}
	t.Stop()
	q.mu.Lock()
	for _, cancel := range q.jobs {
		cancel(ErrShuttingDown)
	}
	q.mu.Unlock()
	<-drained
	q.splits.closeAll()
	q.router.close(q.stop)
	q.pool.close()
	q.reqlog.close()
	return q.db.Close()
}

// ErrShuttingDown ends the jobs still running when the queen stops.
var ErrShuttingDown = errors.New("the queen is shutting down")

// ControlHandler serves the control plane: every admin route, for the
// owner only (see ListenControl, and RequireToken for TCP).
func (q *Queen) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", q.health)
	mux.HandleFunc("POST /v1/jobs", q.job)
	mux.HandleFunc("DELETE /v1/jobs/{id}", q.cancelJob)
	mux.HandleFunc("GET /v1/hives", q.listHiveInfo)
	mux.HandleFunc("POST /v1/hives", q.addHive)
	mux.HandleFunc("GET /v1/hives/{name}", q.hiveStatus)
	mux.HandleFunc("DELETE /v1/hives/{name}", q.removeHive)
	mux.HandleFunc("GET /v1/hives/{name}/logs", q.hiveLogs)
	mux.HandleFunc("POST /v1/up", q.up)
	mux.HandleFunc("POST /v1/models/pull", q.pullModel)
	mux.HandleFunc("GET /v1/catalog", q.listModels)
	mux.HandleFunc("DELETE /v1/models/{key}", q.removeModel)
	mux.HandleFunc("POST /v1/engines", q.installEngine)
	mux.HandleFunc("POST /v1/worker-types", q.addWorkerType)
	mux.HandleFunc("DELETE /v1/worker-types/{name}", q.removeWorkerType)
	mux.HandleFunc("GET /v1/engines", q.listEngines)
	mux.HandleFunc("DELETE /v1/engines/{id}", q.removeEngine)
	mux.HandleFunc("GET /v1/workers", q.listWorkers)
	mux.HandleFunc("GET /v1/ps", q.ps)
	mux.HandleFunc("GET /v1/deployments", q.listDeployments)
	mux.HandleFunc("PUT /v1/deployments/{name}", q.putDeployment)
	mux.HandleFunc("DELETE /v1/deployments/{name}", q.removeDeployment)
	q.openaiRoutes(mux) // the owner may use the front door here too
	mux.HandleFunc("POST /v1/shutdown", func(w http.ResponseWriter, r *http.Request) {
		q.once.Do(func() { close(q.shutdown) })
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/", notFound)
	return mux
}

// PublicHandler serves the TCP listener: /health and the OpenAI-compatible
// front door (models, completions, chat completions), nothing
// administrative.
func (q *Queen) PublicHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", q.health)
	q.openaiRoutes(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, &rbee.Error{Code: rbee.CodeBadRequest,
			Message: fmt.Sprintf("no route %s %s on the queen's TCP port", r.Method, r.URL.Path),
			Hint:    "the control plane is the owner's unix socket (" + "~/.rbee/run/queen.sock" + "); rbee uses it for you"})
	})
	return mux
}

// openaiRoutes adds the OpenAI-compatible front door.
func (q *Queen) openaiRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/models", q.openaiModels)
	mux.HandleFunc("POST /v1/completions", q.openaiComplete("completions"))
	mux.HandleFunc("POST /v1/chat/completions", q.openaiComplete("chat/completions"))
	mux.HandleFunc("POST /v1/embeddings", q.openaiComplete("embeddings"))
	mux.Handle("GET /metrics", q.metrics.handler())
}

func notFound(w http.ResponseWriter, r *http.Request) {
	writeErr(w, http.StatusNotFound, rbee.Errorf(rbee.CodeBadRequest, "no route %s %s", r.Method, r.URL.Path))
}

func (q *Queen) health(w http.ResponseWriter, r *http.Request) {
	q.mu.Lock()
	h := queenapi.Health{Service: queenapi.ServiceName, State: q.state, Version: rbee.Version, Protocol: rbee.ProtocolVersion,
		PID: os.Getpid(), UptimeS: time.Since(q.started).Seconds(), Jobs: len(q.jobs)}
	q.mu.Unlock()
	if h.State == queenapi.StateReady {
		hs, err := q.db.Hives(r.Context())
		if err == nil {
			var down []string
			for _, hv := range hs {
				if hv.Status == "offline" {
					down = append(down, hv.Name)
				}
			}
			if len(down) > 0 {
				h.State, h.Reason = queenapi.StateDegraded, "unreachable hives: "+strings.Join(down, ", ")
			}
		}
	}
	writeJSON(w, http.StatusOK, h)
}

func (q *Queen) cancelJob(w http.ResponseWriter, r *http.Request) {
	q.mu.Lock()
	cancel, ok := q.jobs[r.PathValue("id")]
	q.mu.Unlock()
	if !ok {
		writeErr(w, http.StatusNotFound, rbee.Errorf(rbee.CodeBadRequest, "no running job %s", r.PathValue("id")))
		return
	}
	cancel(context.Canceled)
	w.WriteHeader(http.StatusNoContent)
}

func (q *Queen) listWorkers(w http.ResponseWriter, r *http.Request) {
	q.mu.Lock()
	out := make([]rbee.WorkerInfo, 0, len(q.workers))
	for _, wi := range q.workers {
		out = append(out, wi)
	}
	q.mu.Unlock()
	writeJSON(w, http.StatusOK, queenapi.Workers{Workers: out})
}

// setStatus records a hive's reachability in the catalog (hive ls reads
// it): the pool calls it the moment a connection is made or lost.
func (q *Queen) setStatus(name string, online bool, reason string) {
	select {
	case <-q.closing:
		return // shutting down is not a hive's fault
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if online {
		_ = q.db.SetStatus(ctx, name, "online", "", time.Now())
		return
	}
	q.log.Warn("hive offline", "hive", name, "reason", reason)
	_ = q.db.SetStatus(ctx, name, "offline", reason, time.Time{})
}

// seen records what a snapshot found: the hive is online, its devices and
// agent, and the worker registry's view of it.
func (q *Queen) seen(ctx context.Context, name string, hc *hiveConn, s Snapshot) {
	entry, err := q.db.Hive(ctx, name)
	if errors.Is(err, catalog.ErrNotFound) {
		// A hive of a hand-written inventory, reached for the first time.
		entry, _, err = q.resolveHive(ctx, name)
	}
	if err == nil {
		entry.Status, entry.StatusReason, entry.AgentVersion, entry.LastSeen = "online", "", hc.handshake.Version, time.Now()
		entry.Capabilities = map[string]string{"os": hc.handshake.OS, "arch": hc.handshake.Arch}
		_ = q.db.UpsertHive(ctx, entry)
		_ = q.db.SetDevices(ctx, name, s.Devices, time.Now())
	}
	q.syncWorkers(name, s.Workers)
}

// fresh reports whether this is the queen's first look at a hive's
// devices (they are narrated then).
func (q *Queen) fresh(name string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.contacts[name] {
		return false
	}
	q.contacts[name] = true
	return true
}

// syncWorkers replaces the registry's view of a hive's workers.
func (q *Queen) syncWorkers(hive string, ws []rbee.WorkerInfo) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for id, w := range q.workers {
		if w.Hive == hive {
			delete(q.workers, id)
		}
	}
	for _, w := range ws {
		w.Hive = hive
		q.workers[w.ID] = w
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// writeErr answers with rbee's error shape: code, message and hint.
func writeErr(w http.ResponseWriter, status int, err error) {
	e := rbee.Error{Code: rbee.CodeOf(err), Message: err.Error(), Hint: rbee.HintOf(err)}
	writeJSON(w, status, map[string]any{"error": e})
}
