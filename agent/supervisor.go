package agent

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rbee-dev/rbee"
)

// ErrWorkerNotFound means no running worker has that id.
var ErrWorkerNotFound = errors.New("worker not found")

// stderrCap bounds the worker stderr kept for error messages.
const stderrCap = 32 << 10

// workerProc is one rbee-worker process the hive started.
type workerProc struct {
	mu   sync.Mutex
	info rbee.WorkerInfo
	chat bool // the model carries its own chat template
	// engineDevice is the device the engine really uses ("CPU", "CUDA0").
	engineDevice string
	socket       string
	cmd          *exec.Cmd
	client       *http.Client
	busy         atomic.Int32
	exited       chan struct{} // closed when the process has exited
	err          error         // why it exited (after exited closes)
	logPath      string        // the worker's stderr
	adopted      bool          // started by an earlier agent; not our child
	base         string        // URL the client reaches it at
}

// url returns the worker's URL for path.
func (w *workerProc) url(path string) string {
	if w.base == "" {
		return "http://worker" + path
	}
	return w.base + path
}

func (w *workerProc) snapshot() rbee.WorkerInfo {
	w.mu.Lock()
	defer w.mu.Unlock()
	info := w.info
	info.Busy = int(w.busy.Load())
	return info
}

func (w *workerProc) touch() {
	w.mu.Lock()
	w.info.LastUsed = time.Now()
	w.mu.Unlock()
}

// exitReason describes how the worker ended, with the end of its stderr.
func (w *workerProc) exitReason() string {
	msg := fmt.Sprintf("worker %s (pid %d) exited", w.info.ID, w.info.PID)
	if w.err != nil {
		msg += ": " + w.err.Error()
	}
	if t := lastLogLine(w.logPath); t != "" {
		msg += ": " + t
	}
	return msg
}

// supervisor starts, tracks and stops worker processes.
type supervisor struct {
	bin       string
	engine    string
	runDir    string
	logDir    string
	threads   int
	ctxSize   int
	keepAlive time.Duration
	log       *slog.Logger
	vram      *vram

	mu       sync.Mutex
	workers  map[string]*workerProc
	next     int
	released bool           // handed over to the next agent: do not stop workers
	wg       sync.WaitGroup // process waiters and stdout readers
}

// startSpec is what a worker is started with.
type startSpec struct {
	ModelID, ModelPath string
	Device             string // "cpu" or "gpuN"
	Reservation        string
	Engine             string // engine bundle directory; "" = the agent's
}

