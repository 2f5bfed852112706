package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/hiveapi"
)

// helperEnv makes the test binary play a worker (Go's TestHelperProcess
// pattern). The mode is the --model file's name, so that parallel tests
// choose theirs without touching the environment: ready, crash,
// ignore-term, hang, sleep; --openai plays an external engine.
const helperEnv = "RBEE_SUPERVISOR_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		helperMain(os.Args[1:])
		return
	}
	os.Setenv(helperEnv, "1") // for the workers the tests start
	os.Exit(m.Run())
}

func helperMain(args []string) {
	if len(args) > 0 && args[0] == "-H" {
		helperRPC(args)
		return
	}
	if len(args) > 0 && args[0] == SandboxCommand { // the test binary plays rbee-hive too
		if err := RunSandbox(args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	flags := map[string]string{}
	for i := 0; i < len(args); i++ {
		if strings.HasPrefix(args[i], "--") && i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
			flags[args[i]] = args[i+1]
			i++
		} else {
			flags[args[i]] = ""
		}
	}
	if _, ok := flags["--openai"]; ok {
		helperOpenAI(flags["--port"])
		return
	}
	mode := strings.TrimSuffix(filepath.Base(flags["--model"]), ".gguf")
	socket := strings.TrimPrefix(flags["--listen"], "unix:")
	switch mode {
	case "crash":
		fmt.Fprintln(os.Stderr, "loading model")
		fmt.Fprintln(os.Stderr, "load model: it broke: not a GGUF file")
		os.Exit(2)
	case "hang", "sleep":
		time.Sleep(time.Hour)
		return
	case "slow":
		time.Sleep(300 * time.Millisecond) // a load that takes longer than the test's keep-alive
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		// A child in the worker's process group, which the kill after
		// the grace period must reach too.
		child := exec.Command(os.Args[0], "--model", "sleep.gguf")
		if err := child.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		_ = os.WriteFile(socket+".child", []byte(strconv.Itoa(child.Process.Pid)), 0o600)
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{
			"status": "ready", "id": flags["--id"], "model": mode, "model_path": flags["--model"],
			"device": "CPU", "chat_template": "model", "slots": 1, "slots_busy": 0, "queued": 0,
		})
	})
	go func() { _ = http.Serve(ln, mux) }()
	fmt.Println(`{"event":"listening","network":"unix","address":"` + socket + `"}`)
	b, _ := json.Marshal(map[string]any{"event": "ready", "network": "unix", "address": socket,
		"pid": os.Getpid(), "id": flags["--id"], "device": "CPU", "grease": "an unknown field"})
	fmt.Println(string(b))
	if mode == "ignore-term" {
		time.Sleep(time.Hour)
	}
	<-term
	os.Exit(0)
}

func helperOpenAI(port string) {
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, `{"status":"ok"}`) })
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() { _ = http.Serve(ln, mux) }()
	<-term
	os.Exit(0)
}

// fakeReservations records the supervisor's calls.
type fakeReservations struct {
	mu    sync.Mutex
	calls []string
}

func (f *fakeReservations) record(s string) {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
}
func (f *fakeReservations) Attach(res, worker string) { f.record("attach " + res + " " + worker) }
func (f *fakeReservations) Loaded(worker string)      { f.record("loaded " + worker) }
func (f *fakeReservations) ReleaseWorker(worker string) {
	f.record("release " + worker)
}

// WorkerBytes: every worker holds 64 MiB.
func (f *fakeReservations) WorkerBytes(string) uint64 { return 64 << 20 }
func (f *fakeReservations) Restore(worker, device string, bytes uint64) {
	f.record(fmt.Sprintf("restore %s %s %d", worker, device, bytes))
}

