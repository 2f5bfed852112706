package queen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/modelfile"
)

// PullRequest is the body of POST /v1/models/pull: rbee model pull.
type PullRequest struct {
	Ref   string `json:"ref"`
	Hive  string `json:"hive,omitempty"`
	Alias string `json:"alias,omitempty"`
}

// hiveFor resolves and connects a hive by name ("" = localhost).
func (q *Queen) hiveFor(ctx context.Context, name string, narrate func(action, msg string)) (*hiveConn, error) {
	if name == "" {
		name = LocalHive
	}
	if n, err := q.db.CountHives(ctx); err == nil && n == 0 && name == LocalHive {
		if err := q.ensureLocalEntry(ctx); err != nil {
			return nil, err
		}
	}
	_, inv, err := q.resolveHive(ctx, name)
	if err != nil {
		return nil, err
	}
	if inv != nil {
		return q.connectRemote(ctx, *inv, false, narrate)
	}
	return q.localHive(ctx, narrate)
}

// fitBeforeFetch reads the model's GGUF header over HTTP (a few hundred
// KiB, not the weights) and refuses, with the numbers, a model that fits
// none of the hive's devices.
func (q *Queen) fitBeforeFetch(ctx context.Context, hc *hiveConn, hub *download.Hub, ref download.Ref, narrate func(action, msg string)) (download.Ref, error) {
	if ref.Kind == "hf" && ref.File == "" {
		r, err := hub.Resolve(ctx, ref)
		if err != nil {
			return ref, refError(err)
		}
		ref = r
	}
	weights, kv, ctxTrain, err := hub.Estimate(ctx, ref)
	if err != nil {
		return ref, refError(err)
	}
	ctxSize := 4096
	if ctxTrain > 0 {
		ctxSize = min(ctxSize, ctxTrain)
	}
	need := modelfile.Info{WeightsBytes: weights, KVBytesPerTok: kv}.Estimate(ctxSize)
	devs, err := hc.client.Devices(ctx)
	if err != nil {
		return ref, hiveError(err)
	}
	var best rbee.Device
	for _, d := range devs.Devices {
		if d.FreeBytes > best.FreeBytes {
			best = d
		}
	}
	if best.FreeBytes < need {
		return ref, &rbee.Error{Code: rbee.CodeNoRoom,
			Message: fmt.Sprintf("%s needs about %s (weights %s + KV cache for %d tokens); the roomiest device of hive %s, %s, has %s free: nothing was downloaded",
				ref.Raw, rbee.Bytes(need), rbee.Bytes(weights), ctxSize, hc.name, best.ID, rbee.Bytes(best.FreeBytes)),
			Hint: "pick a smaller quantization (hf:ORG/REPO:Q4_K_M) or another hive"}
	}
	narrate("model_fits", fmt.Sprintf("%s needs about %s: fits %s/%s (%s free), checked from its header before downloading",
		ref.Raw, rbee.Bytes(need), hc.name, best.ID, rbee.Bytes(best.FreeBytes)))
	return ref, nil
}

func refError(err error) error {
	switch {
	case errors.Is(err, download.ErrNotFound):
		return rbee.Errorf(rbee.CodeModelNotFound, "%v", err)
	case errors.Is(err, download.ErrAuth):
		return &rbee.Error{Code: rbee.CodeModelNotFound, Message: err.Error(), Hint: "set HF_TOKEN to a token with read access"}
	case errors.Is(err, download.ErrNotRef):
		return rbee.Errorf(rbee.CodeBadRequest, "%v", err)
	}
	return rbee.Errorf(rbee.CodeModelNotFound, "%v", err)
}

// pullOn has a hive download ref (after the fit check), relaying progress.
func (q *Queen) pullOn(ctx context.Context, hc *hiveConn, raw, alias string, send func(rbee.Event) error, narrate func(action, msg string)) (hiveapi.Model, error) {
	ref, err := download.ParseRef(raw)
	if err != nil {
		return hiveapi.Model{}, rbee.Errorf(rbee.CodeBadRequest, "%v", err)
	}
	// Already on the hive: no network at all.
	if ms, err := hc.client.Models(ctx); err == nil {
		for _, m := range ms {
			if m.Ref == raw {
				narrate("model_ready", fmt.Sprintf("%s is already on hive %s", raw, hc.name))
				return m, nil
			}
		}
	}
	// Another hive has it: copy across instead of downloading again.
	if m, ok, err := q.copyFromPeer(ctx, hc, raw, send); err != nil || ok {
		return m, err
	}
	hub := &download.Hub{Endpoint: os.Getenv("HF_ENDPOINT"), Token: os.Getenv("HF_TOKEN")}
	ref, err = q.fitBeforeFetch(ctx, hc, hub, ref, narrate)
	if err != nil {
		return hiveapi.Model{}, err
	}
	m, err := hc.client.Pull(ctx, hiveapi.PullRequest{Ref: ref.Raw, Alias: alias, Endpoint: hub.Endpoint, Token: hub.Token}, send)
	if err != nil {
		return hiveapi.Model{}, hiveError(err)
	}
	return m, nil
}

func (q *Queen) pullModel(w http.ResponseWriter, r *http.Request) {
	var req PullRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, rbee.CodeBadRequest, "pull: "+err.Error())
		return
	}
	if _, err := download.ParseRef(req.Ref); err != nil {
		writeErr(w, http.StatusBadRequest, rbee.CodeBadRequest, err.Error())
		return
	}
	q.streamOp(w, func(send func(rbee.Event) error) error {
		ctx := r.Context()
		narrate := func(action, msg string) { _ = send(rbee.Narrate(me, action, msg)) }
		hc, err := q.hiveFor(ctx, req.Hive, narrate)
		if err != nil {
			return err
		}
		m, err := q.pullOn(ctx, hc, req.Ref, req.Alias, send, narrate)
		if err != nil {
			return err
		}
		narrate("model_ready", fmt.Sprintf("%s is on hive %s as %s (%s %s, %s)", req.Ref, hc.name, m.ID, m.Arch, m.Quant, rbee.Bytes(uint64(m.Size))))
		return nil
	})
}

func (q *Queen) listModels(w http.ResponseWriter, r *http.Request) {
	hc, err := q.hiveFor(r.Context(), r.URL.Query().Get("hive"), func(string, string) {})
	if err != nil {
		writeErr(w, http.StatusBadGateway, rbee.CodeOf(err), err.Error())
		return
	}
	ms, err := hc.client.Models(r.Context())
	if err != nil {
		writeErr(w, http.StatusBadGateway, rbee.CodeHiveDown, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"hive": hc.name, "models": ms})
}

func (q *Queen) removeModel(w http.ResponseWriter, r *http.Request) {
	hc, err := q.hiveFor(r.Context(), r.URL.Query().Get("hive"), func(string, string) {})
	if err != nil {
		writeErr(w, http.StatusBadGateway, rbee.CodeOf(err), err.Error())
		return
	}
	if err := hc.client.RemoveModel(r.Context(), r.PathValue("key")); err != nil {
		e := hiveError(err)
		writeErr(w, http.StatusNotFound, rbee.CodeOf(e), e.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
