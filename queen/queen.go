package queen

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/queen/door"
	"github.com/rbee-dev/rbee/queen/fleet"
	"github.com/rbee-dev/rbee/queen/internal/reply"
	"github.com/rbee-dev/rbee/queen/split"
	"github.com/rbee-dev/rbee/queenapi"
	"github.com/rbee-dev/rbee/scheduler"
)

// LocalHive is the name of the hive on the queen's own machine.
const LocalHive = fleet.LocalHive

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
	SSH       fleet.SSH     // remote hives
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
	// ScaleWait is how long a deployment's requests may wait in the front
	// door's queue before it adds a replica (up to its max); default
	// door.DefaultScaleWait.
	ScaleWait time.Duration
	// DoorPull lets front-door clients name models to download (see
	// door.Config.Pull); off by default.
	DoorPull bool
	// RPCStall is how long a split's RPC server may owe its worker an
	// answer before it is taken for lost (split.DefaultStall).
	RPCStall time.Duration
}

// Queen is the orchestrator: it wires the fleet (the hives), the door
// (the OpenAI API) and the splitter, and runs the keeper's jobs.
type Queen struct {
	cfg     Config
	log     *slog.Logger
	db      *catalog.Queen
	fleet   *fleet.Fleet
	door    *door.Door
	splits  *split.Splitter
	started time.Time

	mu      sync.Mutex
	state   string
	jobs    map[string]context.CancelCauseFunc
	running sync.WaitGroup // jobs, for the drain at Close

	shutdown chan struct{}
	once     sync.Once
	closing  chan struct{} // closed when Close begins
}

// New opens the hive catalog and returns a queen in the ready state.
func New(ctx context.Context, cfg Config) (*Queen, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Grace <= 0 {
		cfg.Grace = 10 * time.Second
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
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
		jobs: map[string]context.CancelCauseFunc{}, shutdown: make(chan struct{}), closing: make(chan struct{}),
	}
	var dr *door.Door // the fleet tells the door of catalog changes
	q.fleet = fleet.New(fleet.Config{Home: cfg.Home, HiveBin: cfg.HiveBin, WorkerBin: cfg.WorkerBin, EngineDir: cfg.EngineDir,
		KeepAlive: cfg.KeepAlive, HiveArgs: cfg.HiveArgs, SSH: cfg.SSH, OwnsLocalHive: cfg.OwnsLocalHive,
		ConnectTimeout: cfg.ConnectTimeout, Scheduler: cfg.Scheduler, Log: cfg.Log,
		EngineRegistry: cfg.EngineRegistry, EngineArchive: cfg.EngineArchive,
		Changed: func() { dr.Stale() }}, db)
	q.splits = split.New(q.fleet, cfg.Log, cfg.RPCStall)
	dr = door.New(door.Config{QueueDepth: cfg.QueueDepth, QueueWait: cfg.QueueWait, ScaleWait: cfg.ScaleWait, KeepAlive: cfg.KeepAlive, Pull: cfg.DoorPull,
		ConnectTimeout: cfg.ConnectTimeout, RequestLog: cfg.Home.Log("requests"), Log: cfg.Log, Split: q.splits.Serve}, q.fleet, db)
	q.door = dr
	// The hives an earlier queen served are picked up again at once.
	q.fleet.Reconnect(ctx)
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
	q.fleet.Stopping()
	q.door.Quiesce()
	// Drain: running jobs and front-door requests get the grace period to
	// finish; then those left end with an explicit "shutting down" error.
	drained := make(chan struct{})
	go func() {
		q.running.Wait()
		q.door.Wait()
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
	q.door.Cancel(ErrShuttingDown)
	<-drained
	q.splits.Close()
	q.door.Close()
	q.fleet.Close()
	return q.db.Close()
}

// ErrShuttingDown ends the jobs still running when the queen stops.
var ErrShuttingDown = fleet.ErrShuttingDown

// ControlHandler serves the control plane: every admin route, for the
// owner only (see ListenControl, and RequireToken for TCP).
func (q *Queen) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", q.health)
	mux.HandleFunc("POST /v1/jobs", q.job)
	mux.HandleFunc("DELETE /v1/jobs/{id}", q.cancelJob)
	mux.HandleFunc("GET /v1/workers", q.listWorkers)
	mux.HandleFunc("GET /v1/top", q.top)
	q.fleet.Routes(mux)
	q.door.AdminRoutes(mux)
	q.door.Routes(mux) // the owner may use the front door here too
	mux.HandleFunc("POST /v1/shutdown", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("handover") == "1" {
			// A newer queen replaces this one: the local workers stay
			// loaded for its agent.
			q.fleet.HandOver()
		}
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
	q.door.Routes(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// OpenAI's error shape (a client of this port reads "type"), with
		// rbee's code and hint.
		reply.JSON(w, http.StatusNotFound, map[string]any{"error": map[string]any{
			"message": fmt.Sprintf("no route %s %s on the queen's TCP port", r.Method, r.URL.Path),
			"type":    "invalid_request_error", "param": nil, "code": rbee.CodeBadRequest,
			"hint": "the control plane is the owner's unix socket (" + "~/.rbee/run/queen.sock" + "); rbee uses it for you"}})
	})
	return mux
}

