package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"sync"
	"syscall"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/bundle"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/gpu"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/internal/peer"
	"github.com/rbee-dev/rbee/modelfile"
	"github.com/rbee-dev/rbee/supervisor"
)

// Worker catalog types.
const (
	TypeWorker = "rbee-worker"
	TypeEngine = "engine-llama.cpp"
)

// DefaultCtxSize is the context a worker gets, and the models' estimates
// assume.
const DefaultCtxSize = 4096

// Config configures an Agent.
type Config struct {
	Name      string // hive name, for narration
	Home      string // ~/.rbee: catalogs, sockets, logs
	WorkerBin string // rbee-worker to register in the worker catalog
	// Sandbox is the program that runs RPC servers in a network namespace
	// of their own (rbee-hive itself: supervisor.SandboxCommand); "" runs
	// them on the host's loopback (tests of the agent alone).
	Sandbox   string
	EngineDir string        // engine bundle to register; "" = only those of the worker catalog
	KeepAlive time.Duration // idle workers stop after this; 0 = never
	CtxSize   int           // worker context size; 0 = DefaultCtxSize
	Threads   int           // CPU worker threads; 0 = the worker's default (one per physical core)
	// StallTimeout: a generating worker silent this long, that does not
	// answer a health probe either, is killed as hung. 0 =
	// $RBEE_WORKER_STALL, else DefaultStallTimeout.
	StallTimeout time.Duration
	GPU          gpu.Options
	Log          *slog.Logger
	// Fetch, when set, lets the agent install the pinned engine bundle
	// when none in its catalog fits a device (the local hive: the queen's
	// machine). Remote hives get theirs pushed instead.
	Fetch *EngineFetch
}

// Agent is the hive agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	db      *catalog.HiveDB
	sup     *supervisor.Supervisor
	vram    *vram
	started time.Time

	detectMu sync.Mutex    // one device detection at a time
	fetching chan struct{} // one engine install at a time (cap 1)
	engines  engineProbe   // the GPU bundles' devices, listed by their backends

	ctx      context.Context // ends at Close: stops the reaper
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	shutdown chan struct{} // closed when /v1/shutdown is called
	once     sync.Once
}

// Paths under the agent's home.
func SocketPath(home string) string { return rbee.Home(home).HiveSocket() }
func dbPath(home string) string     { return filepath.Join(home, "hive.db") }

// New opens the catalogs, registers the worker binary and engine bundle, and
// starts the keep-alive reaper. Close releases everything.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.CtxSize <= 0 {
		cfg.CtxSize = DefaultCtxSize
	}
	if cfg.Name == "" {
		cfg.Name = "localhost"
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = DefaultStallTimeout
		if v, err := time.ParseDuration(os.Getenv("RBEE_WORKER_STALL")); err == nil && v > 0 {
			cfg.StallTimeout = v
		}
	}
	for _, d := range []string{cfg.Home, rbee.Home(cfg.Home).RunDir(), rbee.Home(cfg.Home).LogDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("agent home: %w", err)
		}
	}
	db, err := catalog.OpenHive(ctx, dbPath(cfg.Home))
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Log, db: db, vram: newVRAM(2 * time.Minute), started: time.Now(), shutdown: make(chan struct{}),
		fetching: make(chan struct{}, 1)}
	a.engines.ttl, a.engines.listing = 2*time.Second, a.listEngineDevices
	if err := a.registerBinaries(ctx); err != nil {
		db.Close()
		return nil, err
	}
	a.sup = supervisor.New(supervisor.Config{
		Bin: cfg.WorkerBin, Engine: cfg.EngineDir, RunDir: rbee.Home(cfg.Home).RunDir(), LogDir: rbee.Home(cfg.Home).LogDir(),
		Threads: cfg.Threads, CtxSize: cfg.CtxSize, KeepAlive: cfg.KeepAlive, Log: cfg.Log, Reservations: a.vram,
		Sandbox: cfg.Sandbox,
	})
	if ids := a.sup.Adopt(ctx); len(ids) > 0 {
		cfg.Log.Info("adopted workers from the previous agent", "workers", ids)
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.sup.Reap(a.ctx)
	}()
	return a, nil
}