func (f *fakeReservations) get() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// workerBin is the test binary under the name rbee-worker, which the
// adoption check looks for in a process's command line.
func workerBin(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "rbee-worker")
	if err := os.Symlink(exe, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

// dirs returns a run directory short enough for unix socket paths, and
// a log directory.
func dirs(t *testing.T) (run, logs string) {
	t.Helper()
	run, err := os.MkdirTemp("", "sup")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	return run, t.TempDir()
}

func testConfig(t *testing.T) Config {
	run, logs := dirs(t)
	return Config{Bin: workerBin(t), Engine: "/engine", RunDir: run, LogDir: logs, CtxSize: 512,
		Reservations: &fakeReservations{}}
}

// newSupervisor returns a Supervisor whose workers are killed, by pid,
// when the test ends, and whose goroutines are waited for.
func newSupervisor(t *testing.T, cfg Config) *Supervisor {
	t.Helper()
	s := New(cfg)
	t.Cleanup(func() {
		for _, w := range s.List() {
			_ = syscall.Kill(-w.PID, syscall.SIGKILL)
		}
		s.StopAll(time.Second)
	})
	return s
}

func spec(mode string) Spec {
	return Spec{ModelID: "m-" + mode, ModelPath: "/models/" + mode + ".gguf", Device: "cpu"}
}

// eventually polls cond until it holds or a deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitExit(t *testing.T, w *Worker) {
	t.Helper()
	select {
	case <-w.Exited():
	case <-time.After(5 * time.Second):
		t.Fatalf("worker %s still running", w.Info().ID)
	}
}

// dead says whether pid is gone (or a zombie no one has reaped yet).
func dead(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}

func TestStartReadyListGet(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	res := cfg.Reservations.(*fakeReservations)
	s := newSupervisor(t, cfg)
	sp := spec("ready")
	sp.Reservation = "res-1"
	w, err := s.Start(t.Context(), sp)
	if err != nil {
		t.Fatal(err)
	}
	info := w.Info()
	if info.State != "ready" || info.ModelID != "m-ready" || info.Device != "cpu" || info.PID <= 0 || info.Type != "" {
		t.Errorf("Info = %+v, want a ready cpu worker for m-ready", info)
	}
	if !w.ModelChat() || w.EngineDevice() != "CPU" {
		t.Errorf("ModelChat, EngineDevice = %v, %q, want true, CPU (from /health)", w.ModelChat(), w.EngineDevice())
	}
	if got, ok := s.Get(info.ID); !ok || got != w {
		t.Errorf("Get(%s) = %v, %v, want the worker", info.ID, got, ok)
	}
	if _, ok := s.Get("w-nope"); ok {
		t.Error("Get(w-nope) found a worker")
	}
	if l := s.List(); len(l) != 1 || l[0].ID != info.ID {
		t.Errorf("List = %+v, want the one worker", l)
	}
	resp, err := w.Client().Get(w.URL("/health"))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /health through the worker's client: %v %v", resp, err)
	}
	resp.Body.Close()
	if got, want := res.get(), []string{"attach res-1 " + info.ID, "loaded " + info.ID}; !slices.Equal(got, want) {
		t.Errorf("reservation calls = %q, want %q", got, want)
	}
	if err := s.Stop("w-nope", time.Second); !errors.Is(err, ErrWorkerNotFound) {
		t.Errorf("Stop(w-nope) = %v, want ErrWorkerNotFound", err)
	}
	if err := s.Stop(info.ID, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitExit(t, w)
	eventually(t, "the stopped worker is forgotten", func() bool { return len(s.List()) == 0 })
	eventually(t, "its reservation is released", func() bool { return slices.Contains(res.get(), "release "+info.ID) })
	// The socket goes last in forget (after the release): wait for it to end.
	select {
	case <-w.forgotten:
	case <-time.After(5 * time.Second):
		t.Fatal("the stopped worker was never forgotten")
	}
	if _, err := os.Stat(filepath.Join(cfg.RunDir, info.ID+".sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestStartFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, mode string
		ready      time.Duration
		want       string
	}{
		{"exits at start", "crash", 0, "load model: it broke: not a GGUF file"},
		{"never announces", "hang", 200 * time.Millisecond, "not ready after 200ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t)
			cfg.ReadyTimeout = tt.ready
			res := cfg.Reservations.(*fakeReservations)
			s := newSupervisor(t, cfg)
			sp := spec(tt.mode)
			sp.Reservation = "res-9"
			_, err := s.Start(t.Context(), sp)
			if err == nil {
				t.Fatal("Start succeeded")
			}
			if code := rbee.CodeOf(err); code != rbee.CodeWorkerFailed {
				t.Errorf("code = %s, want %s", code, rbee.CodeWorkerFailed)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q, want it to say %q", err, tt.want)
			}
			eventually(t, "the failed worker is forgotten and its room released", func() bool {
				c := res.get()
				return len(s.List()) == 0 && len(c) > 0 && strings.HasPrefix(c[len(c)-1], "release ")
			})
		})
	}
}

