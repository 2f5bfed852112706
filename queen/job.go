package queen

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/queenapi"
	"github.com/rbee-dev/rbee/sse"
)

const me = "queen"

// jobEvents sends a job's events on its stream.
type jobEvents struct {
	id string
	sw *sse.Writer
}

func (e jobEvents) send(ev rbee.Event) {
	if e.id != "" {
		ev.Job = e.id
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	_ = e.sw.Send(ev)
}

func (e jobEvents) narrate(action, msg string) { e.send(rbee.Narrate(me, action, msg)) }

// job runs one inference job and streams its events.
func (q *Queen) job(w http.ResponseWriter, r *http.Request) {
	var req queenapi.JobRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 8<<20)).Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, rbee.Errorf(rbee.CodeBadRequest, "job request: %w", err))
		return
	}
	if err := validate(req); err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	id := "job-" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	q.mu.Lock()
	select {
	case <-q.closing:
		q.mu.Unlock()
		writeErr(w, http.StatusServiceUnavailable, rbee.Errorf(rbee.CodeQueenDown, "%w", ErrShuttingDown))
		return
	default:
	}
	q.jobs[id] = cancel
	q.running.Add(1)
	q.mu.Unlock()
	defer q.running.Done()
	defer func() {
		q.mu.Lock()
		delete(q.jobs, id)
		q.mu.Unlock()
	}()

	sw := sse.NewWriter(w)
	defer sw.Close()
	ev := jobEvents{id: id, sw: sw}
	ev.send(rbee.Event{Type: rbee.EventJob, Actor: me, Message: "job " + id})
	if err := q.run(ctx, id, req, ev); err != nil {
		if errors.Is(context.Cause(ctx), ErrShuttingDown) {
			ev.send(rbee.FailErr(me, rbee.Errorf(rbee.CodeQueenDown, "job %s: %w", id, ErrShuttingDown).
				WithHint("run it again once the queen is back (rbee starts it on demand)")))
			return
		}
		if ctx.Err() != nil {
			q.log.Info("job cancelled", "job", id)
			return
		}
		ev.send(rbee.FailErr(me, err))
	}
}

func validate(req queenapi.JobRequest) error {
	switch {
	case req.Prompt == "":
		return rbee.Errorf(rbee.CodeBadRequest, "the prompt is empty")
	case req.Model == "":
		return rbee.Errorf(rbee.CodeBadRequest, "no model given (--model)")
	case req.MaxTokens < 0:
		return rbee.Errorf(rbee.CodeBadRequest, "max tokens must not be negative")
	case req.Temperature != nil && (math.IsNaN(*req.Temperature) || *req.Temperature < 0 || *req.Temperature > 2):
		return rbee.Errorf(rbee.CodeBadRequest, "temperature must be between 0 and 2")
	case req.Mode != "" && req.Mode != "auto" && req.Mode != "chat" && req.Mode != "raw":
		return rbee.Errorf(rbee.CodeBadRequest, "mode %q: want auto, chat or raw", req.Mode)
	}
	return validateSplit(req)
}

// validateSplit checks --split before anything reaches a hive.
func validateSplit(req queenapi.JobRequest) error {
	if len(req.Split) == 0 {
		return nil
	}
	switch {
	case req.Hive != "":
		return rbee.Errorf(rbee.CodeBadRequest, "--split and --hive: give one (--split names every hive)")
	case req.Device != "":
		return rbee.Errorf(rbee.CodeBadRequest, "--split and --device: the split picks each hive's roomiest device")
	case req.WorkerType != "":
		return rbee.Errorf(rbee.CodeBadRequest, "--split and --worker-type: only rbee-worker offloads to RPC servers")
	case len(req.Split) < 2:
		return rbee.Errorf(rbee.CodeBadRequest, "--split %s: name at least two hives", strings.Join(req.Split, ","))
	}
	seen := map[string]bool{}
	for _, n := range req.Split {
		if n == "" {
			return rbee.Errorf(rbee.CodeBadRequest, "--split %q: an empty hive name", strings.Join(req.Split, ","))
		}
		if seen[n] {
			return rbee.Errorf(rbee.CodeBadRequest, "--split: hive %s named twice", n)
		}
		seen[n] = true
	}
	return nil
}

