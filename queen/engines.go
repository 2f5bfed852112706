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
	"github.com/rbee-dev/rbee/provision"
	"github.com/rbee-dev/rbee/queenapi"
)

// installEngine gets the bundle to the hive and has the hive record it.
func (q *Queen) installEngine(w http.ResponseWriter, r *http.Request) {
	var req queenapi.InstallEngineRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil || req.Source == "" {
		writeErr(w, http.StatusBadRequest, rbee.Errorf(rbee.CodeBadRequest, "install engine: give a source"))
		return
	}
	q.streamOp(w, func(ev events) error {
		ctx := r.Context()
		narrate := ev.narrate
		src, err := q.engineSource(ctx, req.Source, ev)
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
			tmp, err := os.MkdirTemp(string(q.cfg.Home), "engine-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			m, err := bundle.Prepare(ctx, src, filepath.Join(tmp, "b"), bundle.Options{Source: req.Source})
			if err != nil {
				return rbee.Errorf(rbee.CodeBadRequest, "engine %s: %w", req.Source, err)
			}
			target = hc.remote.layout.EngineDir(bundle.Variant(m))
			n, err := provision.PushBundle(ctx, hc.remote.conn, filepath.Join(tmp, "b"), target)
			if err != nil {
				return rbee.Errorf(rbee.CodeHiveDown, "hive %s: %w", hc.name, err)
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
func (q *Queen) engineSource(ctx context.Context, src string, ev events) (string, error) {
	if ref, err := download.ParseRef(src); err == nil {
		if ref.Kind != download.KindURL {
			return "", rbee.Errorf(rbee.CodeBadRequest, "engine source %s: give a directory, an archive or an https:// URL", src)
		}
		store := &download.Store{Dir: q.cfg.Home.Cache("engines")}
		p, _, err := store.Fetch(ctx, &download.Hub{}, ref, download.Options{Progress: func(p download.Progress) {
			ev.send(rbee.Event{Type: rbee.EventProgress, Actor: me, Action: "engine_download", BytesDone: p.Done, BytesTotal: p.Total, Rate: p.Rate,
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
		return "", rbee.Errorf(rbee.CodeModelNotFound, "engine source %s: %w", src, err)
	}
	return abs, nil
}

func (q *Queen) listEngines(w http.ResponseWriter, r *http.Request) {
	hc, err := q.hiveFor(r.Context(), r.URL.Query().Get("hive"), quiet)
	if err != nil {
		writeErr(w, http.StatusBadGateway, err)
		return
	}
	ws, err := hc.client.WorkerBinaries(r.Context())
	if err != nil {
		writeErr(w, http.StatusBadGateway, hiveError(err))
		return
	}
	writeJSON(w, http.StatusOK, queenapi.Engines{Hive: hc.name, Workers: ws})
}

func (q *Queen) removeEngine(w http.ResponseWriter, r *http.Request) {
	hc, err := q.hiveFor(r.Context(), r.URL.Query().Get("hive"), quiet)
	if err != nil {
		writeErr(w, http.StatusBadGateway, err)
		return
	}
	if err := hc.client.RemoveEngine(r.Context(), r.PathValue("id")); err != nil {
		writeErr(w, http.StatusConflict, hiveError(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (q *Queen) addWorkerType(w http.ResponseWriter, r *http.Request) {
	var req queenapi.AddWorkerTypeRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, rbee.Errorf(rbee.CodeBadRequest, "add worker type: %w", err))
		return
	}
	hc, err := q.hiveFor(r.Context(), req.Hive, quiet)
	if err != nil {
		writeErr(w, http.StatusBadGateway, err)
		return
	}
	if err := hc.client.AddWorkerType(r.Context(), req.Type); err != nil {
		writeErr(w, http.StatusUnprocessableEntity, hiveError(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
