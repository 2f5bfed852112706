package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rbee-dev/rbee"
)

// stateFile lists the running workers so that the next agent (an upgrade)
// can adopt them instead of killing them.
func (s *supervisor) stateFile() string { return filepath.Join(s.runDir, "workers.json") }

type savedWorker struct {
	Info    rbee.WorkerInfo `json:"info"`
	Socket  string          `json:"socket"`
	LogPath string          `json:"log_path"`
	Chat    bool            `json:"chat"`
	Engine  string          `json:"engine_device"`
	Base    string          `json:"base,omitempty"` // external workers: their loopback URL
}

// saveState writes the worker list atomically (temp file + rename).
func (s *supervisor) saveState() {
	s.mu.Lock()
	var ws []savedWorker
	for _, w := range s.workers {
		w.mu.Lock()
		if w.info.State == "ready" {
			ws = append(ws, savedWorker{Info: w.info, Socket: w.socket, LogPath: w.logPath, Chat: w.chat, Engine: w.engineDevice, Base: w.base})
		}
		w.mu.Unlock()
	}
	s.mu.Unlock()
	b, _ := json.MarshalIndent(ws, "", "  ")
	tmp := s.stateFile() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		s.log.Warn("save worker state", "err", err)
		return
	}
	if err := os.Rename(tmp, s.stateFile()); err != nil {
		s.log.Warn("save worker state", "err", err)
	}
}

// adopt takes over the workers an earlier agent left running: each must
// still be alive, be an rbee-worker, and answer /health on its socket.
// Workers that fail any check are left alone (and reported).
func (s *supervisor) adopt(ctx context.Context) (adopted []string) {
	b, err := os.ReadFile(s.stateFile())
	if err != nil {
		return nil
	}
	var ws []savedWorker
	if err := json.Unmarshal(b, &ws); err != nil {
		s.log.Warn("worker state unreadable", "file", s.stateFile(), "err", err)
		return nil
	}
	for _, sw := range ws {
		if err := s.adoptOne(ctx, sw); err != nil {
			s.log.Warn("not adopting worker", "worker", sw.Info.ID, "pid", sw.Info.PID, "err", err)
			continue
		}
		adopted = append(adopted, sw.Info.ID)
	}
	s.saveState()
	return adopted
}

func (s *supervisor) adoptOne(ctx context.Context, sw savedWorker) error {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", sw.Info.PID))
	if err != nil {
		return errors.New("not running")
	}
	if sw.Base == "" && (!strings.Contains(string(cmdline), "rbee-worker") || !strings.Contains(string(cmdline), sw.Info.ID)) {
		return errors.New("the pid belongs to another process now")
	}
	pidfd, err := unix.PidfdOpen(sw.Info.PID, 0)
	if err != nil {
		return fmt.Errorf("pidfd: %w", err)
	}
	w := &workerProc{info: sw.Info, chat: sw.Chat, engineDevice: sw.Engine, socket: sw.Socket, logPath: sw.LogPath,
		exited: make(chan struct{}), adopted: true, client: unixClient(sw.Socket), base: sw.Base}
	if sw.Base != "" {
		w.client = &http.Client{}
	}
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if sw.Base == "" {
		if err := w.readHealth(hctx); err != nil {
			unix.Close(pidfd)
			return err
		}
	}
	w.info.State = "ready"
	s.mu.Lock()
	s.workers[w.info.ID] = w
	s.mu.Unlock()
	s.wg.Add(1)
	go func() { // not our child: wait on its pidfd for the exit
		defer s.wg.Done()
		defer unix.Close(pidfd)
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err == nil || !errors.Is(err, syscall.EINTR) {
				break
			}
		}
		w.mu.Lock()
		w.err = errors.New("exited (adopted worker: status unknown)")
		w.mu.Unlock()
		close(w.exited)
		s.forget(w)
	}()
	s.log.Info("adopted worker", "worker", w.info.ID, "pid", w.info.PID, "model", w.info.Model)
	return nil
}

// release lets every worker go without stopping it, for the next agent:
// the state file stays, the processes keep running.
func (s *supervisor) release() {
	s.saveState()
	s.mu.Lock()
	s.released = true
	s.mu.Unlock()
}
