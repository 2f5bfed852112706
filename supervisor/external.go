package supervisor

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/internal/proc"
	"github.com/rbee-dev/rbee/poll"
)

// StartExternal runs an external engine from its worker type's template
// on a free loopback port and waits until its health path answers 200,
// ctx bounding the wait. On failure the process is gone.
func (s *Supervisor) StartExternal(ctx context.Context, spec Spec, wt hiveapi.WorkerType) (*Worker, error) {
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
	repl := strings.NewReplacer("{model}", spec.ModelPath, "{port}", strconv.Itoa(port), "{device}", dev, "{ctx}", strconv.Itoa(s.cfg.CtxSize))
	args := make([]string, len(wt.Args))
	for i, a := range wt.Args {
		args[i] = repl.Replace(a)
	}
	id := s.newID("x")
	env := os.Environ()
	if dev != "" {
		env = append(env, "CUDA_DEVICE_ORDER=PCI_BUS_ID", "CUDA_VISIBLE_DEVICES="+dev)
	}
	p, err := proc.Start(wt.Command, args, proc.Options{Log: filepath.Join(s.cfg.LogDir, id+".log"), Env: env, Setpgid: true})
	if err != nil {
		return nil, rbee.Errorf(rbee.CodeWorkerFailed, "start worker type %s (%s): %w", wt.Name, wt.Command, err)
	}
	now := time.Now()
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	w := &Worker{
		info: rbee.WorkerInfo{ID: id, Type: wt.Name, ModelID: spec.ModelID, Model: spec.ModelPath, Device: spec.Device,
			PID: p.PID(), State: "starting", Started: now, LastUsed: now},
		proc: p, client: &http.Client{}, base: base, engineDevice: "external",
	}
	s.track(w, spec.Reservation)
	err = poll.Until(ctx, poll.Config{Initial: 10 * time.Millisecond, Max: 500 * time.Millisecond, MaxAttempts: 1000, Timeout: s.cfg.ReadyTimeout},
		func(ctx context.Context) (bool, error) {
			select {
			case <-p.Exited():
				return false, poll.Permanent(rbee.Errorf(rbee.CodeWorkerFailed, "%s", w.ExitReason()))
			default:
			}
			req, err := http.NewRequestWithContext(ctx, "GET", base+wt.Health, nil)
			if err != nil {
				return false, poll.Permanent(err)
			}
			resp, err := w.client.Do(req)
			if err != nil {
				return false, err
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK, fmt.Errorf("health: %d", resp.StatusCode)
		})
	if err != nil {
		p.Stop(5 * time.Second)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, rbee.Errorf(rbee.CodeWorkerFailed, "worker type %s did not become healthy: %w (log: %s)", wt.Name, err, p.Log)
	}
	w.setReady()
	s.cfg.Reservations.Loaded(id)
	s.saveState()
	return w, nil
}