// A start whose ctx ends stops the worker and returns the ctx's error.
func TestStartCancelled(t *testing.T) {
	t.Parallel()
	s := newSupervisor(t, testConfig(t))
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, err := s.Start(ctx, spec("hang")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start = %v, want the ctx's deadline", err)
	}
	eventually(t, "the worker is gone", func() bool { return len(s.List()) == 0 })
}

func TestStopGrace(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, mode string
		grace      time.Duration
		wantErr    string
		killed     bool
	}{
		{"stops on SIGTERM", "ready", 5 * time.Second, "", false},
		{"killed after grace with its group", "ignore-term", 300 * time.Millisecond, "signal: killed", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t)
			s := newSupervisor(t, cfg)
			w, err := s.Start(t.Context(), spec(tt.mode))
			if err != nil {
				t.Fatal(err)
			}
			id := w.Info().ID
			child := 0
			if tt.killed {
				b, err := os.ReadFile(filepath.Join(cfg.RunDir, id+".sock.child"))
				if err != nil {
					t.Fatal(err)
				}
				child, _ = strconv.Atoi(string(b))
				t.Cleanup(func() { _ = syscall.Kill(child, syscall.SIGKILL) })
			}
			grace := tt.grace
			start := time.Now()
			if err := s.Stop(id, grace); err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			select {
			case <-w.Exited():
			default:
				t.Fatal("Stop returned before the worker exited")
			}
			if tt.killed != (took >= grace) {
				t.Errorf("Stop took %s, grace %s: want killed=%v", took, grace, tt.killed)
			}
			if tt.wantErr != "" && !strings.Contains(w.ExitReason(), tt.wantErr) {
				t.Errorf("ExitReason = %q, want %q", w.ExitReason(), tt.wantErr)
			}
			if child != 0 {
				eventually(t, "the worker's child is killed with its group", func() bool { return dead(child) })
			}
		})
	}
}

