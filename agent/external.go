package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/poll"
)

var typeName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

func (a *Agent) typesDir() string { return filepath.Join(a.cfg.Home, "worker-types") }

// addWorkerType declares an external OpenAI-speaking engine.
func (a *Agent) addWorkerType(w http.ResponseWriter, r *http.Request) {
	var wt hiveapi.WorkerType
	if !readJSON(w, r, &wt) {
		return
	}
	if err := a.AddWorkerType(r.Context(), wt); err != nil {
		writeErr(w, http.StatusUnprocessableEntity, rbee.CodeOf(err), err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// AddWorkerType checks a worker type and records it: its template in
// ~/.rbee/worker-types/NAME.json, an entry in the worker catalog.
func (a *Agent) AddWorkerType(ctx context.Context, wt hiveapi.WorkerType) error {
	switch {
	case !typeName.MatchString(wt.Name):
		return rbee.Errorf(rbee.CodeBadRequest, "worker type name %q: use lowercase letters, digits and '-'", wt.Name)
	case !filepath.IsAbs(wt.Command):
		return rbee.Errorf(rbee.CodeBadRequest, "worker type %s: command %q must be an absolute path on hive %s", wt.Name, wt.Command, a.cfg.Name)
	case !strings.HasPrefix(wt.Health, "/"):
		return rbee.Errorf(rbee.CodeBadRequest, "worker type %s: health %q must be a path such as /health", wt.Name, wt.Health)
	case !strings.Contains(strings.Join(wt.Args, " "), "{model}") || !strings.Contains(strings.Join(wt.Args, " "), "{port}"):
		return rbee.Errorf(rbee.CodeBadRequest, "worker type %s: the arguments must place {model} and {port}", wt.Name)
	}
	st, err := os.Stat(wt.Command)
	if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return rbee.Errorf(rbee.CodeBadRequest, "worker type %s: %s is not an executable file on hive %s", wt.Name, wt.Command, a.cfg.Name)
	}
	if err := os.MkdirAll(a.typesDir(), 0o700); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(wt, "", "  ")
	p := filepath.Join(a.typesDir(), wt.Name+".json")
	if err := os.WriteFile(p+".tmp", b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		return err
	}
	return a.db.AddWorkerBinary(ctx, catalog.WorkerBinary{ID: "external-" + wt.Name + "-template", Type: "external-" + wt.Name,
		Version: "template", Path: p, Capabilities: []string{"openai", "external"}, Added: time.Now()})
}

func (a *Agent) workerType(name string) (hiveapi.WorkerType, error) {
	var wt hiveapi.WorkerType
	if !typeName.MatchString(name) {
		return wt, rbee.Errorf(rbee.CodeBadRequest, "worker type %q: not a valid name", name)
	}
	b, err := os.ReadFile(filepath.Join(a.typesDir(), name+".json"))
	if err != nil {
		return wt, rbee.Errorf(rbee.CodeWorkerFailed, "hive %s has no worker type %q (rbee worker add-type declares one)", a.cfg.Name, name)
	}
	err = json.Unmarshal(b, &wt)
	return wt, err
}

// startExternal runs an external engine from its template on a free
// loopback port and waits until its health path answers 200.
func (s *supervisor) startExternal(ctx context.Context, spec startSpec, wt hiveapi.WorkerType) (*workerProc, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", wt.Name, err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dev := ""
	if strings.HasPrefix(spec.Device, "gpu") {
		dev = strings.TrimPrefix(spec.Device, "gpu")
	}
	repl := strings.NewReplacer("{model}", spec.ModelPath, "{port}", strconv.Itoa(port), "{device}", dev, "{ctx}", strconv.Itoa(s.ctxSize))
	args := make([]string, len(wt.Args))
	for i, a := range wt.Args {
		args[i] = repl.Replace(a)
	}
	s.mu.Lock()
	s.next++
	id := fmt.Sprintf("x-%d-%d", os.Getpid(), s.next)
	s.mu.Unlock()
	logPath := filepath.Join(s.logDir, id+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(wt.Command, args...)
	cmd.Env = os.Environ()
	if dev != "" {
		cmd.Env = append(cmd.Env, "CUDA_DEVICE_ORDER=PCI_BUS_ID", "CUDA_VISIBLE_DEVICES="+dev)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, rbee.Errorf(rbee.CodeWorkerFailed, "start worker type %s (%s): %v", wt.Name, wt.Command, err)
	}
	now := time.Now()
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	w := &workerProc{
		info: rbee.WorkerInfo{ID: id, Type: wt.Name, ModelID: spec.ModelID, Model: spec.ModelPath, Device: spec.Device,
			PID: cmd.Process.Pid, State: "starting", Started: now, LastUsed: now},
		cmd: cmd, exited: make(chan struct{}), logPath: logPath, client: &http.Client{}, base: base, engineDevice: "external",
	}
	if spec.Reservation != "" {
		s.vram.attach(spec.Reservation, id)
	}
	s.mu.Lock()
	s.workers[id] = w
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := cmd.Wait()
		logf.Close()
		w.mu.Lock()
		w.err = err
		w.mu.Unlock()
		close(w.exited)
		s.forget(w)
	}()
	err = poll.Until(ctx, poll.Config{Initial: 10 * time.Millisecond, Max: 500 * time.Millisecond, MaxAttempts: 1000, Timeout: 2 * time.Minute},
		func(ctx context.Context) (bool, error) {
			select {
			case <-w.exited:
				return false, poll.Permanent(rbee.Errorf(rbee.CodeWorkerFailed, "%s", w.exitReason()))
			default:
			}
			req, _ := http.NewRequestWithContext(ctx, "GET", base+wt.Health, nil)
			resp, err := w.client.Do(req)
			if err != nil {
				return false, err
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK, fmt.Errorf("health: %d", resp.StatusCode)
		})
	if err != nil {
		s.stopProc(w, 5*time.Second)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, rbee.Errorf(rbee.CodeWorkerFailed, "worker type %s did not become healthy: %v (log: %s)", wt.Name, err, logPath)
	}
	w.mu.Lock()
	w.info.State = "ready"
	w.mu.Unlock()
	s.vram.loaded(id)
	return w, nil
}
