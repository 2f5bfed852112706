package door

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/queen/fleet"
	"github.com/rbee-dev/rbee/queenapi"
)

// Fleet is what the door needs of the hives: the candidates and their
// snapshots, a placement as `rbee infer` would make it, the agent of a
// hive to send a request to, and the worker registry for the metrics.
// *fleet.Fleet is the real one; tests fake it.
type Fleet interface {
	Candidates(ctx context.Context, pinned string, ev fleet.Events) ([]fleet.Hive, error)
	Resolve(ctx context.Context, name string) error
	Live(name string, many bool) fleet.Hive
	Snapshots(ctx context.Context, hives []fleet.Hive, ev fleet.Events) (map[string]fleet.Snapshot, error)
	Place(ctx context.Context, job fleet.PlaceJob, hives []fleet.Hive, ev fleet.Events) (fleet.Placement, error)
	ParseModel(ctx context.Context, raw string) (*fleet.ModelSpec, error)
	Client(ctx context.Context, hive string) (*hiveapi.Client, error)
	WorkerCounts() map[string]int
}

// Store is the part of the queen's catalog the door reads and writes: the
// deployments, and the hives for the metrics. *catalog.Queen is it.
type Store interface {
	Deployments(ctx context.Context) ([]catalog.Deployment, error)
	PutDeployment(ctx context.Context, d catalog.Deployment) error
	RemoveDeployment(ctx context.Context, name string) error
	Hives(ctx context.Context) ([]catalog.Hive, error)
}

// Defaults of the front door's queue (queen serve --queue-depth,
// --queue-wait).
const (
	// DefaultQueueDepth is how many requests per model may wait for a
	// free slot; the next one is answered 429 at once.
	DefaultQueueDepth = 128
	// DefaultQueueWait is how long a request may wait for a free slot
	// before it is answered 503: as long as OpenAI's SDKs wait for an
	// answer (10 minutes), so a burst a busy host serves in turn is
	// served, not refused (llama-server has no bound at all).
	DefaultQueueWait = 10 * time.Minute
)

// Config configures a Door.
type Config struct {
	// QueueDepth and QueueWait bound the queue per model: how many
	// requests may wait for a free slot (the next gets 429) and for how
	// long (then 503). Defaults DefaultQueueDepth, DefaultQueueWait.
	QueueDepth int
	QueueWait  time.Duration
	// ScaleWait is how long a deployment's first queued request may wait
	// before the door adds a replica (up to the deployment's max) on a
	// free device. Default DefaultScaleWait.
	ScaleWait time.Duration
	// KeepAlive is the hives' keep-alive (rbee ps says when an idle
	// worker unloads); a deployment's replicas above its min go when idle
	// this long (0: they stay).
	KeepAlive time.Duration
	// ConnectTimeout bounds the background refresh of the hives' workers
	// (with two seconds more).
	ConnectTimeout time.Duration
	// Pull lets door clients name a reference (hf:…, https://…) no hive
	// holds, which the queen then downloads (--door-pull). Off, a client
	// can only use what the fleet has.
	Pull bool
	// RequestLog is the request log's file (JSON lines).
	RequestLog string
	// Split serves a model no single device holds from one worker split
	// across hives (the queen's splitter); nil: such a model is refused.
	Split func(ctx context.Context, spec *fleet.ModelSpec, snaps map[string]fleet.Snapshot, device, deployment string, cause error) (fleet.SplitWorker, error)
	Log   *slog.Logger
}

// Door is the OpenAI-compatible front door: its routes, the router and
// queue per model, the deployments, the API keys' model limits, the
// metrics and the request log.
type Door struct {
	cfg     Config
	fleet   Fleet
	db      Store
	log     *slog.Logger
	router  *router
	deploy  *deployer
	metrics *metrics
	reqlog  *reqLog
	stop    context.CancelFunc // ends the router's loop and placements

	mu       sync.Mutex
	closing  bool                                      // new requests are refused
	inflight map[*http.Request]context.CancelCauseFunc // requests being served
	running  sync.WaitGroup
}

// New starts the door's router (its refresh loop runs until Close).
func New(cfg Config, f Fleet, db Store) *Door {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.QueueDepth <= 0 {
		cfg.QueueDepth = DefaultQueueDepth
	}
	if cfg.QueueWait <= 0 {
		cfg.QueueWait = DefaultQueueWait
	}
	if cfg.ScaleWait <= 0 {
		cfg.ScaleWait = DefaultScaleWait
	}
	dr := &Door{cfg: cfg, fleet: f, db: db, log: cfg.Log, reqlog: &reqLog{path: cfg.RequestLog},
		inflight: map[*http.Request]context.CancelCauseFunc{}}
	dr.metrics = newMetrics(dr)
	rctx, stop := context.WithCancel(context.Background())
	dr.stop = stop
	dr.router = newRouter(rctx, dr, cfg.QueueDepth, cfg.QueueWait)
	dr.deploy = &deployer{rt: dr.router, starting: map[string]bool{}, errs: map[string]string{}, kept: map[string]keptDeployment{},
		last: map[string]queenapi.ScaleEvent{}, retryAt: map[string]time.Time{}}
	dr.router.wg.Add(1)
	go dr.router.run()
	return dr
}

// ErrShuttingDown ends the requests still served when the queen's grace
// period is over.
var ErrShuttingDown = fleet.ErrShuttingDown

