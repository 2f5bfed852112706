package queen

import (
	"context"
	"encoding/json"
	"io"

	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/poll"
	"github.com/rbee-dev/rbee/scheduler"
)

// LocalHive is the name of the hive on the queen's own machine.
const LocalHive = "localhost"

// Config configures a Queen.
type Config struct {
	Home      string        // ~/.rbee: queen.db, the local hive's socket, logs
	HiveBin   string        // rbee-hive, started for the local hive
	WorkerBin string        // rbee-worker, handed to the local hive
	EngineDir string        // engine bundle, handed to the local hive
	KeepAlive time.Duration // idle workers stop after this (the hive enforces it)
	HiveArgs  []string      // extra flags for the local hive (tests: --nvml-library)
	SSH       SSH           // remote hives
	Scheduler scheduler.Scheduler
	Log       *slog.Logger
}

// Queen is the orchestrator.
type Queen struct {
	cfg     Config
	log     *slog.Logger
	db      *catalog.Queen
	sched   scheduler.Scheduler
	started time.Time

	mu      sync.Mutex
	state   string
	hives   map[string]*hiveConn       // hive registry
	workers map[string]rbee.WorkerInfo // worker registry, by worker id
	jobs    map[string]context.CancelFunc

	shaMu sync.Mutex
	shas  map[string]string // local model sha256 by path|size|mtime

	wakeMu   sync.Mutex // one hive wake at a time
	wg       sync.WaitGroup
	shutdown chan struct{}
	once     sync.Once
}

// hiveConn is a hive the queen can talk to.
type hiveConn struct {
	name      string
	client    *hiveapi.Client
	handshake hiveapi.Handshake
	cmd       *exec.Cmd     // set when this queen started the agent
	exited    chan struct{} // closed when that process exits
	devices   []rbee.Device
	remote    *remoteHive // set for hives reached over SSH
}

// New opens the hive catalog and returns a queen in the ready state.
func New(ctx context.Context, cfg Config) (*Queen, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Scheduler == nil {
		cfg.Scheduler = scheduler.Basic{}
	}
	for _, d := range []string{cfg.Home, filepath.Join(cfg.Home, "run"), filepath.Join(cfg.Home, "logs")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("queen home: %w", err)
		}
	}
	db, err := catalog.OpenQueen(ctx, filepath.Join(cfg.Home, "queen.db"))
	if err != nil {
		return nil, err
	}
	return &Queen{
		cfg: cfg, log: cfg.Log, db: db, sched: cfg.Scheduler, started: time.Now(), state: StateReady,
		hives: map[string]*hiveConn{}, workers: map[string]rbee.WorkerInfo{}, jobs: map[string]context.CancelFunc{},
		shas:     map[string]string{},
		shutdown: make(chan struct{}),
	}, nil
}

// Shutdown is closed when a client asked the queen to stop.
func (q *Queen) Shutdown() <-chan struct{} { return q.shutdown }

// Close cancels running jobs, stops the hive agents this queen started
// (which stop their workers), and closes the catalog: the cascading
// shutdown.
func (q *Queen) Close() error {
	q.mu.Lock()
	for _, cancel := range q.jobs {
		cancel()
	}
	hives := make([]*hiveConn, 0, len(q.hives))
	for _, h := range q.hives {
		hives = append(hives, h)
	}
	q.mu.Unlock()
	var wg sync.WaitGroup
	for _, h := range hives {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q.stopHive(h)
		}()
	}
	wg.Wait()
	q.wg.Wait()
	return q.db.Close()
}

// stopHive asks an agent this queen started to stop, then signals it.
func (q *Queen) stopHive(h *hiveConn) {
	defer h.client.Close()
	if h.remote != nil {
		// Remote agents keep running: they serve the next queen, and
		// their workers stay warm. Only the connection goes.
		h.remote.conn.Close()
		return
	}
	if h.cmd == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = h.client.Shutdown(ctx, false)
	cancel()
	select {
	case <-h.exited:
		return
	case <-time.After(15 * time.Second):
	}
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.exited:
	case <-time.After(10 * time.Second):
		_ = h.cmd.Process.Kill()
		<-h.exited
	}
}

