package fleet

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
	"github.com/rbee-dev/rbee/queen/internal/reply"
	"github.com/rbee-dev/rbee/queenapi"
)

// hiveFor resolves and connects a hive by name ("" = localhost).
func (f *Fleet) hiveFor(ctx context.Context, name string, ev Events) (*Conn, error) {
	if name == "" {
		name = LocalHive
	}
	if _, _, err := f.resolveHive(ctx, name); err != nil {
		return nil, err
	}
	return f.hiveConn(ctx, name, ev)
}

// pull has a hive download a reference, relaying its progress. The fit
// check was made on the header already (placing a job, or pullModel).
func (f *Fleet) pull(ctx context.Context, hc *Conn, spec *ModelSpec, alias string, ev Events) (hiveapi.Model, error) {
	hub := f.hub()
	m, err := hc.client.Pull(ctx, hiveapi.PullRequest{Ref: spec.Raw, Alias: alias, Endpoint: hub.Endpoint, Token: hub.Token},
		func(e rbee.Event) error { ev.Send(e); return nil })
	if err != nil {
		return hiveapi.Model{}, HiveError(err)
	}
	return m, nil
}

// pullModel is rbee model pull: the model onto one hive, planned like a
// job (already there, copied from a peer, or fetched after the fit check
// on its header), without starting a worker.
func (f *Fleet) pullModel(w http.ResponseWriter, r *http.Request) {
	var req queenapi.PullRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		reply.Error(w, http.StatusBadRequest, rbee.Errorf(rbee.CodeBadRequest, "pull: %w", err))
		return
	}
	local := filepath.IsAbs(req.Ref) // a GGUF on this machine: named, and pushed to the hive
	if _, err := download.ParseRef(req.Ref); err != nil && !local {
		reply.Error(w, http.StatusBadRequest, rbee.Errorf(rbee.CodeBadRequest, "%w", err))
		return
	}
	f.streamOp(w, func(ev Events) error {
		defer f.changed() // the door sees the model (and its alias) at once
		ctx := r.Context()
		name := req.Hive
		if name == "" {
			name = LocalHive
		}
		spec, err := f.ParseModel(ctx, req.Ref)
		if err != nil {
			return err
		}
		if _, _, err := f.resolveHive(ctx, name); err != nil {
			return err
		}
		h := &liveHive{f: f, name: name}
		snaps, err := f.plan.snapshots(ctx, []Hive{h}, ev)
		if err != nil {
			return err
		}
		snap := snaps[name]
		if m, ok := snap.Find(spec); ok {
			ev.Narrate("model_ready", fmt.Sprintf("%s is already on hive %s", req.Ref, name))
			return f.aliasOn(ctx, name, m, req.Alias)
		}
		if local {
			if err := f.fits(spec, name, snap, ev); err != nil {
				return err
			}
			m, err := h.Model(ctx, spec, snap, ev)
			if err == nil {
				err = f.aliasOn(ctx, name, m, req.Alias)
			}
			if err == nil {
				ev.Narrate("model_ready", fmt.Sprintf("%s is on hive %s as %s", filepath.Base(req.Ref), name, cmp.Or(req.Alias, m.ID)))
			}
			return err
		}
		hc, err := f.hiveConn(ctx, name, ev)
		if err != nil {
			return err
		}
		if m, ok, err := f.copyFromPeer(ctx, hc, spec.Raw, ev); err != nil || ok {
			if err == nil {
				err = f.aliasOn(ctx, name, m, req.Alias)
			}
			return err
		}
		if err := f.Estimate(ctx, spec, snaps); err != nil {
			return err
		}
		if err := f.fits(spec, name, snap, ev); err != nil {
			return err
		}
		m, err := f.pull(ctx, hc, spec, req.Alias, ev)
		if err != nil {
			return err
		}
		ev.Narrate("model_ready", fmt.Sprintf("%s is on hive %s as %s (%s %s, %s)", req.Ref, name, m.ID, m.Arch, m.Quant, rbee.Bytes(uint64(m.Size))))
		return nil
	})
}

// aliasOn gives a model the alias asked for when it has none yet.
func (f *Fleet) aliasOn(ctx context.Context, hive string, m hiveapi.Model, alias string) error {
	if alias == "" || m.Alias == alias {
		return nil
	}
	hc, err := f.hiveConn(ctx, hive, Quiet{})
	if err != nil {
		return err
	}
	if _, err := hc.client.AddModel(ctx, hiveapi.AddModelRequest{Path: m.Path, Ref: m.Ref, Alias: alias}); err != nil {
		return HiveError(err)
	}
	return nil
}

// fits refuses, with the numbers and before any download, a model that
// fits none of the hive's devices.
func (f *Fleet) fits(spec *ModelSpec, name string, snap Snapshot, ev Events) error {
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
	ev.Narrate("model_fits", fmt.Sprintf("%s needs about %s: fits %s/%s (%s free), checked from its header before downloading",
		spec.Raw, rbee.Bytes(spec.Need), name, best.ID, rbee.Bytes(best.FreeBytes)))
	return nil
}

func (f *Fleet) listModels(w http.ResponseWriter, r *http.Request) {
	hc, err := f.hiveFor(r.Context(), r.URL.Query().Get("hive"), Quiet{})
	if err != nil {
		reply.Error(w, http.StatusBadGateway, err)
		return
	}
	ms, err := hc.client.Models(r.Context())
	if err != nil {
		reply.Error(w, http.StatusBadGateway, HiveError(err))
		return
	}
	reply.JSON(w, http.StatusOK, queenapi.Models{Hive: hc.name, Models: ms})
}

func (f *Fleet) removeModel(w http.ResponseWriter, r *http.Request) {
	hc, err := f.hiveFor(r.Context(), r.URL.Query().Get("hive"), Quiet{})
	if err != nil {
		reply.Error(w, http.StatusBadGateway, err)
		return
	}
	if err := hc.client.RemoveModel(r.Context(), r.PathValue("key")); err != nil {
		reply.Error(w, http.StatusNotFound, HiveError(err))
		return
	}
	f.changed()
	w.WriteHeader(http.StatusNoContent)
}
