package queen

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/scheduler"
	"github.com/rbee-dev/rbee/sse"
)

const me = "queen"

// job runs one inference job and streams its events.
func (q *Queen) job(w http.ResponseWriter, r *http.Request) {
	var req JobRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 8<<20)).Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, rbee.CodeBadRequest, "job request: "+err.Error())
		return
	}
	if err := validate(req); err != nil {
		writeErr(w, http.StatusBadRequest, rbee.CodeOf(err), err.Error())
		return
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	id := "job-" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	q.mu.Lock()
	q.jobs[id] = cancel
	q.mu.Unlock()
	defer func() {
		q.mu.Lock()
		delete(q.jobs, id)
		q.mu.Unlock()
	}()

	sw := sse.NewWriter(w)
	defer sw.Close()
	send := func(ev rbee.Event) error {
		ev.Job = id
		if ev.Time.IsZero() {
			ev.Time = time.Now()
		}
		return sw.Send(ev)
	}
	_ = send(rbee.Event{Type: rbee.EventJob, Actor: me, Message: "job " + id})
	narrate := func(action, msg string) { _ = send(rbee.Narrate(me, action, msg)) }
	if err := q.run(ctx, id, req, sw, send, narrate); err != nil {
		if ctx.Err() != nil {
			q.log.Info("job cancelled", "job", id)
			return
		}
		ev := rbee.Fail(me, rbee.CodeOf(err), err.Error())
		var re *rbee.Error
		if errors.As(err, &re) && re.Hint != "" {
			ev.Message += "\nhint: " + re.Hint
		}
		_ = send(ev)
	}
}

func validate(req JobRequest) error {
	switch {
	case req.Prompt == "":
		return rbee.Errorf(rbee.CodeBadRequest, "the prompt is empty")
	case req.Model == "":
		return rbee.Errorf(rbee.CodeBadRequest, "no model given (--model)")
	case req.MaxTokens < 0:
		return rbee.Errorf(rbee.CodeBadRequest, "max tokens must not be negative")
	case req.Temperature != nil && (*req.Temperature < 0 || *req.Temperature > 2):
		return rbee.Errorf(rbee.CodeBadRequest, "temperature must be between 0 and 2")
	case req.Mode != "" && req.Mode != "auto" && req.Mode != "chat" && req.Mode != "raw":
		return rbee.Errorf(rbee.CodeBadRequest, "mode %q: want auto, chat or raw", req.Mode)
	case !filepath.IsAbs(req.Model) && !isRef(req.Model):
		return rbee.Errorf(rbee.CodeBadRequest, "model %q: give an absolute path, https://…/file.gguf or hf:ORG/REPO[/FILE]", req.Model)
	}
	return nil
}

