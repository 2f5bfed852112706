package queen

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/queenapi"
)

// hiveFor resolves and connects a hive by name ("" = localhost).
func (q *Queen) hiveFor(ctx context.Context, name string, narrate func(action, msg string)) (*hiveConn, error) {
	if name == "" {
		name = LocalHive
	}
	if _, _, err := q.resolveHive(ctx, name); err != nil {
		return nil, err
	}
	return q.hiveConn(ctx, name, narrate)
}

// pull has a hive download a reference, relaying its progress. The fit
// check was made on the header already (placing a job, or pullModel).
func (q *Queen) pull(ctx context.Context, hc *hiveConn, spec *ModelSpec, alias string, ev events) (hiveapi.Model, error) {
	hub := q.hub()
	m, err := hc.client.Pull(ctx, hiveapi.PullRequest{Ref: spec.Raw, Alias: alias, Endpoint: hub.Endpoint, Token: hub.Token},
		func(e rbee.Event) error { ev.send(e); return nil })
	if err != nil {
		return hiveapi.Model{}, hiveError(err)
	}
	return m, nil
}

// pullModel is rbee model pull: the model onto one hive, planned like a
// job (already there, copied from a peer, or fetched after the fit check
// on its header), without starting a worker.
func (q *Queen) pullModel(w http.ResponseWriter, r *http.Request) {
	var req queenapi.PullRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, rbee.Errorf(rbee.CodeBadRequest, "pull: %w", err))
		return
	}
	local := filepath.IsAbs(req.Ref) // a GGUF on this machine: named, and pushed to the hive
	if _, err := download.ParseRef(req.Ref); err != nil && !local {
		writeErr(w, http.StatusBadRequest, rbee.Errorf(rbee.CodeBadRequest, "%w", err))
		return
	}
	q.streamOp(w, func(ev events) error {
		defer q.router.stale() // the door sees the model (and its alias) at once
		ctx := r.Context()
		name := req.Hive
		if name == "" {
			name = LocalHive
		}
		spec, err := q.parseModel(ctx, req.Ref)
		if err != nil {
			return err
		}
		if _, _, err := q.resolveHive(ctx, name); err != nil {
			return err
		}
		h := &liveHive{q: q, name: name}
		snaps, err := q.plan.snapshots(ctx, []Hive{h}, ev)
		if err != nil {
			return err
		}
		snap := snaps[name]
		if m, ok := snap.find(spec); ok {
			ev.narrate("model_ready", fmt.Sprintf("%s is already on hive %s", req.Ref, name))
			return q.aliasOn(ctx, name, m, req.Alias)
		}
		if local {
			if err := q.fits(spec, name, snap, ev); err != nil {
				return err
			}
			m, err := h.Model(ctx, spec, snap, ev)
			if err == nil {
				err = q.aliasOn(ctx, name, m, req.Alias)
			}
			if err == nil {
				ev.narrate("model_ready", fmt.Sprintf("%s is on hive %s as %s", filepath.Base(req.Ref), name, cmp.Or(req.Alias, m.ID)))
			}
			return err
		}
		hc, err := q.hiveConn(ctx, name, ev.narrate)
		if err != nil {
			return err
		}
		if m, ok, err := q.copyFromPeer(ctx, hc, spec.Raw, ev); err != nil || ok {
			if err == nil {
				err = q.aliasOn(ctx, name, m, req.Alias)
			}
			return err
		}
		if err := q.estimate(ctx, spec, snaps); err != nil {
			return err
		}
		if err := q.fits(spec, name, snap, ev); err != nil {
			return err
		}
		m, err := q.pull(ctx, hc, spec, req.Alias, ev)
		if err != nil {
			return err
		}
		ev.narrate("model_ready", fmt.Sprintf("%s is on hive %s as %s (%s %s, %s)", req.Ref, name, m.ID, m.Arch, m.Quant, rbee.Bytes(uint64(m.Size))))
		return nil
	})
}

// aliasOn gives a model the alias asked for when it has none yet.
func (q *Queen) aliasOn(ctx context.Context, hive string, m hiveapi.Model, alias string) error {
	if alias == "" || m.Alias == alias {
		return nil
	}
	hc, err := q.hiveConn(ctx, hive, quiet)
	if err != nil {
		return err
	}
	if _, err := hc.client.AddModel(ctx, hiveapi.AddModelRequest{Path: m.Path, Ref: m.Ref, Alias: alias}); err != nil {
		return hiveError(err)
	}
	return nil
}

// fits refuses, with the numbers and before any download, a model that
// fits none of the hive's devices.
func (q *Queen) fits(spec *ModelSpec, name string, snap Snapshot, ev events) error {
	var best rbee.Device
	for _, d := range snap.Devices {
		if d.FreeBytes > best.FreeBytes {
			best = d
		}
	}
	if best.FreeBytes < spec.Need {
		return (&rbee.Error{Code: rbee.CodeNoRoom,
			Message: fmt.Sprintf("%s needs about %s (weights %s + KV cache for %d tokens); the roomiest device of hive %s, %s, has %s free: nothing was downloaded",
				spec.Raw, rbee.Bytes(spec.Need), rbee.Bytes(spec.Weights), spec.CtxSize, name, best.ID, rbee.Bytes(best.FreeBytes))}).
			WithHint("pick a smaller quantization (hf:ORG/REPO:Q4_K_M) or another hive")
	}
	ev.narrate("model_fits", fmt.Sprintf("%s needs about %s: fits %s/%s (%s free), checked from its header before downloading",
		spec.Raw, rbee.Bytes(spec.Need), name, best.ID, rbee.Bytes(best.FreeBytes)))
	return nil
}

func (q *Queen) listModels(w http.ResponseWriter, r *http.Request) {
	hc, err := q.hiveFor(r.Context(), r.URL.Query().Get("hive"), quiet)
	if err != nil {
		writeErr(w, http.StatusBadGateway, err)
		return
	}
	ms, err := hc.client.Models(r.Context())
	if err != nil {
		writeErr(w, http.StatusBadGateway, hiveError(err))
		return
	}
	writeJSON(w, http.StatusOK, queenapi.Models{Hive: hc.name, Models: ms})
}

func (q *Queen) removeModel(w http.ResponseWriter, r *http.Request) {
	hc, err := q.hiveFor(r.Context(), r.URL.Query().Get("hive"), quiet)
	if err != nil {
		writeErr(w, http.StatusBadGateway, err)
		return
	}
	if err := hc.client.RemoveModel(r.Context(), r.PathValue("key")); err != nil {
		writeErr(w, http.StatusNotFound, hiveError(err))
		return
	}
	q.router.stale()
	w.WriteHeader(http.StatusNoContent)
}