// registerBinaries records the worker binary and the engine bundle given
// (if any) in the worker catalog, with their checksums, so workers start
// from catalog paths.
func (a *Agent) registerBinaries(ctx context.Context) error {
	if a.cfg.WorkerBin == "" {
		return errors.New("agent: a worker binary is required (--worker-binary)")
	}
	sum, err := modelfile.Hash(ctx, a.cfg.WorkerBin)
	if err != nil {
		return fmt.Errorf("register worker binary: %w", err)
	}
	now := time.Now()
	if err := a.db.AddWorkerBinary(ctx, catalog.WorkerBinary{
		ID: TypeWorker + "-" + rbee.Version, Type: TypeWorker, Version: rbee.Version, Path: a.cfg.WorkerBin,
		SHA256: sum, Capabilities: []string{"openai"}, Added: now,
	}); err != nil {
		return err
	}
	if a.cfg.EngineDir == "" {
		return nil
	}
	// Sizes and names only: every file's checksum was verified when the
	// bundle was prepared or pushed, and hashing 30 MB at every start
	// would delay the handshake.
	m, err := bundle.Load(a.cfg.EngineDir)
	if err == nil {
		err = m.Quick(a.cfg.EngineDir)
	}
	if err != nil {
		return fmt.Errorf("register engine: %w", err)
	}
	msum, err := modelfile.Hash(ctx, filepath.Join(a.cfg.EngineDir, bundle.ManifestName))
	if err != nil {
		return fmt.Errorf("register engine: %w", err)
	}
	variant := bundle.Variant(m)
	return a.db.AddWorkerBinary(ctx, catalog.WorkerBinary{
		ID: TypeEngine + "-" + variant, Type: TypeEngine, Version: variant, Path: a.cfg.EngineDir,
		SHA256: msum, Capabilities: m.Backends, Added: now,
	})
}

// Shutdown is closed when a client asked the agent to stop.
func (a *Agent) Shutdown() <-chan struct{} { return a.shutdown }

// Close stops every worker and closes the catalogs.
func (a *Agent) Close() error {
	a.cancel()
	a.sup.StopAll(10 * time.Second)
	a.wg.Wait()
	return a.db.Close()
}

// Listen opens the agent's unix socket (mode 0600) under its home. A socket
// left by a dead agent is replaced; a live agent's is not.
func Listen(home string) (net.Listener, error) {
	path := SocketPath(home)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	// One agent per home, decided by a lock the kernel drops when the
	// process dies: two agents started at once must not both take the
	// socket (the second would unlink the first's).
	lock, err := os.OpenFile(filepath.Join(filepath.Dir(path), "hive.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("listen %s: another hive agent is running (it holds %s)", path, lock.Name())
	}
	ln, err := listenLocked(path)
	if err != nil {
		lock.Close()
		return nil, err
	}
	return &lockedListener{Listener: ln, lock: lock}, nil
}

// lockedListener holds the agent's lock for as long as it listens.
type lockedListener struct {
	net.Listener
	lock *os.File
}

func (l *lockedListener) Close() error {
	err := l.Listener.Close()
	l.lock.Close()
	return err
}

func listenLocked(path string) (net.Listener, error) {
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen %s: another hive agent is running", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("listen: remove stale socket: %w", err)
		}
	}
	ln, err := listenPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	return ln, nil
}