// Handler returns the queen's HTTP API.
func (q *Queen) Handler() http.Handler {
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
	mux.HandleFunc("GET /v1/models", q.listModels)
	mux.HandleFunc("DELETE /v1/models/{key}", q.removeModel)
	mux.HandleFunc("POST /v1/engines", q.installEngine)
	mux.HandleFunc("POST /v1/worker-types", q.addWorkerType)
	mux.HandleFunc("GET /v1/engines", q.listEngines)
	mux.HandleFunc("DELETE /v1/engines/{id}", q.removeEngine)
	mux.HandleFunc("GET /v1/workers", q.listWorkers)
	mux.HandleFunc("POST /v1/shutdown", func(w http.ResponseWriter, r *http.Request) {
		q.once.Do(func() { close(q.shutdown) })
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, rbee.CodeBadRequest, fmt.Sprintf("no route %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func (q *Queen) health(w http.ResponseWriter, r *http.Request) {
	q.mu.Lock()
	h := Health{Service: ServiceName, State: q.state, Version: rbee.Version, Protocol: rbee.ProtocolVersion,
		PID: os.Getpid(), UptimeS: time.Since(q.started).Seconds(), Jobs: len(q.jobs)}
	q.mu.Unlock()
	if h.State == StateReady {
		hs, err := q.db.Hives(r.Context())
		if err == nil {
			var down []string
			for _, hv := range hs {
				if hv.Status == "offline" {
					down = append(down, hv.Name)
				}
			}
			if len(down) > 0 {
				h.State, h.Reason = StateDegraded, "unreachable hives: "+strings.Join(down, ", ")
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
		writeErr(w, http.StatusNotFound, rbee.CodeBadRequest, "no running job "+r.PathValue("id"))
		return
	}
	cancel()
	w.WriteHeader(http.StatusNoContent)
}

func (q *Queen) listWorkers(w http.ResponseWriter, r *http.Request) {
	q.mu.Lock()
	out := make([]rbee.WorkerInfo, 0, len(q.workers))
	for _, wi := range q.workers {
		out = append(out, wi)
	}
	q.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"workers": out})
}

// localHive returns a connection to the local hive agent, starting the
// agent when it is not running. narrate reports the wake.
func (q *Queen) localHive(ctx context.Context, narrate func(action, msg string)) (*hiveConn, error) {
	q.wakeMu.Lock()
	defer q.wakeMu.Unlock()
	q.mu.Lock()
	h := q.hives[LocalHive]
	q.mu.Unlock()
	if h != nil {
		hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		hs, err := h.client.Handshake(hctx)
		cancel()
		if err == nil {
			h.handshake = hs
			return h, nil
		}
		q.log.Warn("local hive lost", "err", err)
	}
	sock := filepath.Join(q.cfg.Home, "run", "hive.sock")
	client := hiveapi.NewClient(LocalHive, hiveapi.UnixDialer(sock))
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	hs, err := client.Handshake(hctx)
	cancel()
	if err == nil {
		h = &hiveConn{name: LocalHive, client: client, handshake: hs}
	} else {
		narrate("hive_wake", "hive localhost is asleep, waking it")
		h, err = q.startLocalHive(ctx, client)
		if err != nil {
			client.Close()
			return nil, err
		}
		narrate("hive_awake", fmt.Sprintf("hive localhost is awake (rbee-hive %s, protocol %d, pid %d)", h.handshake.Version, h.handshake.Protocol, h.handshake.PID))
	}
	if h.handshake.Protocol != rbee.ProtocolVersion {
		return nil, rbee.Errorf(rbee.CodeHiveDown, "hive localhost speaks protocol %d, this queen %d; stop the old agent (kill %d)", h.handshake.Protocol, rbee.ProtocolVersion, h.handshake.PID)
	}
	q.mu.Lock()
	q.hives[LocalHive] = h
	q.mu.Unlock()
	return h, nil
}

// startLocalHive starts rbee-hive detached (its own session, so a Ctrl-C at
// the keeper's terminal does not reach it) and waits for its handshake.
func (q *Queen) startLocalHive(ctx context.Context, client *hiveapi.Client) (*hiveConn, error) {
	if q.cfg.HiveBin == "" {
		return nil, rbee.Errorf(rbee.CodeHiveDown, "no rbee-hive binary configured")
	}
	logPath := filepath.Join(q.cfg.Home, "logs", "hive-localhost.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start hive: %w", err)
	}
	args := []string{"serve", "--home", q.cfg.Home, "--name", LocalHive, "--worker-binary", q.cfg.WorkerBin,
		"--engine", q.cfg.EngineDir, "--keep-alive", q.cfg.KeepAlive.String()}
	cmd := exec.Command(q.cfg.HiveBin, append(args, q.cfg.HiveArgs...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, rbee.Errorf(rbee.CodeHiveDown, "start hive localhost (%s): %v", q.cfg.HiveBin, err)
	}
	h := &hiveConn{name: LocalHive, client: client, cmd: cmd, exited: make(chan struct{})}
	q.wg.Add(1)
	go func() {
		defer q.wg.Done()
		_ = cmd.Wait()
		logf.Close()
		close(h.exited)
	}()
	err = poll.Until(ctx, poll.Config{Timeout: 20 * time.Second}, func(ctx context.Context) (bool, error) {
		select {
		case <-h.exited:
			return false, poll.Permanent(fmt.Errorf("rbee-hive exited: %s", LastLogLine(logPath)))
		default:
		}
		hctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		hs, err := client.Handshake(hctx)
		if err != nil {
			return false, err
		}
		h.handshake = hs
		return true, nil
	})
	if err != nil {
		_ = cmd.Process.Kill()
		return nil, rbee.Errorf(rbee.CodeHiveDown, "hive localhost did not come up: %v (log: %s)", err, logPath)
	}
	return h, nil
}

// LastLogLine returns the last non-empty line of a log file, for error
// messages ("the queen exited: <why>").
func LastLogLine(path string) string {
	b, err := tailFile(path, 1)
	if err != nil {
		return err.Error()
	}
	return strings.TrimSpace(string(b))
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": rbee.Error{Code: code, Message: msg}})
}

// tailFile returns the last n non-empty lines of a file, reading at most
// its last 256 KiB: logs grow, errors should not read them whole.
func tailFile(p string, n int) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(st.Size()-256<<10, 0)
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && err != io.EOF {
		return nil, err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return []byte(strings.Join(lines, "\n") + "\n"), nil
}
