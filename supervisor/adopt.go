package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/internal/proc"
)

// stateFile lists the running workers so that the next agent (an
// upgrade) can adopt them instead of killing them.
func (s *Supervisor) stateFile() string { return filepath.Join(s.cfg.RunDir, "workers.json") }

type savedWorker struct {
	Info    rbee.WorkerInfo `json:"info"`
	Socket  string          `json:"socket"`
	LogPath string          `json:"log_path"`
	Chat    bool            `json:"chat"`
	Engine  string          `json:"engine_device"`
	Base    string          `json:"base,omitempty"` // external workers: their loopback URL
	// Start is the process's start time (field 22 of /proc/PID/stat): a
	// pid reused by another process after a reboot does not match it.
	Start string `json:"start,omitempty"`
}

// startTime returns pid's start time since boot, in clock ticks, or "".
func startTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return ""
	}
	return f[19] // field 22: after pid, comm, then state is field 3
}

// saveState writes the ready workers atomically (temp file + rename).
func (s *Supervisor) saveState() {
	s.stateMu.Lock() // the last snapshot taken is the last written
	defer s.stateMu.Unlock()
	s.mu.Lock()
	released := s.released
	s.mu.Unlock()
	if released {
		return // the next agent owns the file now
	}
	ws := []savedWorker{}
	for _, w := range s.all() {
		// What rbee ps shows goes with the worker: the requests it served
		// and the memory its reservation holds.
		info := w.Info()
		info.Busy = 0
		info.MemoryBytes = s.cfg.Reservations.WorkerBytes(info.ID)
		w.mu.Lock()
		if info.State == "ready" {
			ws = append(ws, savedWorker{Info: info, Socket: w.socket, LogPath: w.proc.Log, Chat: w.chat, Engine: w.engineDevice, Base: w.base,
				Start: startTime(info.PID)})
		}
		w.mu.Unlock()
	}
	b, _ := json.MarshalIndent(ws, "", "  ")
	tmp := s.stateFile() + ".tmp"
	if err := writeSynced(tmp, b); err != nil {
		s.cfg.Log.Warn("save worker state", "err", err)
		return
	}
	if err := os.Rename(tmp, s.stateFile()); err != nil {
		s.cfg.Log.Warn("save worker state", "err", err)
	}
}

// Adopt takes over the workers an earlier supervisor released: each must
// still be alive, be the worker the state file names, and answer /health
// on its socket. Workers that fail a check are left alone (and logged).
// ctx bounds the health checks.
//
// Whatever it does not adopt is cleaned up: the sockets of workers that
// are gone (a host that rebooted keeps them) are removed, and the state
// file then lists the adopted workers only.
func (s *Supervisor) Adopt(ctx context.Context) (adopted []string) {
	defer s.removeStaleSockets()
	b, err := os.ReadFile(s.stateFile())
	if err != nil {
		return nil
	}
	var ws []savedWorker
	if err := json.Unmarshal(b, &ws); err != nil {
		s.cfg.Log.Warn("worker state unreadable", "file", s.stateFile(), "err", err)
		return nil
	}
	for _, sw := range ws {
		if err := s.adoptOne(ctx, sw); err != nil {
			s.cfg.Log.Warn("not adopting worker", "worker", sw.Info.ID, "pid", sw.Info.PID, "err", err)
			continue
		}
		adopted = append(adopted, sw.Info.ID)
	}
	s.saveState()
	return adopted
}

func (s *Supervisor) adoptOne(ctx context.Context, sw savedWorker) error {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", sw.Info.PID))
	if err != nil {
		return errors.New("not running")
	}
	if sw.Base == "" && (!strings.Contains(string(cmdline), "rbee-worker") || !strings.Contains(string(cmdline), sw.Info.ID)) {
		return errors.New("the pid belongs to another process now")
	}
	// An external engine's command line says nothing of rbee: its start
	// time must match, or a process that got the pid after a reboot would
	// be adopted (and later killed with its group).
	if (sw.Start != "" || sw.Base != "") && startTime(sw.Info.PID) != sw.Start {
		return errors.New("the pid belongs to another process now (its start time differs)")
	}
	w := &Worker{info: sw.Info, chat: sw.Chat, engineDevice: sw.Engine, socket: sw.Socket,
		client: unixClient(sw.Socket), base: sw.Base}
	if sw.Base != "" {
		w.client = &http.Client{}
	} else {
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := w.readHealth(hctx); err != nil {
			return err
		}
	}
	// Attached after the health check: a worker that exits in between is
	// refused here, not watched.
	p, err := proc.Attach(sw.Info.PID, proc.Options{Log: sw.LogPath, Setpgid: true})
	if err != nil {
		return fmt.Errorf("adopt: %w", err)
	}
	w.proc = p
	w.info.State = "ready"
	s.track(w, "")
	// Its memory is charged again on its device: the VRAM checker of this
	// agent must count what the worker already holds.
	s.cfg.Reservations.Restore(w.info.ID, w.info.Device, sw.Info.MemoryBytes)
	s.cfg.Log.Info("adopted worker", "worker", w.info.ID, "pid", w.info.PID, "model", w.info.Model)
	return nil
}

// Release lets every worker go without stopping it, for the next agent:
// the state file stays, the processes keep running, StopAll stops none.
func (s *Supervisor) Release() {
	s.saveState()
	s.mu.Lock()
	s.released = true
	s.mu.Unlock()
}

// removeStaleSockets removes the worker sockets in the run directory that
// no tracked worker listens on: those of workers that died with the host.
func (s *Supervisor) removeStaleSockets() {
	live := map[string]bool{}
	for _, w := range s.all() {
		live[w.socket] = true
	}
	paths, _ := filepath.Glob(filepath.Join(s.cfg.RunDir, "w-*.sock"))
	var removed []string
	for _, p := range paths {
		if live[p] {
			continue
		}
		if err := os.Remove(p); err != nil {
			s.cfg.Log.Warn("remove stale worker socket", "socket", p, "err", err)
			continue
		}
		removed = append(removed, filepath.Base(p))
	}
	if len(removed) > 0 {
		s.cfg.Log.Info("removed the sockets of workers that are gone", "sockets", removed)
	}
}

// writeSynced writes b to p and syncs it, so the rename that follows
// never leaves an empty file after a crash.
func writeSynced(p string, b []byte) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
