package supervisor

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/internal/proc"
)

// ErrWorkerNotFound means no running worker has that id.
var ErrWorkerNotFound = errors.New("worker not found")

// Reservations is the VRAM checker's side of a worker's life: the room
// reserved for it is tied to it at start, counted as allocated once it is
// ready, and given back when it exits.
type Reservations interface {
	Attach(reservation, worker string)
	Loaded(worker string)
	ReleaseWorker(worker string)
	// WorkerBytes is what a worker's reservations hold: saved for the
	// next agent, which charges it again with Restore when it adopts the
	// worker.
	WorkerBytes(worker string) uint64
	Restore(worker, device string, bytes uint64)
}

// Config configures a Supervisor.
type Config struct {
	Bin            string        // rbee-worker
	Engine         string        // engine bundle directory, unless a Spec names another
	RunDir, LogDir string        // sockets and the state file; one log per worker
	Threads        int           // CPU worker threads; 0 = the worker's default
	CtxSize        int           // worker context size
	KeepAlive      time.Duration // Reap unloads workers idle this long; 0 = never
	Log            *slog.Logger
	Reservations   Reservations  // nil = none
	ReadyTimeout   time.Duration // how long a worker may take to be ready; 0 = 2 minutes
	// Sandbox is the program whose SandboxCommand runs an RPC server in a
	// network namespace of its own (the hive agent's own binary); "" runs
	// it on this machine's loopback, where any local user reaches it.
	Sandbox string
}

// Spec is what a worker is started with.
type Spec struct {
	ModelID, ModelPath string
	Device             string // "cpu", "gpuN", or "gpu0,gpu1" split across them
	// Backend is the engine's name of Device ("Vulkan0", "CUDA1",
	// "Vulkan0,Vulkan1"), what rbee-worker --device takes; "" for a GPU
	// known by its NVML index alone (the worker sees only that GPU).
	Backend string
	// Env is what the worker needs to see Backend's devices as they were
	// listed (GGML_VK_VISIBLE_DEVICES=0,1).
	Env         []string
	Reservation string // the VRAM reservation the worker takes over; "" = none
	Engine      string // engine bundle directory; "" = Config.Engine
	// Slots and CtxSize size the worker (parallel sequences, context
	// tokens per sequence); 0 = one slot of Config.CtxSize, what a
	// reservation for one context covers.
	Slots, CtxSize int
	Embeddings     bool   // serve /v1/embeddings (rbee-worker --embeddings)
	Deployment     string // kept loaded for this deployment (see SetDeployment)
	// RPC lists llama.cpp RPC servers ("127.0.0.1:PORT") the worker
	// offloads layers to (rbee-worker --rpc): a split worker.
	RPC []string
	// TensorSplit is each device's share of the layers with RPC, this
	// device first (rbee-worker --tensor-split); nil = by free memory.
	TensorSplit []float64
}

// Supervisor starts, tracks and stops worker processes.
type Supervisor struct {
	cfg Config

	mu       sync.Mutex
	workers  map[string]*Worker
	next     int
	released bool           // handed over to the next agent: stop nothing
	wg       sync.WaitGroup // exit watchers and stdout readers

	ensureMu sync.Mutex
	starts   map[Key]*startCall

	stateMu sync.Mutex // one writer of the state file at a time

	rpc rpcState // llama.cpp RPC servers: never handed over, never adopted
}

// New returns a Supervisor with no workers; Adopt takes over those an
// earlier one left running.
func New(cfg Config) *Supervisor {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Reservations == nil {
		cfg.Reservations = noReservations{}
	}
	cfg.ReadyTimeout = cmp.Or(cfg.ReadyTimeout, 2*time.Minute)
	return &Supervisor{cfg: cfg, workers: map[string]*Worker{}}
}

type noReservations struct{}

func (noReservations) Attach(string, string)          {}
func (noReservations) Loaded(string)                  {}
func (noReservations) ReleaseWorker(string)           {}
func (noReservations) WorkerBytes(string) uint64      { return 0 }
func (noReservations) Restore(string, string, uint64) {}

// newID returns a worker id no tracked worker has (an adopted worker's id
// carries its agent's pid, which this one may share).
func (s *Supervisor) newID(prefix string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		s.next++
		id := fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), s.next)
		if _, taken := s.workers[id]; !taken {
			return id
		}
	}
}