func TestReapUnloadsIdleKeepsBusy(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.KeepAlive = 100 * time.Millisecond
	s := newSupervisor(t, cfg)
	idle, err := s.Start(t.Context(), spec("ready"))
	if err != nil {
		t.Fatal(err)
	}
	busySpec := spec("ready")
	busySpec.ModelID = "m-busy"
	busy, err := s.Start(t.Context(), busySpec)
	if err != nil {
		t.Fatal(err)
	}
	done := busy.Use()
	if got := busy.Info().Busy; got != 1 {
		t.Errorf("Busy = %d, want 1", got)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { s.Reap(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	waitExit(t, idle)
	// Past the busy worker's keep-alive, with reaper ticks (every
	// KeepAlive/4) to spare, it still runs.
	eventually(t, "the busy worker is past its keep-alive", func() bool {
		return time.Since(busy.Info().LastUsed) > cfg.KeepAlive*3/2
	})
	select {
	case <-busy.Exited():
		t.Fatal("the busy worker was unloaded")
	default:
	}
	done()
	if got := busy.Info().Busy; got != 0 {
		t.Errorf("Busy = %d after done, want 0", got)
	}
	waitExit(t, busy) // idle now, after its keep-alive
}

// A worker's keep-alive counts from when it is ready, not from its
// spawn: one whose load takes longer than the keep-alive is not idle the
// moment it is ready (the request that started it has not used it yet).
func TestKeepAliveCountsFromReady(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.KeepAlive = 100 * time.Millisecond
	s := newSupervisor(t, cfg)
	w, err := s.Start(t.Context(), spec("slow"))
	if err != nil {
		t.Fatal(err)
	}
	info := w.Info()
	if loaded := info.LastUsed.Sub(info.Started); loaded < 300*time.Millisecond {
		t.Errorf("last used %s after its spawn, want at its ready (after the 300ms load)", loaded)
	}
}

// Parallel jobs for one model and device start one worker; the others
// join it.
func TestEnsureStartsOne(t *testing.T) {
	t.Parallel()
	s := newSupervisor(t, testConfig(t))
	key := Key{Model: "m-ready", Device: "cpu"}
	const n = 8
	var starts atomic.Int32
	var joined atomic.Int32
	workers := make([]*Worker, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			w, j, err := s.Ensure(t.Context(), key, func() (*Worker, error) {
				starts.Add(1)
				return s.Start(t.Context(), spec("ready"))
			})
			if err != nil {
				t.Error(err)
				return
			}
			if j {
				joined.Add(1)
			}
			workers[i] = w
		})
	}
	wg.Wait()
	if got := starts.Load(); got != 1 {
		t.Errorf("starts = %d, want 1", got)
	}
	if got := joined.Load(); got != n-1 {
		t.Errorf("joined = %d, want %d", got, n-1)
	}
	for _, w := range workers {
		if w != workers[0] {
			t.Fatalf("Ensure gave different workers: %v and %v", w, workers[0])
		}
	}
	if l := s.List(); len(l) != 1 {
		t.Errorf("List = %+v, want one worker", l)
	}
	// Another key is another worker.
	other, j, err := s.Ensure(t.Context(), Key{Model: "m-other", Device: "cpu"}, func() (*Worker, error) {
		sp := spec("ready")
		sp.ModelID = "m-other"
		return s.Start(t.Context(), sp)
	})
	if err != nil || j || other == workers[0] {
		t.Errorf("Ensure(other key) = %v, joined %v, %v; want a new worker", other, j, err)
	}
}

// A start that fails is not shared: a waiting caller tries its own.
func TestEnsureRetriesAfterFailedStart(t *testing.T) {
	t.Parallel()
	s := newSupervisor(t, testConfig(t))
	key := Key{Model: "m-ready", Device: "cpu"}
	first := make(chan struct{})
	release := make(chan struct{})
	var wg sync.WaitGroup
	var firstErr error
	wg.Go(func() {
		_, _, firstErr = s.Ensure(t.Context(), key, func() (*Worker, error) {
			close(first)
			<-release
			return nil, errors.New("boom")
		})
	})
	<-first
	var w *Worker
	var j bool
	var err error
	wg.Go(func() {
		w, j, err = s.Ensure(t.Context(), key, func() (*Worker, error) { return s.Start(t.Context(), spec("ready")) })
	})
	eventually(t, "the second caller waits on the first start", func() bool {
		s.ensureMu.Lock()
		defer s.ensureMu.Unlock()
		return s.starts[key] != nil
	})
	close(release)
	wg.Wait()
	if firstErr == nil {
		t.Error("the failed start reported no error")
	}
	if err != nil || j || w == nil {
		t.Errorf("second Ensure = %v, joined %v, %v; want its own new worker", w, j, err)
	}
}

// A worker that crashes is forgotten, its reservation released, and the
// next Ensure starts a new one.
func TestCrashedWorkerForgotten(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	res := cfg.Reservations.(*fakeReservations)
	s := newSupervisor(t, cfg)
	key := Key{Model: "m-ready", Device: "cpu"}
	start := func() (*Worker, error) {
		sp := spec("ready")
		sp.Reservation = "res-1"
		return s.Start(t.Context(), sp)
	}
	w, _, err := s.Ensure(t.Context(), key, start)
	if err != nil {
		t.Fatal(err)
	}
	id := w.Info().ID
	if err := syscall.Kill(w.Info().PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitExit(t, w)
	if r := w.ExitReason(); !strings.Contains(r, "worker "+id) || !strings.Contains(r, "killed") {
		t.Errorf("ExitReason = %q, want the worker and how it died", r)
	}
	eventually(t, "the crashed worker is forgotten", func() bool { _, ok := s.Get(id); return !ok })
	eventually(t, "its reservation is released", func() bool { return slices.Contains(res.get(), "release "+id) })
	w2, joined, err := s.Ensure(t.Context(), key, start)
	if err != nil || joined || w2.Info().ID == id {
		t.Fatalf("Ensure after the crash = %v, joined %v, %v; want a new worker", w2, joined, err)
	}
}

// After Release a new supervisor adopts the running worker: same pid,
// same socket, and it can stop it.
func TestReleaseAdopt(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	old := newSupervisor(t, cfg)
	w, err := old.Start(t.Context(), spec("ready"))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // two requests served: the next agent must still say so
		done := w.Use()
		done()
	}
	before := w.Info()
	old.Release()
	old.StopAll(time.Second) // stops nothing after Release
	select {
	case <-w.Exited():
		t.Fatal("StopAll after Release stopped the worker")
	default:
	}

	res := &fakeReservations{}
	cfg.Reservations = res
	s := newSupervisor(t, cfg)
	if got := s.Adopt(t.Context()); !slices.Equal(got, []string{before.ID}) {
		t.Fatalf("Adopt = %q, want [%s]", got, before.ID)
	}
	aw, ok := s.Get(before.ID)
	if !ok {
		t.Fatal("the adopted worker is not listed")
	}
	after := aw.Info()
	if after.PID != before.PID || after.State != "ready" || after.ModelID != before.ModelID || after.Served != 2 {
		t.Errorf("adopted %+v, want %+v (2 served)", after, before)
	}
	if want := fmt.Sprintf("restore %s cpu %d", before.ID, 64<<20); !slices.Contains(res.get(), want) {
		t.Errorf("reservation calls = %q, want %q: the adopted worker's memory charged again", res.get(), want)
	}
	if !aw.ModelChat() || aw.EngineDevice() != "CPU" {
		t.Errorf("adopted ModelChat, EngineDevice = %v, %q", aw.ModelChat(), aw.EngineDevice())
	}
	resp, err := aw.Client().Get(aw.URL("/health"))
	if err != nil {
		t.Fatalf("the adopted worker does not answer: %v", err)
	}
	resp.Body.Close()
	// A worker it starts itself does not take the adopted one's id.
	nw, err := s.Start(t.Context(), spec("ready"))
	if err != nil {
		t.Fatal(err)
	}
	if nw.Info().ID == before.ID {
		t.Errorf("new worker took the adopted worker's id %s", before.ID)
	}
	if err := s.Stop(before.ID, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitExit(t, aw)
	waitExit(t, w) // the old supervisor's view ends too
	eventually(t, "the adopted worker is forgotten", func() bool { _, ok := s.Get(before.ID); return !ok })
	if !dead(before.PID) {
		t.Errorf("pid %d still running", before.PID)
	}
	if !slices.Contains(res.get(), "release "+before.ID) {
		t.Errorf("reservation calls = %q, want the adopted worker's released", res.get())
	}
	// A worker that is gone is not adopted.
	again := newSupervisor(t, cfg)
	if got := again.Adopt(t.Context()); slices.Contains(got, before.ID) {
		t.Errorf("Adopt = %q, adopted a worker that exited", got)
	}
}

func TestStartExternal(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	res := cfg.Reservations.(*fakeReservations)
	s := newSupervisor(t, cfg)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	wt := hiveapi.WorkerType{Name: "oai", Command: exe, Args: []string{"--openai", "--port", "{port}", "--model", "{model}"}, Health: "/health"}
	sp := spec("ready")
	sp.Reservation = "res-x"
	w, err := s.StartExternal(t.Context(), sp, wt)
	if err != nil {
		t.Fatal(err)
	}
	info := w.Info()
	if info.Type != "oai" || info.State != "ready" || !strings.HasPrefix(info.ID, "x-") || w.EngineDevice() != "external" {
		t.Errorf("Info = %+v (engine %q), want a ready external oai worker", info, w.EngineDevice())
	}
	if !strings.HasPrefix(w.URL("/v1/completions"), "http://127.0.0.1:") {
		t.Errorf("URL = %q, want its loopback port", w.URL("/v1/completions"))
	}
	resp, err := w.Client().Get(w.URL("/health"))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /health: %v %v", resp, err)
	}
	resp.Body.Close()
	if got, want := res.get(), []string{"attach res-x " + info.ID, "loaded " + info.ID}; !slices.Equal(got, want) {
		t.Errorf("reservation calls = %q, want %q", got, want)
	}
	// Ensure finds it by its type.
	found, joined, err := s.Ensure(t.Context(), Key{Model: "m-ready", Device: "cpu", Type: "oai"}, func() (*Worker, error) {
		return nil, errors.New("started again")
	})
	if err != nil || !joined || found != w {
		t.Errorf("Ensure = %v, %v, %v; want the running external worker", found, joined, err)
	}
	if err := s.Stop(info.ID, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitExit(t, w)

	// An engine that exits at once fails the start with its log's end.
	bad := wt
	bad.Command = "/bin/sh"
	bad.Args = []string{"-c", "echo 'no such model {model}' >&2; exit 3", "{port}"}
	_, err = s.StartExternal(t.Context(), sp, bad)
	if rbee.CodeOf(err) != rbee.CodeWorkerFailed || !strings.Contains(err.Error(), "no such model /models/ready.gguf") {
		t.Errorf("StartExternal(exits) = %v, want %s with its stderr", err, rbee.CodeWorkerFailed)
	}
}

// TestProbeAndKillHung: a stopped worker does not answer its probe; Kill
// ends it (SIGKILL reaches a stopped process) and forgets it, and Ensure
// starts a new one.
func TestProbeAndKillHung(t *testing.T) {
	t.Parallel()
	s := newSupervisor(t, testConfig(t))
	w, err := s.Start(t.Context(), spec("ready"))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Probe(t.Context(), 5*time.Second); err != nil {
		t.Fatalf("probe of a live worker: %v", err)
	}
	pid := w.Info().PID
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the worker is stopped", func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		return len(f) > 0 && f[0] == "T"
	})
	if err := w.Probe(t.Context(), 200*time.Millisecond); err == nil {
		t.Fatal("probe of a stopped worker answered")
	}
	if err := s.Kill(w.Info().ID); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Get(w.Info().ID); ok || !dead(pid) {
		t.Fatalf("after Kill: tracked %v, dead %v; want forgotten and dead", ok, dead(pid))
	}
	key := Key{Model: "m-ready", Device: "cpu"}
	nw, joined, err := s.Ensure(t.Context(), key, func() (*Worker, error) { return s.Start(t.Context(), spec("ready")) })
	if err != nil || joined || nw.Info().ID == w.Info().ID {
		t.Fatalf("Ensure after Kill: %v joined=%v, want a new worker", err, joined)
	}
}

