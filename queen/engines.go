package queen

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/bundle"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/provision"
)

// InstallEngineRequest is the body of POST /v1/engines: rbee worker install.
type InstallEngineRequest struct {
	Hive   string `json:"hive,omitempty"`
	Source string `json:"source"` // a directory, a .tgz/.zip archive, or an https:// URL of one, on the queen's machine
}

// installEngine gets the bundle to the hive and has the hive record it.
func (q *Queen) installEngine(w http.ResponseWriter, r *http.Request) {
	var req InstallEngineRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil || req.Source == "" {
		writeErr(w, http.StatusBadRequest, rbee.CodeBadRequest, "install engine: give a source")
		return
	}
	q.streamOp(w, func(send func(rbee.Event) error) error {
		ctx := r.Context()
		narrate := func(action, msg string) { _ = send(rbee.Narrate(me, action, msg)) }
		src, err := q.engineSource(ctx, req.Source, send)
		if err != nil {
			return err
		}
		hc, err := q.hiveFor(ctx, req.Hive, narrate)
		if err != nil {
			return err
		}
		target := src
		if hc.remote != nil {
			// Prepared here, checked, then pushed: the host needs only SSH.
			tmp, err := os.MkdirTemp(filepath.Join(q.cfg.Home), "engine-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			m, err := bundle.Prepare(ctx, src, filepath.Join(tmp, "b"), bundle.Options{Source: req.Source})
			if err != nil {
				return rbee.Errorf(rbee.CodeBadRequest, "engine %s: %v", req.Source, err)
			}
			target = hc.remote.layout.EngineDir(bundle.Variant(m))
			n, err := provision.PushBundle(ctx, hc.remote.conn, filepath.Join(tmp, "b"), target)
			if err != nil {
				return rbee.Errorf(rbee.CodeHiveDown, "hive %s: %v", hc.name, err)
			}
			narrate("engine_pushed", fmt.Sprintf("pushed engine %s (%s) to hive %s: %d files", m.Version, strings.Join(m.Backends, ", "), hc.name, n))
		}
		wb, err := hc.client.InstallEngine(ctx, target)
		if err != nil {
			return hiveError(err)
		}
		narrate("engine_installed", fmt.Sprintf("hive %s: engine %s installed (%s, backends %s)", hc.name, wb.ID, wb.Path, strings.Join(wb.Capabilities, ", ")))
		return nil
	})
}

// engineSource turns a source into a local path: URLs are downloaded into
// the queen's cache (resumable, verified when the server states a sum).
func (q *Queen) engineSource(ctx context.Context, src string, send func(rbee.Event) error) (string, error) {
	if ref, err := download.ParseRef(src); err == nil {
		if ref.Kind != download.KindURL {
			return "", rbee.Errorf(rbee.CodeBadRequest, "engine source %s: give a directory, an archive or an https:// URL", src)
		}
		store := &download.Store{Dir: filepath.Join(q.cfg.Home, "cache", "engines")}
		p, _, err := store.Fetch(ctx, &download.Hub{}, ref, download.Options{Progress: func(p download.Progress) {
			_ = send(rbee.Event{Type: rbee.EventProgress, Actor: me, Action: "engine_download", BytesDone: p.Done, BytesTotal: p.Total, Rate: p.Rate,
				Message: fmt.Sprintf("engine %s of %s", rbee.Bytes(uint64(p.Done)), rbee.Bytes(uint64(max(p.Total, 0))))})
		}})
		if err != nil {
			return "", refError(err)
		}
		return p, nil
	}
	abs, err := filepath.Abs(src)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(abs); err != nil {
		return "", rbee.Errorf(rbee.CodeModelNotFound, "engine source %s: %v", src, err)
	}
	return abs, nil
}

func (q *Queen) listEngines(w http.ResponseWriter, r *http.Request) {
	hc, err := q.hiveFor(r.Context(), r.URL.Query().Get("hive"), func(string, string) {})
	if err != nil {
		writeErr(w, http.StatusBadGateway, rbee.CodeOf(err), err.Error())
		return
	}
	ws, err := hc.client.WorkerBinaries(r.Context())
	if err != nil {
		writeErr(w, http.StatusBadGateway, rbee.CodeHiveDown, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"hive": hc.name, "workers": ws})
}

func (q *Queen) removeEngine(w http.ResponseWriter, r *http.Request) {
	hc, err := q.hiveFor(r.Context(), r.URL.Query().Get("hive"), func(string, string) {})
	if err != nil {
		writeErr(w, http.StatusBadGateway, rbee.CodeOf(err), err.Error())
		return
	}
	if err := hc.client.RemoveEngine(r.Context(), r.PathValue("id")); err != nil {
		e := hiveError(err)
		writeErr(w, http.StatusConflict, rbee.CodeOf(e), e.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// AddWorkerTypeRequest is the body of POST /v1/worker-types.
type AddWorkerTypeRequest struct {
	Hive string             `json:"hive,omitempty"`
	Type hiveapi.WorkerType `json:"type"`
}

func (q *Queen) addWorkerType(w http.ResponseWriter, r *http.Request) {
	var req AddWorkerTypeRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, rbee.CodeBadRequest, "add worker type: "+err.Error())
		return
	}
	hc, err := q.hiveFor(r.Context(), req.Hive, func(string, string) {})
	if err != nil {
		writeErr(w, http.StatusBadGateway, rbee.CodeOf(err), err.Error())
		return
	}
	if err := hc.client.AddWorkerType(r.Context(), req.Type); err != nil {
		e := hiveError(err)
		writeErr(w, http.StatusUnprocessableEntity, rbee.CodeOf(e), e.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