// Start launches an rbee-worker and waits until it is ready, ctx bounding
// the wait. On failure the process is gone and the error says why.
func (s *Supervisor) Start(ctx context.Context, spec Spec) (*Worker, error) {
	id := s.newID("w")
	socket := filepath.Join(s.cfg.RunDir, id+".sock")
	args := []string{
		"--model", spec.ModelPath, "--engine", cmp.Or(spec.Engine, s.cfg.Engine), "--listen", "unix:" + socket,
		"--id", id, "--ctx-size", strconv.Itoa(cmp.Or(spec.CtxSize, s.cfg.CtxSize)), "--slots", strconv.Itoa(max(spec.Slots, 1)),
	}
	if spec.Embeddings {
		args = append(args, "--embeddings")
	}
	env := os.Environ()
	if len(spec.RPC) > 0 {
		// ggml tries to start gdb on an abort (a lost RPC server) without it.
		args = append(args, "--rpc", strings.Join(spec.RPC, ","))
		if len(spec.TensorSplit) > 0 {
			fs := make([]string, len(spec.TensorSplit))
			for i, f := range spec.TensorSplit {
				fs[i] = strconv.FormatFloat(f, 'g', -1, 64)
			}
			args = append(args, "--tensor-split", strings.Join(fs, ","))
		}
		env = append(env, "GGML_NO_BACKTRACE=1")
	}
	env = append(env, spec.Env...)
	switch {
	case spec.Device == "cpu":
		args = append(args, "--device", "cpu")
		if s.cfg.Threads > 0 {
			args = append(args, "--threads", strconv.Itoa(s.cfg.Threads))
		}
	case spec.Backend != "":
		// Named as the engine listed them: CUDA devices in PCI bus order,
		// as NVML numbers them.
		args = append(args, "--device", spec.Backend)
		env = append(env, "CUDA_DEVICE_ORDER=PCI_BUS_ID")
		if len(spec.RPC) == 0 && len(spec.TensorSplit) > 0 {
			fs := make([]string, len(spec.TensorSplit))
			for i, f := range spec.TensorSplit {
				fs[i] = strconv.FormatFloat(f, 'g', -1, 64)
			}
			args = append(args, "--tensor-split", strings.Join(fs, ","))
		}
	default:
		// The worker sees only its GPU, numbered as NVML numbers them.
		idx := spec.Device[len("gpu"):]
		args = append(args, "--device", "auto")
		env = append(env, "CUDA_DEVICE_ORDER=PCI_BUS_ID", "CUDA_VISIBLE_DEVICES="+idx)
	}
	// stdout is a pipe the worker announces itself on; stderr is the log
	// file itself, not a pipe: the worker outlives an agent that hands
	// over to a new version, and must not write into a pipe nobody reads.
	announce, stdout, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start worker: %w", err)
	}
	p, err := proc.Start(s.cfg.Bin, args, proc.Options{
		Log: filepath.Join(s.cfg.LogDir, id+".log"), Env: env, Setpgid: true, Stdout: stdout,
	})
	stdout.Close()
	if err != nil {
		announce.Close()
		return nil, fmt.Errorf("start worker: %w", err)
	}
	now := time.Now()
	w := &Worker{
		info: rbee.WorkerInfo{
			ID: id, ModelID: spec.ModelID, Model: spec.ModelPath, Device: spec.Device,
			PID: p.PID(), State: "starting", Started: now, LastUsed: now, RPC: spec.RPC,
			Slots: max(spec.Slots, 1), Embeddings: spec.Embeddings, Deployment: spec.Deployment,
		},
		proc: p, socket: socket, client: unixClient(socket),
	}
	ready := make(chan string, 1) // the device it announced
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer announce.Close()
		readAnnouncements(announce, ready)
	}()
	s.track(w, spec.Reservation)

	timeout := time.NewTimer(s.cfg.ReadyTimeout)
	defer timeout.Stop()
	select {
	case dev := <-ready:
		s.cfg.Log.Info("worker ready", "worker", id, "pid", w.info.PID, "device", dev, "ms", time.Since(now).Milliseconds())
	case <-p.Exited():
		return nil, rbee.Errorf(rbee.CodeWorkerFailed, "%s", w.ExitReason())
	case <-ctx.Done():
		p.Stop(5 * time.Second)
		return nil, ctx.Err()
	case <-timeout.C:
		p.Stop(5 * time.Second)
		return nil, rbee.Errorf(rbee.CodeWorkerFailed, "worker %s not ready after %s; its log: %s", id, s.cfg.ReadyTimeout, p.Log)
	}
	if err := w.readHealth(ctx); err != nil {
		p.Stop(5 * time.Second)
		return nil, rbee.Errorf(rbee.CodeWorkerFailed, "worker %s: %w", id, err)
	}
	w.setReady()
	s.cfg.Reservations.Loaded(id)
	s.saveState()
	return w, nil
}

