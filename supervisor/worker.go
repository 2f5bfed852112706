package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/internal/proc"
)

// Worker is one worker process the supervisor started or adopted.
type Worker struct {
	proc   *proc.Proc
	client *http.Client
	socket string // its unix socket; "" for external workers
	base   string // the URL it is reached at; "" = through socket
	busy   atomic.Int32
	served atomic.Int64
	// forgotten is closed once the supervisor dropped the exited worker.
	forgotten chan struct{}

	mu           sync.Mutex
	info         rbee.WorkerInfo
	chat         bool   // the model carries its own chat template
	engineDevice string // the device the engine really uses ("CPU", "CUDA0")
}

// Info describes the worker now, with the requests in flight.
func (w *Worker) Info() rbee.WorkerInfo {
	w.mu.Lock()
	defer w.mu.Unlock()
	info := w.info
	info.Busy = int(w.busy.Load())
	info.Served += w.served.Load()
	return info
}

// picked marks the worker used now: a job that found it is about to
// count itself with Use, and the reaper must not unload it meanwhile.
func (w *Worker) picked() {
	w.mu.Lock()
	w.info.LastUsed = time.Now()
	w.mu.Unlock()
}

// Use counts a request in flight, which keeps the worker from being
// unloaded; done ends it and marks the worker used now.
func (w *Worker) Use() (done func()) {
	w.busy.Add(1)
	var once sync.Once
	return func() {
		once.Do(func() {
			w.mu.Lock()
			w.info.LastUsed = time.Now()
			w.mu.Unlock()
			w.busy.Add(-1)
			w.served.Add(1)
		})
	}
}

// ModelChat says whether the model carries its own chat template, so
// prompts go to /v1/chat/completions by default.
func (w *Worker) ModelChat() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.chat
}

// EngineDevice is the device the engine reported it uses ("CPU",
// "CUDA0"), or "external".
func (w *Worker) EngineDevice() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.engineDevice
}

// URL returns the worker's URL for path, for Client.
func (w *Worker) URL(path string) string {
	if w.base == "" {
		return "http://worker" + path
	}
	return w.base + path
}

// Client reaches the worker (over its unix socket for an rbee-worker).
func (w *Worker) Client() *http.Client { return w.client }

// Exited is closed when the worker's process has exited.
func (w *Worker) Exited() <-chan struct{} { return w.proc.Exited() }

// ExitReason describes how the worker ended, with the last line of its
// log; it waits for the exit.
func (w *Worker) ExitReason() string {
	msg := fmt.Sprintf("worker %s (pid %d) exited", w.info.ID, w.info.PID)
	if err := w.proc.Err(); err != nil {
		msg += ": " + err.Error()
	}
	if t := proc.LastLine(w.proc.Log); t != "" {
		msg += ": " + t
	}
	return msg
}

// setReady marks the worker ready, and used now: its keep-alive counts
// from here, not from its spawn (a load longer than the keep-alive must
// not unload it before the request that started it).
func (w *Worker) setReady() {
	w.mu.Lock()
	w.info.State = "ready"
	w.info.LastUsed = time.Now()
	w.mu.Unlock()
}

// readHealth reads what an rbee-worker says about itself once ready.
func (w *Worker) readHealth(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, "GET", w.URL("/health"), nil)
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
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
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return fmt.Errorf("health: status %d: %w", resp.StatusCode, err)
	}
	if h.Status != "ready" {
		return fmt.Errorf("health: status %d %q", resp.StatusCode, h.Status)
	}
	w.mu.Lock()
	w.chat = h.ChatTemplate == "model"
	w.engineDevice = h.Device
	w.mu.Unlock()
	return nil
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