// start launches a worker and waits until it is ready, ctx bounding the
// wait. On failure the process is gone and the error says why.
func (s *supervisor) start(ctx context.Context, spec startSpec) (*workerProc, error) {
	s.mu.Lock()
	s.next++
	id := fmt.Sprintf("w-%d-%d", os.Getpid(), s.next)
	s.mu.Unlock()

	socket := filepath.Join(s.runDir, id+".sock")
	args := []string{
		"--model", spec.ModelPath, "--engine", cmp.Or(spec.Engine, s.engine), "--listen", "unix:" + socket,
		"--id", id, "--ctx-size", strconv.Itoa(s.ctxSize),
	}
	env := os.Environ()
	if spec.Device == "cpu" {
		args = append(args, "--device", "cpu")
		if s.threads > 0 {
			args = append(args, "--threads", strconv.Itoa(s.threads))
		}
	} else {
		// The worker sees only its GPU, numbered as NVML numbers them.
		idx := spec.Device[len("gpu"):]
		args = append(args, "--device", "auto")
		env = append(env, "CUDA_DEVICE_ORDER=PCI_BUS_ID", "CUDA_VISIBLE_DEVICES="+idx)
	}
	logPath := filepath.Join(s.logDir, id+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start worker: %w", err)
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// stderr is the log file itself, not a pipe: the worker outlives an
	// agent that hands over to a new version, and must not write into a
	// pipe nobody reads.
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("start worker: %w", err)
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start worker %s: %w", s.bin, err)
	}
	now := time.Now()
	w := &workerProc{
		info: rbee.WorkerInfo{
			ID: id, ModelID: spec.ModelID, Model: spec.ModelPath, Device: spec.Device,
			PID: cmd.Process.Pid, State: "starting", Started: now, LastUsed: now,
		},
		socket: socket, cmd: cmd, exited: make(chan struct{}), logPath: logPath, client: unixClient(socket),
	}
	if spec.Reservation != "" {
		s.vram.attach(spec.Reservation, id)
	}
	s.mu.Lock()
	s.workers[id] = w
	s.mu.Unlock()

	ready := make(chan map[string]any, 1)
	s.wg.Add(2)
	go func() { // stdout: the worker's announcements
		defer s.wg.Done()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && m["event"] == "ready" {
				select {
				case ready <- m:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() { // the process: notice it exit, whenever that is
		defer s.wg.Done()
		err := cmd.Wait()
		logf.Close()
		w.mu.Lock()
		w.err = err
		w.mu.Unlock()
		close(w.exited)
		s.forget(w)
	}()

	timeout := time.NewTimer(2 * time.Minute)
	defer timeout.Stop()
	select {
	case m := <-ready:
		dev, _ := m["device"].(string)
		s.log.Info("worker ready", "worker", id, "pid", w.info.PID, "device", dev, "ms", time.Since(now).Milliseconds())
	case <-w.exited:
		return nil, rbee.Errorf(rbee.CodeWorkerFailed, "%s", w.exitReason())
	case <-ctx.Done():
		s.stopProc(w, 5*time.Second)
		return nil, ctx.Err()
	case <-timeout.C:
		s.stopProc(w, 5*time.Second)
		return nil, rbee.Errorf(rbee.CodeWorkerFailed, "worker %s not ready after 2m; its log: %s", id, filepath.Join(s.logDir, id+".log"))
	}
	if err := w.readHealth(ctx); err != nil {
		s.stopProc(w, 5*time.Second)
		return nil, rbee.Errorf(rbee.CodeWorkerFailed, "worker %s: %v", id, err)
	}
	w.mu.Lock()
	w.info.State = "ready"
	w.mu.Unlock()
	s.vram.loaded(id)
	s.saveState()
	return w, nil
}

func unixClient(socket string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConnsPerHost: 16,
	}}
}

// forget drops a worker that exited.
func (s *supervisor) forget(w *workerProc) {
	s.mu.Lock()
	delete(s.workers, w.info.ID)
	s.mu.Unlock()
	s.vram.releaseWorker(w.info.ID)
	os.Remove(w.socket)
	s.log.Info("worker exited", "worker", w.info.ID, "pid", w.info.PID, "err", w.err)
	s.mu.Lock()
	released := s.released
	s.mu.Unlock()
	if !released {
		s.saveState()
	}
}

// readHealth reads what the worker says about itself once ready.
func (w *workerProc) readHealth(ctx context.Context) error {
	req, _ := http.NewRequestWithContext(ctx, "GET", w.url("/health"), nil)
	resp, err := w.client.Do(req)
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	defer resp.Body.Close()
	var h struct {
		Status       string `json:"status"`
		Device       string `json:"device"`
		ChatTemplate string `json:"chat_template"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil || h.Status != "ready" {
		return fmt.Errorf("health: status %d %q: %v", resp.StatusCode, h.Status, err)
	}
	w.mu.Lock()
	w.chat = h.ChatTemplate == "model"
	w.engineDevice = h.Device
	w.mu.Unlock()
	return nil
}

func (s *supervisor) get(id string) (*workerProc, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.workers[id]
	return w, ok
}

// find returns a live worker serving key, if any.
func (s *supervisor) find(key spawnKey) *workerProc {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.workers {
		w.mu.Lock()
		match := w.info.ModelID == key.model && w.info.Device == key.device && w.info.Type == key.typ && w.info.State == "ready"
		w.mu.Unlock()
		if !match {
			continue
		}
		select {
		case <-w.exited:
		default:
			return w
		}
	}
	return nil
}

func (s *supervisor) list() []rbee.WorkerInfo {
	s.mu.Lock()
	ws := make([]*workerProc, 0, len(s.workers))
	for _, w := range s.workers {
		ws = append(ws, w)
	}
	s.mu.Unlock()
	out := make([]rbee.WorkerInfo, 0, len(ws))
	for _, w := range ws {
		out = append(out, w.snapshot())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out
}

// stop stops a worker by id.
func (s *supervisor) stop(id string, grace time.Duration) error {
	w, ok := s.get(id)
	if !ok {
		return ErrWorkerNotFound
	}
	s.stopProc(w, grace)
	return nil
}

// stopProc sends SIGTERM, waits up to grace, then kills the process group.
func (s *supervisor) stopProc(w *workerProc, grace time.Duration) {
	select {
	case <-w.exited:
		return
	default:
	}
	_ = syscall.Kill(w.info.PID, syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-w.exited:
	case <-t.C:
		_ = syscall.Kill(-w.info.PID, syscall.SIGKILL) // its process group
		<-w.exited
	}
}

// stopAll stops every worker and waits for the supervisor's goroutines;
// after release it stops nothing and waits for nothing (the goroutines
// watching workers end with the process).
func (s *supervisor) stopAll(grace time.Duration) {
	s.mu.Lock()
	if s.released {
		s.mu.Unlock()
		return
	}
	ws := make([]*workerProc, 0, len(s.workers))
	for _, w := range s.workers {
		ws = append(ws, w)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.stopProc(w, grace)
		}()
	}
	wg.Wait()
	s.wg.Wait()
}

// reap stops workers idle for longer than the keep-alive, until ctx ends.
func (s *supervisor) reap(ctx context.Context) {
	if s.keepAlive <= 0 {
		return
	}
	tick := time.NewTicker(max(s.keepAlive/4, 20*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s.mu.Lock()
		var idle []*workerProc
		for _, w := range s.workers {
			info := w.snapshot()
			if info.State == "ready" && info.Busy == 0 && time.Since(info.LastUsed) > s.keepAlive {
				idle = append(idle, w)
			}
		}
		s.mu.Unlock()
		for _, w := range idle {
			s.log.Info("unloading idle worker", "worker", w.info.ID, "keep_alive", s.keepAlive)
			s.stopProc(w, 10*time.Second)
		}
	}
}

// lastLogLine returns the last non-empty line of a log file, reading at
// most its last stderrCap bytes.
func lastLogLine(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-stderrCap, 0)
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(buf)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