func notFound(w http.ResponseWriter, r *http.Request) {
	reply.Error(w, http.StatusNotFound, rbee.Errorf(rbee.CodeBadRequest, "no route %s %s", r.Method, r.URL.Path))
}

func (q *Queen) health(w http.ResponseWriter, r *http.Request) {
	q.mu.Lock()
	h := queenapi.Health{Service: queenapi.ServiceName, State: q.state, Version: rbee.Version, Protocol: rbee.ProtocolVersion,
		PID: os.Getpid(), UptimeS: time.Since(q.started).Seconds(), Jobs: len(q.jobs), Requests: q.door.InFlight(),
		GraceS: q.cfg.Grace.Seconds()}
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
	reply.JSON(w, http.StatusOK, h)
}

func (q *Queen) cancelJob(w http.ResponseWriter, r *http.Request) {
	q.mu.Lock()
	cancel, ok := q.jobs[r.PathValue("id")]
	q.mu.Unlock()
	if !ok {
		reply.Error(w, http.StatusNotFound, rbee.Errorf(rbee.CodeBadRequest, "no running job %s", r.PathValue("id")))
		return
	}
	cancel(context.Canceled)
	w.WriteHeader(http.StatusNoContent)
}

// top is the fleet as the queen knows it now, asking no hive: rbee top
// calls it every second.
func (q *Queen) top(w http.ResponseWriter, r *http.Request) {
	hives, err := q.fleet.HiveInfos(r.Context())
	if err != nil {
		reply.Error(w, http.StatusInternalServerError, err)
		return
	}
	models, doorIn, doorGen := q.door.Top()
	jobIn, jobGen := q.fleet.Activity()
	out := queenapi.Top{At: time.Now(), Hives: hives, Models: models, Workers: []queenapi.TopWorker{}}
	if out.Models == nil {
		out.Models = []queenapi.TopModel{}
	}
	if ds, err := q.door.Deployments(r.Context()); err == nil && len(ds) > 0 {
		out.Deployments = ds
	}
	for _, wi := range q.fleet.Workers() {
		k := wi.Hive + "/" + wi.ID
		out.Workers = append(out.Workers, queenapi.TopWorker{WorkerInfo: wi, InFlight: doorIn[k] + jobIn[k], Generated: doorGen[k] + jobGen[k]})
	}
	slices.SortFunc(out.Workers, func(a, b queenapi.TopWorker) int {
		return cmp.Or(strings.Compare(a.Hive, b.Hive), strings.Compare(a.ID, b.ID))
	})
	reply.JSON(w, http.StatusOK, out)
}

func (q *Queen) listWorkers(w http.ResponseWriter, r *http.Request) {
	reply.JSON(w, http.StatusOK, queenapi.Workers{Workers: q.fleet.Workers()})
}

// The fleet's and the door's names the CLI uses through the queen.
type (
	// SSH is how the queen reaches remote hives.
	SSH = fleet.SSH
	// APIKey is a key for the front door.
	APIKey = door.APIKey
)

// StatusInvalid is the status of a hive whose inventory entry has problems.
const StatusInvalid = fleet.StatusInvalid

// ValidateAdd refuses what must never reach a remote host or a file.
func ValidateAdd(r queenapi.AddHiveRequest) error { return fleet.ValidateAdd(r) }

// ReadAPIKeys reads the front door's keys file (see door.ReadAPIKeys).
func ReadAPIKeys(path string) ([]APIKey, error) { return door.ReadAPIKeys(path) }