// readAnnouncements reads a worker's stdout, JSON lines, and sends the
// device of its "ready" line; it reads to the end so that the worker
// never blocks on a full pipe.
func readAnnouncements(r io.Reader, ready chan<- string) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var m struct {
			Event  string `json:"event"`
			Device string `json:"device"`
		}
		if json.Unmarshal(sc.Bytes(), &m) == nil && m.Event == "ready" {
			select {
			case ready <- m.Device:
			default:
			}
		}
	}
	_, _ = io.Copy(io.Discard, r)
}

// track records a started worker, ties its reservation to it, and
// forgets it when it exits.
func (s *Supervisor) track(w *Worker, reservation string) {
	if reservation != "" {
		s.cfg.Reservations.Attach(reservation, w.info.ID)
	}
	w.forgotten = make(chan struct{})
	s.mu.Lock()
	s.workers[w.info.ID] = w
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		<-w.proc.Exited()
		s.forget(w)
	}()
}

// forget drops a worker that exited.
func (s *Supervisor) forget(w *Worker) {
	s.mu.Lock()
	if s.workers[w.info.ID] == w {
		delete(s.workers, w.info.ID)
	}
	released := s.released
	s.mu.Unlock()
	s.cfg.Reservations.ReleaseWorker(w.info.ID)
	if w.socket != "" {
		os.Remove(w.socket)
	}
	s.cfg.Log.Info("worker exited", "worker", w.info.ID, "pid", w.info.PID, "err", w.proc.Err())
	if !released {
		s.saveState()
	}
	close(w.forgotten)
}

// Get returns a running worker by id.
func (s *Supervisor) Get(id string) (*Worker, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.workers[id]
	if ok {
		w.picked() // a job is about to use it: the reaper waits a keep-alive again
	}
	return w, ok
}

// Lookup returns a running worker by id without marking it used.
func (s *Supervisor) Lookup(id string) (*Worker, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.workers[id]
	return w, ok
}

// List describes the running workers, oldest first.
func (s *Supervisor) List() []rbee.WorkerInfo {
	out := make([]rbee.WorkerInfo, 0)
	for _, w := range s.all() {
		out = append(out, w.Info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out
}

func (s *Supervisor) all() []*Worker {
	s.mu.Lock()
	defer s.mu.Unlock()
	ws := make([]*Worker, 0, len(s.workers))
	for _, w := range s.workers {
		ws = append(ws, w)
	}
	return ws
}

// Stop stops a worker by id: SIGTERM, then after grace a kill of its
// process group. It returns once the worker is gone.
func (s *Supervisor) Stop(id string, grace time.Duration) error {
	w, ok := s.Get(id)
	if !ok {
		return fmt.Errorf("stop worker %s: %w", id, ErrWorkerNotFound)
	}
	w.proc.Stop(grace)
	return nil
}

// StopAll stops every worker and waits for the supervisor's goroutines.
// After Release it stops nothing and waits for nothing: the goroutines
// watching the workers end with this process.
func (s *Supervisor) StopAll(grace time.Duration) {
	// An RPC server serves the queen's lease on it, which ends with this
	// agent: it is stopped even when the workers are handed over.
	s.stopRPC(grace)
	s.mu.Lock()
	released := s.released
	s.mu.Unlock()
	if released {
		return
	}
	var wg sync.WaitGroup
	for _, w := range s.all() {
		wg.Go(func() { w.proc.Stop(grace) })
	}
	wg.Wait()
	s.wg.Wait()
}

// Reap unloads workers idle for longer than the keep-alive, until ctx
// ends.
func (s *Supervisor) Reap(ctx context.Context) {
	if s.cfg.KeepAlive <= 0 {
		return
	}
	tick := time.NewTicker(max(s.cfg.KeepAlive/4, 20*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, w := range s.all() {
			info := w.Info()
			if info.State != "ready" || info.Busy > 0 || info.Deployment != "" || time.Since(info.LastUsed) <= s.cfg.KeepAlive {
				continue
			}
			s.cfg.Log.Info("unloading idle worker", "worker", info.ID, "keep_alive", s.cfg.KeepAlive)
			w.proc.Stop(10 * time.Second)
		}
	}
}

// SetDeployment marks worker id as kept loaded for deployment name (the
// keep-alive leaves it alone), or, with "", as an ordinary worker again,
// unloaded once idle for the keep-alive. The mark survives an agent
// handover (the state file).
func (s *Supervisor) SetDeployment(id, name string) error {
	w, ok := s.Get(id)
	if !ok {
		return fmt.Errorf("set deployment of %s: %w", id, ErrWorkerNotFound)
	}
	w.mu.Lock()
	w.info.Deployment = name
	w.mu.Unlock()
	s.saveState()
	return nil
}
