package agent

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/bundle"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/enginefetch"
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
		m, err := bundle.Prepare(ctx, src, tmp, bundle.Options{Source: src, Platform: runtime.GOOS + "/" + runtime.GOARCH})
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
	if p := runtime.GOOS + "/" + runtime.GOARCH; m.OS+"/"+m.Arch != p {
		return catalog.WorkerBinary{}, rbee.Errorf(rbee.CodeBadRequest, "engine %s is built for %s/%s and hive %s runs %s: install a %s build of llama.cpp", dir, m.OS, m.Arch, a.cfg.Name, p, p)
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

// EngineFetch says where the agent gets the pinned engine bundle when none
// in its worker catalog fits a device.
type EngineFetch struct {
	Registry string // npm registry or mirror; "" = enginefetch.Registry()
	Archive  string // a local tarball (or URL) of the pinned package, instead of the registry
	// GPU is the GPU kind whose bundle GPU devices get ("cuda"): the
	// queen sets it where this machine's driver and runtime can run it.
	// "" = GPU devices run on the CPU bundle.
	GPU string
}

var (
	cpuBackends = []string{"cpu"}
	gpuBackends = []string{"cuda", "vulkan", "hip", "sycl", "metal"}
)

// pickEngine chooses the engine bundle for a device: for a GPU the most
// recently installed bundle with a GPU backend, for the CPU (and a GPU
// without one) the one with the CPU backend, else the bundle the agent was
// started with. When none fits and the agent may fetch, it installs the
// pinned bundle first, its download reported with send.
func (a *Agent) pickEngine(ctx context.Context, device, backend string, send func(rbee.Event) error) (string, error) {
	if backend != "" {
		// The bundle whose backend listed the device.
		if p := a.installedEngine(ctx, []string{backend}); p != "" {
			return p, nil
		}
		if d := a.cfg.EngineDir; d != "" {
			if m, err := bundle.Load(d); err == nil && slices.Contains(m.Backends, backend) {
				return d, nil
			}
		}
	}
	if strings.HasPrefix(device, "gpu") {
		if p := a.installedEngine(ctx, gpuBackends); p != "" {
			return p, nil
		}
		if f := a.cfg.Fetch; f != nil && f.GPU != "" {
			p, err := a.fetchEngine(ctx, device, f.GPU, send)
			if err == nil {
				return p, nil
			}
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			warn := rbee.Narrate(actor(a.cfg.Name), "engine_install_failed", fmt.Sprintf("%v; %s runs on the CPU bundle", err, device))
			warn.Level = "warn"
			_ = send(warn)
		}
	}
	if p := a.installedEngine(ctx, cpuBackends); p != "" {
		return p, nil
	}
	if a.cfg.EngineDir != "" {
		return a.cfg.EngineDir, nil
	}
	if a.cfg.Fetch == nil {
		return "", rbee.Errorf(rbee.CodeEngine, "hive %s has no engine bundle for %s", a.cfg.Name, device).
			WithHint("rbee worker install --hive " + a.cfg.Name + " SOURCE installs one (see rbee worker install --help)")
	}
	return a.fetchEngine(ctx, device, "", send)
}

// workerEngine picks the engine bundle of an rbee-worker: a split's worker
// needs llama.cpp's RPC backend, which a bundle without it cannot give (the
// worker would start only to exit).
func (a *Agent) workerEngine(ctx context.Context, ws workerStart, send func(rbee.Event) error) (string, error) {
	if len(ws.rpc) == 0 {
		return a.pickEngine(ctx, ws.device, ws.backend, send)
	}
	if engine := a.installedEngine(ctx, rpcBackends); engine != "" {
		return engine, nil
	}
	engine, err := a.pickEngine(ctx, ws.device, ws.backend, send)
	if err != nil {
		return "", err
	}
	if m, err := bundle.Load(engine); err == nil && !slices.Contains(m.Backends, "rpc") {
		return "", rbee.Errorf(rbee.CodeEngine, "hive %s: engine %s has no RPC backend (libggml-rpc.so), which a split's worker needs", a.cfg.Name, engine).
			WithHint(a.rpcInstallHint())
	}
	return engine, nil
}

// rpcInstallHint is the command that gives this hive an engine bundle with
// llama.cpp's RPC backend and rpc-server.
func (a *Agent) rpcInstallHint() string {
	return "rbee worker install --hive " + a.cfg.Name + " DIR installs a bundle with the RPC backend and rpc-server (make engine builds one into .rbee-dev/engine/llama-cpu)"
}

// installedEngine returns the newest bundle of the worker catalog with one
// of the backends that still loads, and marks it used; "" when none.
func (a *Agent) installedEngine(ctx context.Context, backends []string) string {
	ws, err := a.db.WorkerBinaries(ctx)
	if err != nil {
		return ""
	}
	var best catalog.WorkerBinary
	for _, wb := range ws {
		if wb.Type != TypeEngine || !slices.ContainsFunc(wb.Capabilities, func(c string) bool { return slices.Contains(backends, c) }) {
			continue
		}
		if _, err := bundle.Load(wb.Path); err != nil {
			continue
		}
		if best.ID == "" || wb.Added.After(best.Added) {
			best = wb
		}
	}
	if best.ID == "" {
		return ""
	}
	// rbee worker ls shows when a bundle was last used.
	_ = a.db.TouchWorkerBinary(ctx, best.ID, time.Now())
	return best.Path
}

// fetchEngine installs the pinned bundle of a GPU kind ("" for the CPU one)
// for this platform into ~/.rbee/engines, as rbee worker install would, and
// returns its directory. One install runs at a time; a job that waited on
// another's finds its bundle.
func (a *Agent) fetchEngine(ctx context.Context, device, gpuKind string, send func(rbee.Event) error) (string, error) {
	me := actor(a.cfg.Name)
	backends := cpuBackends
	if gpuKind != "" {
		backends = []string{gpuKind}
	}
	pkg, ok := enginefetch.For(runtime.GOOS, runtime.GOARCH, gpuKind)
	if !ok {
		return "", rbee.Errorf(rbee.CodeEngine, "hive %s has no engine bundle for %s, and none is pinned for %s/%s %s",
			a.cfg.Name, device, runtime.GOOS, runtime.GOARCH, cmp.Or(gpuKind, "cpu")).
			WithHint("rbee worker install --hive " + a.cfg.Name + " SOURCE installs a llama.cpp " + "v0.5.0 build (see rbee worker install --help)")
	}
	select {
	case a.fetching <- struct{}{}:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	defer func() { <-a.fetching }()
	if p := a.installedEngine(ctx, backends); p != "" {
		return p, nil
	}
	f := a.cfg.Fetch
	from := cmp.Or(f.Archive, pkg.TarballURL(f.Registry))
	_ = send(rbee.Narrate(me, "engine_install", fmt.Sprintf("no engine bundle for %s on hive %s: installing %s@%s (pinned) from %s",
		device, a.cfg.Name, pkg.Name, pkg.Version, from)))
	if err := os.MkdirAll(a.enginesDir(), 0o755); err != nil {
		return "", fmt.Errorf("install engine: %w", err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	tmp := filepath.Join(a.enginesDir(), ".fetch-"+hex.EncodeToString(b[:]))
	defer os.RemoveAll(tmp) // gone once renamed; what a failure left otherwise
	_, err := enginefetch.Fetch(ctx, enginefetch.Options{
		Package: pkg, Dir: tmp, CacheDir: rbee.Home(a.cfg.Home).Cache("npm"), Registry: f.Registry, Archive: f.Archive,
		Progress: func(done, total int64) {
			_ = send(rbee.Event{Type: rbee.EventProgress, Actor: me, Action: "engine_download", BytesDone: done, BytesTotal: total,
				Message: fmt.Sprintf("engine %s: %s of %s", path.Base(pkg.Name), rbee.Bytes(uint64(done)), rbee.Bytes(uint64(max(total, 0))))})
		},
		Logf: func(format string, args ...any) { a.log.Info(fmt.Sprintf(format, args...)) },
	})
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", (&rbee.Error{Code: rbee.CodeWorkerFailed, Err: err, Message: fmt.Sprintf("hive %s: install engine: %v", a.cfg.Name, err)}).
			WithHint("check the network or the mirror (RBEE_NPM_REGISTRY), or name a local copy of the package with --engine-archive FILE")
	}
	m, err := bundle.Load(tmp)
	if err != nil {
		return "", fmt.Errorf("install engine: %w", err)
	}
	dir := filepath.Join(a.enginesDir(), bundle.Variant(m))
	_ = os.RemoveAll(dir) // a bundle of this variant that no longer loads
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("install engine: %w", err)
	}
	wb, err := a.InstallEngine(ctx, dir)
	if err != nil {
		return "", err
	}
	_ = send(rbee.Narrate(me, "engine_installed", fmt.Sprintf("engine %s installed in %s (backends %s)", wb.Version, wb.Path, strings.Join(wb.Capabilities, ", "))))
	return wb.Path, nil
}

// engineFault names the engine bundle as the cause of a worker's or RPC
// server's failed start when the bundle no longer matches its manifest (a
// file changed, missing or added since it was installed): no worker ran,
// and reinstalling the bundle is the fix, not another try. Any other
// failure is returned as it is. The bundle is hashed only after a failure.
func (a *Agent) engineFault(dir string, err error) error {
	if err == nil || dir == "" || rbee.CodeOf(err) != rbee.CodeWorkerFailed {
		return err
	}
	_, verr := bundle.Validate(dir)
	if !errors.Is(verr, bundle.ErrCorrupt) {
		return err
	}
	return (&rbee.Error{Code: rbee.CodeEngine, Err: verr,
		Message: fmt.Sprintf("hive %s: the engine cannot run: %v", a.cfg.Name, verr)}).WithHint(a.reinstallHint(dir))
}

// reinstallHint is the command that puts a good copy of the bundle in dir
// on this hive.
func (a *Agent) reinstallHint(dir string) string {
	m, _ := bundle.Load(dir)
	return bundle.ReinstallHint(a.cfg.Name, m)
}