// listenPrivate listens on a unix socket of mode 0600. Not by the umask:
// it is the process's, and a directory another goroutine made meanwhile
// would lose its execute bits. A connection in the moment before the
// chmod is still refused by its peer uid (OwnerHandler, the relay).
func listenPrivate(path string) (net.Listener, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// OwnerHandler is Handler for the agent's socket: only its owner (and
// root) get through, told by the peer's uid (serve it with
// peer.Context as the server's ConnContext). sshd's forwards and the
// bridge run as the owner.
func (a *Agent) OwnerHandler() http.Handler {
	return peer.OwnerOnly(a.Handler(), func(w http.ResponseWriter, me int) {
		writeErr(w, http.StatusForbidden, rbee.CodeBadRequest, fmt.Sprintf("hive %s serves only its owner (uid %d)", a.cfg.Name, me))
	})
}

// Handler returns the hive API.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/handshake", a.handshake)
	mux.HandleFunc("GET /health", a.handshake)
	mux.HandleFunc("GET /v1/devices", a.devices)
	mux.HandleFunc("GET /v1/snapshot", a.snapshot)
	mux.HandleFunc("POST /v1/reservations", a.reserve)
	mux.HandleFunc("DELETE /v1/reservations/{id}", a.release)
	mux.HandleFunc("POST /v1/models", a.addModel)
	mux.HandleFunc("GET /v1/models", a.models)
	mux.HandleFunc("POST /v1/models/pull", a.pull)
	mux.HandleFunc("DELETE /v1/models/{key}", a.removeModel)
	mux.HandleFunc("GET /v1/workers", a.workers)
	mux.HandleFunc("GET /v1/peers/tcp", a.tcpPeer)
	mux.HandleFunc("POST /v1/engines", a.installEngine)
	mux.HandleFunc("POST /v1/worker-types", a.addWorkerType)
	mux.HandleFunc("DELETE /v1/worker-types/{name}", a.removeWorkerType)
	mux.HandleFunc("GET /v1/engines", a.listEngines)
	mux.HandleFunc("DELETE /v1/engines/{id}", a.removeEngine)
	mux.HandleFunc("DELETE /v1/workers/{id}", a.stopWorker)
	mux.HandleFunc("POST /v1/workers", a.startWorker)
	mux.HandleFunc("PUT /v1/workers/{id}/deployment", a.setDeployment)
	mux.HandleFunc("GET /v1/workers/{id}/wait", a.waitWorker)
	mux.HandleFunc("POST /v1/rpc", a.rpcLease)
	mux.HandleFunc("GET /v1/rpc", a.rpcList)
	mux.HandleFunc("POST /v1/infer", a.infer)
	mux.HandleFunc("POST /v1/openai/{endpoint...}", a.openai)
	mux.HandleFunc("POST /v1/shutdown", func(w http.ResponseWriter, r *http.Request) {
		// {"keep_workers": true} hands the workers over to the next agent
		// (an upgrade) instead of stopping them.
		var req hiveapi.ShutdownRequest
		_ = json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<10)).Decode(&req)
		if req.KeepWorkers {
			a.sup.Release()
		}
		a.once.Do(func() { close(a.shutdown) })
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, rbee.CodeBadRequest, fmt.Sprintf("no route %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func (a *Agent) handshake(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, hiveapi.Handshake{
		Protocol: rbee.ProtocolVersion, Version: rbee.Version, OS: runtime.GOOS, Arch: runtime.GOARCH,
		PID: os.Getpid(), Name: a.cfg.Name, Started: a.started,
	})
}

// detect reads the devices and applies the VRAM checker's reservations.
func (a *Agent) detect(ctx context.Context) (hiveapi.Devices, error) {
	a.detectMu.Lock()
	defer a.detectMu.Unlock()
	rep, err := a.detectLocked(ctx)
	if err != nil {
		return hiveapi.Devices{}, err
	}
	out := hiveapi.Devices{NVML: rep.NVML, Engines: rep.Engines}
	for _, d := range rep.Devices {
		d.RoomBytes = a.vram.room(d.ID, d.TotalBytes, d.FreeBytes)
		out.Devices = append(out.Devices, d)
	}
	return out, nil
}

// detected is what detectLocked found.
type detected struct {
	Devices []rbee.Device
	NVML    string
	Engines string // what listing the GPU bundles' devices said went wrong
	vkEnv   string // GGML_VK_VISIBLE_DEVICES that shows workers these devices
}