// run is the happy flow, steps 3–9 of DESIGN.md: the model parsed once,
// the candidate hives, one plan across them with admission, then the
// hive starts or reuses the worker and the queen relays its stream.
func (q *Queen) run(ctx context.Context, id string, req queenapi.JobRequest, ev events) error {
	ev.narrate("job_accepted", fmt.Sprintf("job %s accepted", id))
	var spec *ModelSpec
	var err error
	if isName(req.Model) {
		spec, err = q.resolveName(ctx, req.Model) // an alias, a deployment, a catalog id or file name
	} else {
		spec, err = q.parseModel(ctx, req.Model)
	}
	if err != nil {
		return err
	}
	if len(req.Split) > 0 {
		return q.splitJob(ctx, id, req, spec, ev)
	}
	hives, err := q.candidates(ctx, req.Hive, ev)
	if err != nil {
		return err
	}
	fleet := req.Hive == "" && len(hives) > 1
	var snaps map[string]Snapshot
	if fleet && req.Device == "" && req.WorkerType == "" {
		// Taken once: a model no single device holds is planned as a
		// split over the same snapshots.
		if snaps, err = q.plan.snapshots(ctx, hives, ev); err != nil {
			return err
		}
	}
	pl, err := q.plan.place(ctx, placeJob{ID: id, Spec: spec, Device: req.Device, WorkerType: req.WorkerType,
		Explain: req.Explain, Fleet: fleet, Snaps: snaps}, hives, ev)
	if rbee.CodeOf(err) == rbee.CodeNoRoom && snaps != nil {
		return q.autoSplit(ctx, id, req, spec, snaps, err, ev)
	}
	if err != nil {
		return err
	}
	ireq := hiveapi.InferRequest{Job: id, Model: pl.model.ID, Prompt: req.Prompt, Mode: req.Mode, WorkerType: req.WorkerType,
		MaxTokens: req.MaxTokens, Temperature: req.Temperature, Seed: req.Seed,
		Worker: pl.worker, Device: pl.device, Reservation: pl.reservation}
	return q.relay(ctx, pl.hive, ireq, ev)
}

// candidates are the hives a job may run on: the one it names, or this
// machine and every enabled hive of the inventory.
func (q *Queen) candidates(ctx context.Context, pinned string, ev events) ([]Hive, error) {
	n, err := q.db.CountHives(ctx)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		if err := q.ensureLocalEntry(ctx); err != nil {
			return nil, err
		}
		ev.narrate("hive_added", "the hive catalog is empty: added this machine as hive localhost")
	}
	if pinned != "" {
		if _, _, err := q.resolveHive(ctx, pinned); err != nil {
			return nil, err
		}
		return []Hive{&liveHive{q: q, name: pinned}}, nil
	}
	inv, err := q.loadInventory()
	if err != nil {
		return nil, err
	}
	hives := []Hive{&liveHive{q: q, name: LocalHive}}
	for _, h := range inv.Hives {
		if !h.Disabled && h.Name != LocalHive {
			hives = append(hives, &liveHive{q: q, name: h.Name, fleet: true})
		}
	}
	return hives, nil
}

// relay runs the prompt on the placed hive and passes its stream on:
// tokens untouched, other events decoded to keep the worker registry.
func (q *Queen) relay(ctx context.Context, h Hive, ireq hiveapi.InferRequest, ev events) error {
	name := h.Name()
	jev, _ := ev.(jobEvents)
	err := h.Infer(ctx, ireq, func(evType string, data []byte) error {
		if evType == rbee.EventToken && jev.sw != nil {
			return jev.sw.SendRaw(evType, data) // the hot path: tokens pass untouched
		}
		var e rbee.Event
		if err := json.Unmarshal(data, &e); err != nil {
			return fmt.Errorf("hive %s: decode event: %w", name, err)
		}
		if e.Worker != nil {
			wi := *e.Worker
			wi.Hive = name
			q.mu.Lock()
			q.workers[wi.ID] = wi
			q.mu.Unlock()
		}
		if e.Type == rbee.EventError && (e.Code == rbee.CodeWorkerCrashed || e.Code == rbee.CodeWorkerNotFound) {
			if s, err := h.Snapshot(context.WithoutCancel(ctx), quietEvents{}); err == nil {
				q.syncWorkers(name, s.Workers)
			}
		}
		ev.send(e)
		return nil
	})
	if err != nil && ctx.Err() == nil && rbee.CodeOf(err) == rbee.CodeHiveDown {
		q.setStatus(name, false, err.Error())
	}
	return err
}

// isName says whether a job's model is a name (alias, deployment, catalog
// id, a model's file name) rather than a path or a reference.
func isName(model string) bool {
	if filepath.IsAbs(model) || strings.Contains(model, "/") {
		return false
	}
	_, err := download.ParseRef(model)
	return err != nil
}