// run is the happy flow, steps 3–9 of DESIGN.md.
func (q *Queen) run(ctx context.Context, id string, req JobRequest, sw *sse.Writer, send func(rbee.Event) error, narrate func(action, msg string)) error {
	narrate("job_accepted", fmt.Sprintf("job %s accepted", id))
	name := req.Hive
	// 3. The hive catalog.
	n, err := q.db.CountHives(ctx)
	if err != nil {
		return err
	}
	if n == 0 {
		if err := q.ensureLocalEntry(ctx); err != nil {
			return err
		}
		narrate("hive_added", "the hive catalog is empty: added this machine as hive localhost")
	}
	if name == "" {
		if name, err = q.pickHive(ctx, req, send, narrate); err != nil {
			return err
		}
	}
	entry, inv, err := q.resolveHive(ctx, name)
	if err != nil {
		return err
	}

	// 4. The hive agent, running and handshaken.
	var h *hiveConn
	if inv != nil {
		h, err = q.connectRemote(ctx, *inv, false, narrate)
	} else {
		h, err = q.localHive(ctx, narrate)
	}
	if err != nil {
		q.markOffline(name, err)
		return err
	}
	_ = q.db.UpsertHive(ctx, catalog.Hive{Name: name, Kind: entry.Kind, Host: entry.Host, Port: entry.Port, User: entry.User,
		Status: "online", AgentVersion: h.handshake.Version, Added: entry.Added, LastSeen: time.Now(),
		Capabilities: map[string]string{"os": h.handshake.OS, "arch": h.handshake.Arch}})

	// Devices: probed on first contact, and again for each job's free memory.
	devs, err := h.client.Devices(ctx)
	if err != nil {
		return rbee.Errorf(rbee.CodeHiveDown, "hive %s: devices: %v", name, err)
	}
	if entry.DevicesAt.IsZero() || h.devices == nil {
		narrate("devices_detected", fmt.Sprintf("hive %s has %s", name, describeDevices(devs.Devices)))
	}
	h.devices = devs.Devices
	_ = q.db.SetDevices(ctx, name, devs.Devices, time.Now())

	// The model, on the hive (pushed there when the hive is remote) and in
	// its catalog (size, sha256, estimate).
	var model hiveapi.Model
	if _, rerr := download.ParseRef(req.Model); rerr == nil {
		// A reference: downloaded by the hive itself, after the fit check.
		if model, err = q.pullOn(ctx, h, req.Model, "", send, narrate); err != nil {
			return err
		}
	} else {
		modelPath := req.Model
		if h.remote != nil {
			if modelPath, err = q.pushModel(ctx, h, req.Model, send); err != nil {
				return err
			}
		}
		if model, err = h.client.AddModel(ctx, hiveapi.AddModelRequest{Path: modelPath, Ref: req.Model}); err != nil {
			return hiveError(err)
		}
	}
	shown := model.Ref
	if filepath.IsAbs(shown) {
		shown = filepath.Base(shown)
	}
	narrate("model_ready", fmt.Sprintf("model %s: %s %s, %s on disk, needs about %s with a %d-token context",
		shown, model.Arch, model.Quant, rbee.Bytes(uint64(model.Size)), rbee.Bytes(model.EstimateBytes), model.CtxSize))

	// 5. The scheduler, on the registries.
	workers, err := h.client.Workers(ctx)
	if err != nil {
		return hiveError(err)
	}
	q.syncWorkers(name, workers)
	plan, err := q.sched.Plan(scheduler.Request{ModelSHA256: model.SHA256, Need: model.EstimateBytes, Hive: name, Device: req.Device, WorkerType: req.WorkerType},
		[]scheduler.Hive{{Name: name, Devices: devs.Devices, Workers: workers, HasModel: true, ModelID: model.ID}})
	if req.Explain {
		_ = send(rbee.Event{Type: rbee.EventNarration, Actor: me, Action: "explain", Message: explainText(plan.Candidates), Candidates: plan.Candidates})
	}
	if err != nil {
		return err
	}
	ireq := hiveapi.InferRequest{Job: id, Model: model.ID, Prompt: req.Prompt, Mode: req.Mode, WorkerType: req.WorkerType,
		MaxTokens: req.MaxTokens, Temperature: req.Temperature, Seed: req.Seed}
	if plan.Warm != nil {
		narrate("device_picked", "scheduler: "+plan.WarmReason)
		ireq.Worker = plan.Warm.ID
	} else {
		// 6. Admission by the hive's VRAM checker, down the list.
		var refusals []string
		for i, opt := range plan.Options {
			if i == 0 {
				narrate("device_picked", fmt.Sprintf("scheduler picked %s/%s: %s", opt.Hive, opt.Device.ID, opt.Reason))
			} else {
				narrate("device_picked", fmt.Sprintf("trying the next candidate %s/%s: %s", opt.Hive, opt.Device.ID, opt.Reason))
			}
			res, err := h.client.Reserve(ctx, hiveapi.ReserveRequest{Device: opt.Device.ID, Bytes: model.EstimateBytes, Purpose: id})
			var ae *hiveapi.APIError
			if errors.As(err, &ae) && ae.Status == http.StatusConflict {
				refusals = append(refusals, ae.Body.Message)
				ev := rbee.Narrate(me, "room_refused", fmt.Sprintf("hive %s refused %s: %s", opt.Hive, opt.Device.ID, ae.Body.Message))
				ev.Level = "warn"
				_ = send(ev)
				continue
			}
			if err != nil {
				return hiveError(err)
			}
			narrate("room_checked", fmt.Sprintf("hive %s reserved %s on %s", opt.Hive, rbee.Bytes(model.EstimateBytes), opt.Device.ID))
			ireq.Device, ireq.Reservation = opt.Device.ID, res
			break
		}
		if ireq.Device == "" {
			return rbee.Errorf(rbee.CodeNoRoom, "no device has room for %s (needs %s): %s", filepath.Base(model.Path),
				rbee.Bytes(model.EstimateBytes), strings.Join(refusals, "; "))
		}
	}

	// 7–9. The hive starts or reuses the worker and streams; we relay.
	err = h.client.InferRaw(ctx, ireq, func(evType string, data []byte) error {
		if evType == rbee.EventToken {
			return sw.SendRaw(evType, data) // the hot path: tokens pass untouched
		}
		var ev rbee.Event
		if err := json.Unmarshal(data, &ev); err != nil {
			return fmt.Errorf("hive %s: decode event: %w", name, err)
		}
		if ev.Worker != nil {
			wi := *ev.Worker
			wi.Hive = name
			q.mu.Lock()
			q.workers[wi.ID] = wi
			q.mu.Unlock()
		}
		if ev.Type == rbee.EventError && (ev.Code == rbee.CodeWorkerCrashed || ev.Code == rbee.CodeWorkerNotFound) {
			q.forgetWorkers(ctx, h, name)
		}
		return send(ev)
	})
	if err != nil {
		if h.remote != nil && ctx.Err() == nil {
			select {
			case <-h.remote.conn.Done():
				err = rbee.Errorf(rbee.CodeHiveDown, "hive %s: the SSH connection broke: %v", name, h.remote.conn.Err())
			default:
			}
		}
		err = hiveError(err)
		if rbee.CodeOf(err) == rbee.CodeHiveDown {
			q.markOffline(name, err)
		}
		return err
	}
	return nil
}