// detectLocked reads NVML's devices and the CPU, and the GPUs the
// installed GPU bundles' backends report (Vulkan, CUDA), merged.
func (a *Agent) detectLocked(ctx context.Context) (detected, error) {
	rep, err := gpu.Detect(ctx, a.cfg.GPU)
	if err != nil {
		return detected{}, fmt.Errorf("detect devices: %w", err)
	}
	eng, vk, note := a.engineDevices(ctx)
	return detected{Devices: mergeDevices(rep.Devices, eng), NVML: rep.NVML, Engines: note, vkEnv: vk}, nil
}

func (a *Agent) devices(w http.ResponseWriter, r *http.Request) {
	d, err := a.detect(r.Context())
	if err != nil {
		writeErr(w, http.StatusInternalServerError, rbee.CodeInternal, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// snapshot answers devices, workers and models at once.
func (a *Agent) snapshot(w http.ResponseWriter, r *http.Request) {
	d, err := a.detect(r.Context())
	if err != nil {
		writeErr(w, http.StatusInternalServerError, rbee.CodeInternal, err.Error())
		return
	}
	ms, err := a.db.Models(r.Context())
	if err != nil {
		writeErr(w, http.StatusInternalServerError, rbee.CodeInternal, err.Error())
		return
	}
	out := hiveapi.Snapshot{Devices: d, Workers: a.workerList(), Models: make([]hiveapi.Model, 0, len(ms))}
	for _, m := range ms {
		out.Models = append(out.Models, a.apiModel(m))
	}
	writeJSON(w, http.StatusOK, out)
}

// reserve is the VRAM checker: 204 with the reservation id, or 409 with the
// numbers.
func (a *Agent) reserve(w http.ResponseWriter, r *http.Request) {
	var req hiveapi.ReserveRequest
	if !readJSON(w, r, &req) {
		return
	}
	a.detectMu.Lock()
	defer a.detectMu.Unlock()
	rep, err := a.detectLocked(r.Context())
	if err != nil {
		writeErr(w, http.StatusInternalServerError, rbee.CodeInternal, err.Error())
		return
	}
	if strings.Contains(req.Device, ",") {
		a.reserveSplit(w, req, rep.Devices)
		return
	}
	for _, d := range rep.Devices {
		if d.ID != req.Device {
			continue
		}
		id, room, ok := a.vram.reserve(d.ID, req.Bytes, d.TotalBytes, d.FreeBytes)
		if !ok {
			writeJSON(w, http.StatusConflict, hiveapi.NoRoom{
				Error: rbee.Error{Code: rbee.CodeNoRoom, Message: fmt.Sprintf("%s (%s) has %s free, %s requested",
					d.ID, d.Name, rbee.Bytes(room), rbee.Bytes(req.Bytes))},
				RequestedBytes: req.Bytes, FreeBytes: room, Device: d.ID,
			})
			return
		}
		w.Header().Set(hiveapi.ReservationHeader, id)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	writeErr(w, http.StatusNotFound, rbee.CodeDeviceUnknown, fmt.Sprintf("hive %s has no device %q", a.cfg.Name, req.Device))
}

func (a *Agent) release(w http.ResponseWriter, r *http.Request) {
	if !a.vram.release(r.PathValue("id")) {
		writeErr(w, http.StatusNotFound, rbee.CodeBadRequest, "no reservation "+r.PathValue("id"))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// addModel registers a GGUF file on this host in the model catalog.
func (a *Agent) addModel(w http.ResponseWriter, r *http.Request) {
	var req hiveapi.AddModelRequest
	if !readJSON(w, r, &req) {
		return
	}
	m, err := a.AddModel(r.Context(), req)
	if err != nil {
		status := http.StatusInternalServerError
		switch rbee.CodeOf(err) {
		case rbee.CodeModelNotFound:
			status = http.StatusNotFound
		case rbee.CodeNotGGUF, rbee.CodeBadRequest:
			status = http.StatusUnprocessableEntity
		}
		writeError(w, status, err)
		return
	}
	writeJSON(w, http.StatusOK, m)
}

// AddModel inspects a local GGUF file and records it in the model catalog.
// A file already registered with the same size and mtime is not hashed again.
func (a *Agent) AddModel(ctx context.Context, req hiveapi.AddModelRequest) (hiveapi.Model, error) {
	if !filepath.IsAbs(req.Path) {
		return hiveapi.Model{}, rbee.Errorf(rbee.CodeBadRequest, "model path %q is not absolute", req.Path)
	}
	if err := checkAlias(req.Alias); err != nil {
		return hiveapi.Model{}, err
	}
	st, err := os.Stat(req.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return hiveapi.Model{}, rbee.Errorf(rbee.CodeModelNotFound, "model file %s does not exist on hive %s", req.Path, a.cfg.Name)
	}
	if err != nil {
		return hiveapi.Model{}, rbee.Errorf(rbee.CodeModelNotFound, "model file %s: %v", req.Path, err)
	}
	if st.IsDir() {
		return hiveapi.Model{}, rbee.Errorf(rbee.CodeNotGGUF, "model path %s is a directory; give a .gguf file", req.Path)
	}
	if old, err := a.db.Model(ctx, req.Path); err == nil && old.Path == req.Path && old.Size == st.Size() && !old.Added.Before(st.ModTime()) {
		if req.Alias == "" || old.Alias == req.Alias {
			return a.apiModel(old), nil
		}
		old.Alias = req.Alias // named now: rbee model pull FILE --alias
		m, err := a.db.AddModel(ctx, old)
		if err != nil {
			return hiveapi.Model{}, fmt.Errorf("add model: %w", err)
		}
		return a.apiModel(m), nil
	}
	info, err := modelfile.Inspect(ctx, req.Path, modelfile.Options{Hash: true})
	if errors.Is(err, modelfile.ErrNotGGUF) {
		return hiveapi.Model{}, rbee.Errorf(rbee.CodeNotGGUF, "%v", err)
	}
	if err != nil {
		return hiveapi.Model{}, rbee.Errorf(rbee.CodeModelNotFound, "inspect model: %v", err)
	}
	ref := req.Ref
	if ref == "" {
		ref = req.Path
	}
	m, err := a.db.AddModel(ctx, catalog.Model{
		Ref: ref, Alias: req.Alias, Path: req.Path, Size: info.Size, SHA256: info.SHA256, Format: "gguf",
		Arch: info.Arch, Quant: info.Quant, Params: info.Params, CtxTrain: info.CtxTrain,
		WeightsBytes: info.WeightsBytes, KVBytesPerTok: info.KVBytesPerTok, Added: time.Now(),
	})
	if err != nil {
		return hiveapi.Model{}, fmt.Errorf("add model: %w", err)
	}
	a.store().Verified(req.Path, info.SHA256) // just hashed: the first job need not hash it again
	return a.apiModel(m), nil
}

func (a *Agent) apiModel(m catalog.Model) hiveapi.Model {
	info := modelfile.Info{WeightsBytes: m.WeightsBytes, KVBytesPerTok: m.KVBytesPerTok}
	ctx := a.cfg.CtxSize
	if m.CtxTrain > 0 {
		ctx = min(ctx, m.CtxTrain)
	}
	return hiveapi.Model{
		ID: m.ID, Ref: m.Ref, Alias: m.Alias, Path: m.Path, Size: m.Size, SHA256: m.SHA256, Arch: m.Arch, Quant: m.Quant,
		Params: m.Params, CtxTrain: m.CtxTrain, WeightsBytes: m.WeightsBytes, KVBytesPerTok: m.KVBytesPerTok,
		EstimateBytes: info.Estimate(ctx), CtxSize: ctx, Added: m.Added, LastUsed: m.LastUsed,
	}
}

func (a *Agent) models(w http.ResponseWriter, r *http.Request) {
	ms, err := a.db.Models(r.Context())
	if err != nil {
		writeErr(w, http.StatusInternalServerError, rbee.CodeInternal, err.Error())
		return
	}
	out := make([]hiveapi.Model, 0, len(ms))
	for _, m := range ms {
		out = append(out, a.apiModel(m))
	}
	writeJSON(w, http.StatusOK, map[string]any{"models": out})
}

// removeModel forgets a model and deletes its file when it lives in the
// store (files registered from elsewhere are the user's and stay). A model
// a running worker holds is refused.
func (a *Agent) removeModel(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	m, err := a.db.Model(r.Context(), key)
	if err != nil {
		writeErr(w, http.StatusNotFound, rbee.CodeModelNotFound, fmt.Sprintf("no model %q on hive %s", key, a.cfg.Name))
		return
	}
	for _, wi := range a.sup.List() {
		if wi.ModelID == m.ID {
			writeError(w, http.StatusConflict, rbee.Errorf(rbee.CodeBadRequest, "worker %s is running %s on hive %s", wi.ID, key, a.cfg.Name).
				WithHint("it unloads after the keep-alive (RBEE_KEEP_ALIVE); rbee queen stop stops every worker now"))
			return
		}
	}
	if _, err := a.db.RemoveModel(r.Context(), m.ID); err != nil {
		writeErr(w, http.StatusInternalServerError, rbee.CodeInternal, err.Error())
		return
	}
	if strings.HasPrefix(m.Path, a.store().Dir+string(filepath.Separator)) {
		_ = a.store().Remove(m.SHA256)
	}
	w.WriteHeader(http.StatusNoContent)
}

// tcpPeer serves GET /v1/peers/tcp: the owner of a loopback connection's
// client socket on this machine (see hiveapi.TCPPeer).
func (a *Agent) tcpPeer(w http.ResponseWriter, r *http.Request) {
	local, err1 := net.ResolveTCPAddr("tcp", r.URL.Query().Get("local"))
	remote, err2 := net.ResolveTCPAddr("tcp", r.URL.Query().Get("remote"))
	if err1 != nil || err2 != nil {
		writeErr(w, http.StatusBadRequest, rbee.CodeBadRequest, "peers: local and remote must be HOST:PORT")
		return
	}
	uid, err := peer.TCPOwner(local, remote)
	if err != nil {
		writeErr(w, http.StatusNotFound, rbee.CodeBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, hiveapi.TCPPeer{UID: uid, Allowed: peer.Allowed(uid)})
}

func (a *Agent) workers(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, hiveapi.Workers{Workers: a.workerList()})
}

// workerList lists the running workers with the memory each holds.
func (a *Agent) workerList() []rbee.WorkerInfo {
	ws := a.sup.List()
	for i := range ws {
		ws[i].MemoryBytes = a.vram.WorkerBytes(ws[i].ID)
	}
	return ws
}

func (a *Agent) stopWorker(w http.ResponseWriter, r *http.Request) {
	stop := func(id string) error { return a.sup.Stop(id, 10*time.Second) }
	if r.URL.Query().Get("kill") == "1" {
		stop = a.sup.Kill
	}
	if err := stop(r.PathValue("id")); err != nil {
		writeErr(w, http.StatusNotFound, rbee.CodeWorkerNotFound, fmt.Sprintf("no worker %s on hive %s", r.PathValue("id"), a.cfg.Name))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	if err := dec.Decode(v); err != nil {
		writeErr(w, http.StatusBadRequest, rbee.CodeBadRequest, "request body: "+err.Error())
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]rbee.Error{"error": {Code: code, Message: msg}})
}

// writeError answers with err's code, message and hint: a hint raised
// here reaches the user's terminal through the queen.
func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]rbee.Error{"error": {Code: rbee.CodeOf(err), Message: err.Error(), Hint: rbee.HintOf(err)}})
}

func actor(name string) string { return "hive " + name }