// TestAdoptRemovesWhatARebootLeft: after a reboot the run directory holds
// the sockets and state-file entries of workers that are gone; the next
// agent adopts the live ones and removes the rest.
func TestAdoptRemovesWhatARebootLeft(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	old := newSupervisor(t, cfg)
	live, err := old.Start(t.Context(), spec("ready"))
	if err != nil {
		t.Fatal(err)
	}
	old.Release()
	// A worker that died with the host: its socket file stays, and the
	// state file still lists it.
	stale := filepath.Join(cfg.RunDir, "w-99999-1.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	var ws []savedWorker
	b, err := os.ReadFile(old.stateFile())
	if err != nil || json.Unmarshal(b, &ws) != nil || len(ws) != 1 {
		t.Fatalf("state file: %v %s", err, b)
	}
	gone := ws[0]
	gone.Info.ID, gone.Info.PID, gone.Socket = "w-99999-1", 1<<30, stale
	b, _ = json.Marshal(append(ws, gone))
	if err := os.WriteFile(old.stateFile(), b, 0o600); err != nil {
		t.Fatal(err)
	}

	s := newSupervisor(t, cfg)
	if got := s.Adopt(t.Context()); !slices.Equal(got, []string{live.Info().ID}) {
		t.Fatalf("Adopt = %q, want [%s]", got, live.Info().ID)
	}
	if _, err := os.Lstat(stale); !os.IsNotExist(err) {
		t.Errorf("the dead worker's socket is still there: %v", err)
	}
	if _, err := os.Lstat(live.socket); err != nil {
		t.Errorf("the live worker's socket: %v", err)
	}
	b, _ = os.ReadFile(s.stateFile())
	if strings.Contains(string(b), "w-99999-1") || !strings.Contains(string(b), live.Info().ID) {
		t.Errorf("state file after Adopt:\n%s", b)
	}
}