// begin counts a request in flight until done is called; its context is
// cancelled with ErrShuttingDown by Cancel. Once Quiesce was called no
// request begins (ok is false).
func (dr *Door) begin(r *http.Request) (ctx context.Context, done func(), ok bool) {
	ctx, cancel := context.WithCancelCause(r.Context())
	dr.mu.Lock()
	defer dr.mu.Unlock()
	if dr.closing {
		cancel(nil)
		return nil, nil, false
	}
	dr.inflight[r] = cancel
	dr.running.Add(1)
	return ctx, func() {
		dr.mu.Lock()
		delete(dr.inflight, r)
		dr.mu.Unlock()
		cancel(nil)
		dr.running.Done()
	}, true
}

// InFlight is how many requests the door is serving now (the queen's
// health counts them: a queen serving streams is not idle).
func (dr *Door) InFlight() int {
	dr.mu.Lock()
	defer dr.mu.Unlock()
	return len(dr.inflight)
}

// Quiesce refuses new requests (503, the queen is shutting down); those
// in flight go on.
func (dr *Door) Quiesce() {
	dr.mu.Lock()
	dr.closing = true
	dr.mu.Unlock()
}

// Wait returns when no request is in flight any more.
func (dr *Door) Wait() { dr.running.Wait() }

// Cancel ends every request in flight with cause: a stream gets an error
// event saying it, a request not yet answered a 503.
func (dr *Door) Cancel(cause error) {
	dr.mu.Lock()
	defer dr.mu.Unlock()
	for _, cancel := range dr.inflight {
		cancel(cause)
	}
}

// Close stops the refresh loop, waits for the placements in flight and
// closes the request log.
func (dr *Door) Close() {
	dr.router.close(dr.stop)
	dr.reqlog.close()
}

// Top is the door's part of rbee top: each model's queue and replicas,
// and by hive/worker the requests in flight and the tokens generated.
func (dr *Door) Top() (models []queenapi.TopModel, inFlight map[string]int, generated map[string]int64) {
	return dr.router.top()
}

// Deployments is the deployments' state as the door holds it (no hive is
// asked): replicas, min-max, the last scale event.
func (dr *Door) Deployments(ctx context.Context) ([]queenapi.Deployment, error) {
	return dr.deploy.status(ctx)
}

// Stale makes the next lookup take fresh snapshots: a hive's catalog
// changed through the queen (a pull, a push, an alias, a removal).
func (dr *Door) Stale() { dr.router.stale() }

// Routes adds the door's public routes: OpenAI's models, completions,
// chat completions, embeddings and responses, llama-server's tokenizer,
// Ollama's API, and the metrics.
func (dr *Door) Routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/models", dr.openaiModels)
	mux.HandleFunc("GET /v1/models/{id...}", dr.openaiModel)
	// llama-server's tokenizer routes, at its paths; the body's "model"
	// picks the replica as for a completion.
	mux.HandleFunc("POST /tokenize", dr.openaiComplete("tokenize"))
	mux.HandleFunc("POST /detokenize", dr.openaiComplete("detokenize"))
	mux.HandleFunc("POST /v1/completions", dr.openaiComplete("completions"))
	mux.HandleFunc("POST /v1/chat/completions", dr.openaiComplete("chat/completions"))
	mux.HandleFunc("POST /v1/embeddings", dr.openaiComplete("embeddings"))
	mux.HandleFunc("POST /v1/responses", dr.responses)
	// Ollama's API, for apps built for Ollama.
	mux.HandleFunc("GET /api/tags", dr.ollamaTags)
	mux.HandleFunc("POST /api/show", dr.ollamaShow)
	mux.HandleFunc("POST /api/chat", dr.ollamaComplete(true))
	mux.HandleFunc("POST /api/generate", dr.ollamaComplete(false))
	mux.HandleFunc("POST /api/embed", dr.ollamaEmbed)
	mux.HandleFunc("GET /api/ps", dr.ollamaPS)
	mux.HandleFunc("GET /api/version", ollamaVersionRoute)
	mux.HandleFunc("GET /{$}", ollamaRoot) // GET serves HEAD too
	mux.HandleFunc("POST /api/pull", dr.ollamaPull)
	for _, route := range []string{"POST /api/push", "POST /api/create", "POST /api/copy", "DELETE /api/delete", "POST /api/blobs/{digest}", "HEAD /api/blobs/{digest}"} {
		mux.HandleFunc(route, ollamaManage)
	}
	mux.Handle("GET /metrics", dr.metrics.handler())
}

// IsRoute reports whether path is one of the door's public routes (those
// Routes adds): the queen's TCP port serves them to API key holders.
func IsRoute(path string) bool {
	switch path {
	case "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/tokenize", "/detokenize", "/metrics",
		"/api/tags", "/api/show", "/api/chat", "/api/generate", "/api/embed", "/api/ps", "/api/version",
		"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete":
		return true
	}
	return strings.HasPrefix(path, "/v1/models/") || strings.HasPrefix(path, "/api/blobs/")
}

// AdminRoutes adds the owner's routes of the door: rbee ps and the
// deployments.
func (dr *Door) AdminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/ps", dr.ps)
	mux.HandleFunc("GET /v1/deployments", dr.listDeployments)
	mux.HandleFunc("PUT /v1/deployments/{name}", dr.putDeployment)
	mux.HandleFunc("DELETE /v1/deployments/{name}", dr.removeDeployment)
}