// syncWorkers replaces the registry's view of a hive's workers.
func (q *Queen) syncWorkers(hive string, ws []rbee.WorkerInfo) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for id, w := range q.workers {
		if w.Hive == hive {
			delete(q.workers, id)
		}
	}
	for _, w := range ws {
		w.Hive = hive
		q.workers[w.ID] = w
	}
}

// forgetWorkers refreshes the registry after a worker died.
func (q *Queen) forgetWorkers(ctx context.Context, h *hiveConn, hive string) {
	ws, err := h.client.Workers(context.WithoutCancel(ctx))
	if err != nil {
		return
	}
	q.syncWorkers(hive, ws)
}

// hiveError turns a hive API error into an rbee error with its code.
func hiveError(err error) error {
	var ae *hiveapi.APIError
	if errors.As(err, &ae) {
		return &rbee.Error{Code: ae.Body.Code, Message: ae.Body.Message}
	}
	var re *rbee.Error
	if errors.As(err, &re) {
		return err
	}
	return rbee.Errorf(rbee.CodeHiveDown, "%v", err)
}

func describeDevices(ds []rbee.Device) string {
	var parts []string
	for _, d := range ds {
		if d.Kind == "gpu" {
			parts = append(parts, fmt.Sprintf("%s %s (%s, compute %s)", d.ID, d.Name, rbee.Bytes(d.TotalBytes), d.ComputeCap))
		} else {
			parts = append(parts, fmt.Sprintf("cpu %s (%d cores, %s RAM)", d.Name, d.Cores, rbee.Bytes(d.TotalBytes)))
		}
	}
	return fmt.Sprintf("%d device(s): %s", len(ds), strings.Join(parts, "; "))
}

func explainText(cs []rbee.Candidate) string {
	var b strings.Builder
	b.WriteString("candidates:")
	for _, c := range cs {
		fmt.Fprintf(&b, "\n  %s/%s %s: %s", c.Hive, c.Device, c.Name, c.Verdict)
	}
	return b.String()
}


func isRef(s string) bool {
	_, err := download.ParseRef(s)
	return err == nil
}

// ensureLocalEntry adds the local machine as hive localhost.
func (q *Queen) ensureLocalEntry(ctx context.Context) error {
	err := q.db.AddHive(ctx, catalog.Hive{Name: LocalHive, Kind: "local", Status: "unknown", Added: time.Now()})
	if err != nil && !errors.Is(err, catalog.ErrExists) {
		return err
	}
	return nil
}
