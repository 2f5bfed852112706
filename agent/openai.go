package agent

import (
	"context"
	"fmt"
	"net/http"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/sse"
	"github.com/rbee-dev/rbee/supervisor"
)

// openai passes an OpenAI request (the queen's front door) to a worker:
// the warm one the Rbee-Worker header names, or one started — or joined —
// for the model and device the headers name, charging their reservation,
// as a job would. The worker's answer, streamed or not, goes back as it
// comes, status and all.
func (a *Agent) openai(w http.ResponseWriter, r *http.Request) {
	endpoint := r.PathValue("endpoint")
	if endpoint != "completions" && endpoint != "chat/completions" && endpoint != "embeddings" {
		writeErr(w, http.StatusNotFound, rbee.CodeBadRequest, fmt.Sprintf("no OpenAI endpoint %q on the hive", endpoint))
		return
	}
	embeddings := endpoint == "embeddings"
	ctx := r.Context()
	var wp *supervisor.Worker
	if id := r.Header.Get(hiveapi.WorkerHeader); id != "" {
		var ok bool
		if wp, ok = a.sup.Get(id); !ok {
			writeErr(w, http.StatusNotFound, rbee.CodeWorkerNotFound, fmt.Sprintf("worker %s is no longer running on hive %s", id, a.cfg.Name))
			return
		}
	} else {
		m, err := a.db.Model(ctx, r.Header.Get(hiveapi.ModelHeader))
		if err != nil {
			writeErr(w, http.StatusNotFound, rbee.CodeModelNotFound, fmt.Sprintf("model %q is not in hive %s's catalog", r.Header.Get(hiveapi.ModelHeader), a.cfg.Name))
			return
		}
		if wp, err = a.acquire(ctx, m, r.Header.Get(hiveapi.DeviceHeader), r.Header.Get(hiveapi.ReservationHeader), embeddings, ""); err != nil {
			writeError(w, http.StatusServiceUnavailable, err)
			return
		}
	}
	if info := wp.Info(); info.Embeddings != embeddings {
		writeErr(w, http.StatusConflict, rbee.CodeBadRequest, fmt.Sprintf("worker %s serves %s, not /v1/%s", info.ID, map[bool]string{true: "embeddings", false: "completions"}[info.Embeddings], endpoint))
		return
	}
	done := wp.Use()
	defer done()
	req, err := http.NewRequestWithContext(ctx, "POST", wp.URL("/v1/"+endpoint), r.Body)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := wp.Client().Do(req)
	if err != nil {
		writeErr(w, http.StatusBadGateway, rbee.CodeWorkerFailed, fmt.Sprintf("worker %s: %v", wp.Info().ID, err))
		return
	}
	defer resp.Body.Close()
	for _, h := range []string{"Content-Type", "Retry-After", "Cache-Control"} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.Header().Set(hiveapi.WorkerHeader, wp.Info().ID)
	w.WriteHeader(resp.StatusCode)
	sse.Copy(w, resp.Body)
}

// startWorker serves POST /v1/workers: the worker for a model on a device
// (running, joined or started), kept loaded for a deployment.
func (a *Agent) startWorker(w http.ResponseWriter, r *http.Request) {
	var req hiveapi.StartWorkerRequest
	if !readJSON(w, r, &req) {
		return
	}
	ctx := r.Context()
	m, err := a.db.Model(ctx, req.Model)
	if err != nil {
		if req.Reservation != "" {
			a.vram.release(req.Reservation)
		}
		writeErr(w, http.StatusNotFound, rbee.CodeModelNotFound, fmt.Sprintf("model %q is not in hive %s's catalog", req.Model, a.cfg.Name))
		return
	}
	wp, err := a.acquire(ctx, m, req.Device, req.Reservation, req.Embeddings, req.Deployment)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return
	}
	if err := a.sup.SetDeployment(wp.Info().ID, req.Deployment); err != nil {
		writeErr(w, http.StatusNotFound, rbee.CodeWorkerNotFound, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, wp.Info())
}

// setDeployment serves PUT /v1/workers/{id}/deployment.
func (a *Agent) setDeployment(w http.ResponseWriter, r *http.Request) {
	var req hiveapi.DeploymentRequest
	if !readJSON(w, r, &req) {
		return
	}
	if err := a.sup.SetDeployment(r.PathValue("id"), req.Deployment); err != nil {
		writeErr(w, http.StatusNotFound, rbee.CodeWorkerNotFound, fmt.Sprintf("no worker %s on hive %s", r.PathValue("id"), a.cfg.Name))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// acquire returns a worker for model m on device: a running one, or one
// this call starts (or joins), sized to the device and charged to the
// reservation, which is released when it is not needed. embeddings picks
// a worker started with --embeddings; deployment marks a new one kept
// loaded.
func (a *Agent) acquire(ctx context.Context, m catalog.Model, device, reservation string, embeddings bool, deployment string) (*supervisor.Worker, error) {
	if device == "" {
		return nil, rbee.Errorf(rbee.CodeBadRequest, "a device or a worker is required")
	}
	engine, err := a.pickEngine(ctx, device, func(rbee.Event) error { return nil })
	if err != nil {
		if reservation != "" {
			a.vram.release(reservation)
		}
		return nil, err
	}
	spec := supervisor.Spec{ModelID: m.ID, ModelPath: m.Path, Device: device, Reservation: reservation, Engine: engine, Embeddings: embeddings, Deployment: deployment}
	wp, joined, err := a.sup.Ensure(ctx, supervisor.Key{Model: m.ID, Device: device, Embeddings: embeddings}, func() (*supervisor.Worker, error) {
		if err := a.verifyModel(ctx, m); err != nil {
			return nil, err
		}
		spec.Slots, spec.CtxSize = a.size(ctx, m, device, reservation)
		return a.sup.Start(ctx, spec)
	})
	if reservation != "" && (joined || err != nil) {
		a.vram.release(reservation)
	}
	return wp, err
}
