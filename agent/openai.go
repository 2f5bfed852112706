package agent

import (
	"context"
	"fmt"
	"net/http"
	"strings"

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
	path := "/v1/" + endpoint
	switch endpoint {
	case "completions", "chat/completions", "embeddings":
	case "tokenize", "detokenize": // llama-server's paths have no /v1
		path = "/" + endpoint
	default:
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
		ws := workerStart{model: m, device: r.Header.Get(hiveapi.DeviceHeader), reservation: r.Header.Get(hiveapi.ReservationHeader), embeddings: embeddings}
		if wp, _, _, err = a.ensureWorker(ctx, ws, quietSend); err != nil {
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
	req, err := http.NewRequestWithContext(ctx, "POST", wp.URL(path), r.Body)
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
	if err := checkRPC(hiveapi.InferRequest{RPC: req.RPC, TensorSplit: req.TensorSplit}); err != nil {
		if req.Reservation != "" {
			a.vram.release(req.Reservation)
		}
		writeErr(w, http.StatusBadRequest, rbee.CodeBadRequest, err.Error())
		return
	}
	ws := workerStart{model: m, device: req.Device, reservation: req.Reservation, embeddings: req.Embeddings, deployment: req.Deployment,
		rpc: req.RPC, tensorSplit: req.TensorSplit}
	wp, _, _, err := a.ensureWorker(ctx, ws, quietSend)
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

// workerStart is what a worker for a model needs: the job's (rbee infer)
// and the front door's ask for it the same way.
type workerStart struct {
	model       catalog.Model
	device      string // "cpu", "gpuN", or "gpu0,gpu1" split across them
	backend     string // the bundle backend that drives device ("vulkan", "cuda"); "" = CPU
	reservation string // the VRAM checker's, charged to a new worker
	workerType  string // an external worker type; "" = rbee-worker
	embeddings  bool   // a worker started with --embeddings
	deployment  string // a new worker is kept loaded for it
	rpc         []string
	tensorSplit []float64
}

// ensureWorker returns a worker for ws: one this call starts, sized to
// the device and charged to the reservation, or — joined — one another
// call is starting for the same model, device and kind (the reservation is
// then released, as it is on failure). send hears the engine's
// installation and the start; engine is the bundle the worker runs.
func (a *Agent) ensureWorker(ctx context.Context, ws workerStart, send func(rbee.Event) error) (wp *supervisor.Worker, joined bool, engine string, err error) {
	if ws.device == "" {
		return nil, false, "", rbee.Errorf(rbee.CodeBadRequest, "a device or a worker is required")
	}
	var backend string
	var env []string
	if ws.workerType == "" {
		backend, env, ws.backend, err = a.deviceBackend(ctx, ws.device)
		if err == nil {
			engine, err = a.workerEngine(ctx, ws, send)
		}
		if err != nil {
			if ws.reservation != "" {
				a.vram.release(ws.reservation)
			}
			return nil, false, "", err
		}
	}
	m := ws.model
	spec := supervisor.Spec{ModelID: m.ID, ModelPath: m.Path, Device: ws.device, Backend: backend, Env: env, Reservation: ws.reservation, Engine: engine,
		Embeddings: ws.embeddings, Deployment: ws.deployment, RPC: ws.rpc, TensorSplit: ws.tensorSplit}
	key := supervisor.Key{Model: m.ID, Device: ws.device, Type: ws.workerType, RPC: strings.Join(ws.rpc, ","), Embeddings: ws.embeddings}
	wp, joined, err = a.sup.Ensure(ctx, key, func() (*supervisor.Worker, error) {
		if err := a.verifyModel(ctx, m); err != nil {
			return nil, err
		}
		_ = send(rbee.Narrate(actor(a.cfg.Name), "worker_starting", fmt.Sprintf("starting a worker for %s on %s", m.Path, ws.device)))
		if ws.workerType != "" {
			wt, err := a.workerType(ws.workerType)
			if err != nil {
				return nil, err
			}
			engine = "external " + wt.Name
			return a.sup.StartExternal(ctx, spec, wt)
		}
		spec.Slots, spec.CtxSize = a.size(ctx, m, ws.device, ws.reservation)
		wp, err := a.sup.Start(ctx, spec)
		return wp, a.engineFault(engine, err)
	})
	if ws.reservation != "" && (joined || err != nil) {
		a.vram.release(ws.reservation) // the worker we share took its own
	}
	return wp, joined, engine, err
}

// quietSend drops the events of a start nobody streams (the front door's).
func quietSend(rbee.Event) error { return nil }
