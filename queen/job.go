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

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/queen/fleet"
	"github.com/rbee-dev/rbee/queen/internal/reply"
	"github.com/rbee-dev/rbee/queen/split"
	"github.com/rbee-dev/rbee/queenapi"
	"github.com/rbee-dev/rbee/sse"
)

const me = "queen"

// job runs one inference job and streams its events.
func (q *Queen) job(w http.ResponseWriter, r *http.Request) {
	var req queenapi.JobRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 8<<20)).Decode(&req); err != nil {
		reply.Error(w, http.StatusBadRequest, rbee.Errorf(rbee.CodeBadRequest, "job request: %w", err))
		return
	}
	if err := validate(req); err != nil {
		reply.Error(w, http.StatusBadRequest, err)
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
		reply.Error(w, http.StatusServiceUnavailable, rbee.Errorf(rbee.CodeQueenDown, "%w", ErrShuttingDown))
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
	ev := fleet.Stream{ID: id, SW: sw}
	ev.Send(rbee.Event{Type: rbee.EventJob, Actor: me, Message: "job " + id})
	if err := q.run(ctx, id, req, ev); err != nil {
		if errors.Is(context.Cause(ctx), ErrShuttingDown) {
			ev.Send(rbee.FailErr(me, rbee.Errorf(rbee.CodeQueenDown, "job %s: %w", id, ErrShuttingDown).
				WithHint("run it again once the queen is back (rbee starts it on demand)")))
			return
		}
		if ctx.Err() != nil {
			q.log.Info("job cancelled", "job", id)
			return
		}
		ev.Send(rbee.FailErr(me, err))
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
	return split.Validate(req)
}

// run is the happy flow, steps 3–9 of DESIGN.md: the model parsed once,
// the candidate hives, one plan across them with admission, then the
// hive starts or reuses the worker and the queen relays its stream.
func (q *Queen) run(ctx context.Context, id string, req queenapi.JobRequest, ev fleet.Events) error {
	ev.Narrate("job_accepted", fmt.Sprintf("job %s accepted", id))
	var spec *fleet.ModelSpec
	var err error
	if isName(req.Model) {
		spec, err = q.door.ResolveName(ctx, req.Model) // an alias, a deployment, a catalog id or file name
	} else {
		spec, err = q.fleet.ParseModel(ctx, req.Model)
	}
	if err != nil {
		return err
	}
	if len(req.Split) > 0 {
		return q.splits.Job(ctx, id, req, spec, ev)
	}
	hives, err := q.fleet.Candidates(ctx, req.Hive, ev)
	if err != nil {
		return err
	}
	many := req.Hive == "" && len(hives) > 1
	var snaps map[string]fleet.Snapshot
	if many && req.Device == "" && req.WorkerType == "" {
		// Taken once: a model no single device holds is planned as a
		// split over the same snapshots.
		if snaps, err = q.fleet.Snapshots(ctx, hives, ev); err != nil {
			return err
		}
	}
	pl, err := q.fleet.Place(ctx, fleet.PlaceJob{ID: id, Spec: spec, Device: req.Device, WorkerType: req.WorkerType,
		Explain: req.Explain, Fleet: many, Snaps: snaps}, hives, ev)
	if rbee.CodeOf(err) == rbee.CodeNoRoom && snaps != nil {
		return q.splits.Auto(ctx, id, req, spec, snaps, err, ev)
	}
	if err != nil {
		return err
	}
	ireq := hiveapi.InferRequest{Job: id, Model: pl.Model.ID, Prompt: req.Prompt, Mode: req.Mode, WorkerType: req.WorkerType,
		MaxTokens: req.MaxTokens, Temperature: req.Temperature, Seed: req.Seed,
		Worker: pl.Worker, Device: pl.Device, Reservation: pl.Reservation}
	return q.fleet.Relay(ctx, pl.Hive, ireq, ev)
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
