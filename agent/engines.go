package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/bundle"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/modelfile"
)

func (a *Agent) enginesDir() string { return filepath.Join(a.cfg.Home, "engines") }

// installEngine makes a bundle of a directory or archive on this host and
// records it in the worker catalog with its version, checksum and backends.
func (a *Agent) installEngine(w http.ResponseWriter, r *http.Request) {
	var req hiveapi.InstallEngineRequest
	if !readJSON(w, r, &req) {
		return
	}
	wb, err := a.InstallEngine(r.Context(), req.Source)
	if err != nil {
		writeError(w, http.StatusUnprocessableEntity, err)
		return
	}
	writeJSON(w, http.StatusOK, apiBinary(wb))
}

// InstallEngine installs the bundle at src (a prepared bundle directory is
// registered where it is when it lies under ~/.rbee/engines; anything else
// is prepared into it).
func (a *Agent) InstallEngine(ctx context.Context, src string) (catalog.WorkerBinary, error) {
	if !filepath.IsAbs(src) {
		return catalog.WorkerBinary{}, rbee.Errorf(rbee.CodeBadRequest, "engine source %q is not an absolute path on hive %s", src, a.cfg.Name)
	}
	dir := src
	inStore := strings.HasPrefix(src, a.enginesDir()+string(filepath.Separator))
	if _, err := bundle.Load(src); err != nil || !inStore {
		var b [6]byte
		_, _ = rand.Read(b[:])
		tmp := filepath.Join(a.enginesDir(), ".incoming-"+hex.EncodeToString(b[:]))
		m, err := bundle.Prepare(ctx, src, tmp, bundle.Options{Source: src})
		if err != nil {
			return catalog.WorkerBinary{}, rbee.Errorf(rbee.CodeBadRequest, "engine %s: %v", src, err)
		}
		dir = filepath.Join(a.enginesDir(), bundle.Variant(m))
		_ = os.RemoveAll(dir)
		if err := os.Rename(tmp, dir); err != nil {
			os.RemoveAll(tmp)
			return catalog.WorkerBinary{}, fmt.Errorf("install engine: %w", err)
		}
	}
	m, err := bundle.Validate(dir)
	if err != nil {
		return catalog.WorkerBinary{}, rbee.Errorf(rbee.CodeBadRequest, "engine %s: %v", dir, err)
	}
	sum, err := modelfile.Hash(ctx, filepath.Join(dir, bundle.ManifestName))
	if err != nil {
		return catalog.WorkerBinary{}, err
	}
	wb := catalog.WorkerBinary{ID: TypeEngine + "-" + bundle.Variant(m), Type: TypeEngine,
		Version: bundle.Variant(m), Path: dir, SHA256: sum, Capabilities: m.Backends, Added: time.Now()}
	if err := a.db.AddWorkerBinary(ctx, wb); err != nil {
		return wb, err
	}
	return wb, nil
}

func apiBinary(w catalog.WorkerBinary) hiveapi.WorkerBinary {
	return hiveapi.WorkerBinary{ID: w.ID, Type: w.Type, Version: w.Version, Path: w.Path, SHA256: w.SHA256,
		Capabilities: w.Capabilities, Added: w.Added, LastUsed: w.LastUsed}
}

func (a *Agent) listEngines(w http.ResponseWriter, r *http.Request) {
	ws, err := a.db.WorkerBinaries(r.Context())
	if err != nil {
		writeErr(w, http.StatusInternalServerError, rbee.CodeInternal, err.Error())
		return
	}
	out := make([]hiveapi.WorkerBinary, 0, len(ws))
	for _, wb := range ws {
		out = append(out, apiBinary(wb))
	}
	writeJSON(w, http.StatusOK, map[string]any{"workers": out})
}

// removeEngine forgets an engine bundle and deletes it when it lives under
// ~/.rbee/engines; the bundle the agent was started with stays.
func (a *Agent) removeEngine(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	ws, err := a.db.WorkerBinaries(r.Context())
	if err != nil {
		writeErr(w, http.StatusInternalServerError, rbee.CodeInternal, err.Error())
		return
	}
	i := slices.IndexFunc(ws, func(wb catalog.WorkerBinary) bool { return wb.ID == id })
	if i < 0 {
		writeErr(w, http.StatusNotFound, rbee.CodeBadRequest, fmt.Sprintf("no worker binary or engine %q on hive %s", id, a.cfg.Name))
		return
	}
	wb := ws[i]
	if wb.Type != TypeEngine || wb.Path == a.cfg.EngineDir {
		writeErr(w, http.StatusConflict, rbee.CodeBadRequest, fmt.Sprintf("%s is what this agent runs with; it stays", id))
		return
	}
	if err := a.db.RemoveWorkerBinary(r.Context(), id); err != nil {
		writeErr(w, http.StatusInternalServerError, rbee.CodeInternal, err.Error())
		return
	}
	if strings.HasPrefix(wb.Path, a.enginesDir()+string(filepath.Separator)) {
		_ = os.RemoveAll(wb.Path)
	}
	w.WriteHeader(http.StatusNoContent)
}

// pickEngine chooses the engine bundle for a device: for a GPU the most
// recently installed bundle with a GPU backend, for the CPU one with the CPU
// backend; else the bundle the agent was started with.
func (a *Agent) pickEngine(ctx context.Context, device string) string {
	ws, err := a.db.WorkerBinaries(ctx)
	if err != nil {
		return a.cfg.EngineDir
	}
	want := []string{"cpu"}
	if strings.HasPrefix(device, "gpu") {
		want = []string{"cuda", "vulkan", "hip", "sycl", "metal"}
	}
	var best catalog.WorkerBinary
	for _, wb := range ws {
		if wb.Type != TypeEngine || !slices.ContainsFunc(wb.Capabilities, func(c string) bool { return slices.Contains(want, c) }) {
			continue
		}
		if best.ID == "" || wb.Added.After(best.Added) {
			best = wb
		}
	}
	if best.ID == "" {
		return a.cfg.EngineDir
	}
	if _, err := bundle.Load(best.Path); err != nil {
		return a.cfg.EngineDir
	}
	// rbee worker ls shows when a bundle was last used.
	_ = a.db.TouchWorkerBinary(ctx, best.ID, time.Now())
	return best.Path
}
