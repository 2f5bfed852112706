package fleet

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/bundle"
	"github.com/rbee-dev/rbee/doctor"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/enginefetch"
	"github.com/rbee-dev/rbee/provision"
	"github.com/rbee-dev/rbee/queen/internal/reply"
	"github.com/rbee-dev/rbee/queenapi"
)

// installEngine gets the bundle to the hive and has the hive record it.
func (f *Fleet) installEngine(w http.ResponseWriter, r *http.Request) {
	var req queenapi.InstallEngineRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil || req.Source == "" {
		reply.Error(w, http.StatusBadRequest, rbee.Errorf(rbee.CodeBadRequest, "install engine: give a source"))
		return
	}
	f.streamOp(w, func(ev Events) error {
		ctx := r.Context()
		narrate := ev.Narrate
		src, err := f.engineSource(ctx, req.Source, ev)
		if err != nil {
			return err
		}
		hc, err := f.hiveFor(ctx, req.Hive, ev)
		if err != nil {
			return err
		}
		target := src
		if hc.remote != nil {
			// Prepared here, checked, then pushed: the host needs only SSH.
			tmp, err := os.MkdirTemp(string(f.cfg.Home), "engine-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			var platform string // the host's, checked before a byte is pushed
			if hs := hc.handshake; hs.OS != "" && hs.Arch != "" {
				platform = hs.OS + "/" + hs.Arch
			}
			m, err := bundle.Prepare(ctx, src, filepath.Join(tmp, "b"), bundle.Options{Source: req.Source, Platform: platform})
			if err != nil {
				return rbee.Errorf(rbee.CodeBadRequest, "engine %s: %w", req.Source, err)
			}
			var keep bool
			if target, keep, err = provision.EngineTarget(ctx, hc.remote.conn, hc.remote.layout, m); err != nil {
				return rbee.Errorf(rbee.CodeHiveDown, "hive %s: %w", hc.name, err)
			}
			if keep {
				narrate("engine_kept", fmt.Sprintf("hive %s: %s already holds every file of engine %s (and more): nothing to push", hc.name, target, m.Version))
			} else {
				n, err := provision.PushBundle(ctx, hc.remote.conn, filepath.Join(tmp, "b"), target, uploadProgress(ev, "engine_push", "engine "+m.Version+" to hive "+hc.name))
				if err != nil {
					return rbee.Errorf(rbee.CodeHiveDown, "hive %s: %w", hc.name, err)
				}
				narrate("engine_pushed", fmt.Sprintf("pushed engine %s (%s) to hive %s: %d files", m.Version, strings.Join(m.Backends, ", "), hc.name, n))
			}
		}
		wb, err := hc.client.InstallEngine(ctx, target)
		if err != nil {
			return HiveError(err)
		}
		narrate("engine_installed", fmt.Sprintf("hive %s: engine %s installed (%s, backends %s)", hc.name, wb.ID, wb.Path, strings.Join(wb.Capabilities, ", ")))
		return nil
	})
}

// engineSource turns a source into a local path: URLs are downloaded into
// the queen's cache (resumable, verified when the server states a sum).
func (f *Fleet) engineSource(ctx context.Context, src string, ev Events) (string, error) {
	if ref, err := download.ParseRef(src); err == nil {
		if ref.Kind != download.KindURL {
			return "", rbee.Errorf(rbee.CodeBadRequest, "engine source %s: give a directory, an archive or an https:// URL", src)
		}
		store := &download.Store{Dir: f.cfg.Home.Cache("engines")}
		p, _, err := store.Fetch(ctx, &download.Hub{}, ref, download.Options{Progress: func(p download.Progress) {
			ev.Send(rbee.Event{Type: rbee.EventProgress, Actor: me, Action: "engine_download", BytesDone: p.Done, BytesTotal: p.Total, Rate: p.Rate,
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
		return "", rbee.Errorf(rbee.CodeBadRequest, "engine source %s: %w", src, err).
			WithHint("give a bundle directory, a .tgz/.zip archive or an https:// URL")
	}
	return abs, nil
}

func (f *Fleet) listEngines(w http.ResponseWriter, r *http.Request) {
	hc, err := f.hiveFor(r.Context(), r.URL.Query().Get("hive"), Quiet{})
	if err != nil {
		reply.Error(w, http.StatusBadGateway, err)
		return
	}
	ws, err := hc.client.WorkerBinaries(r.Context())
	if err != nil {
		reply.Error(w, http.StatusBadGateway, HiveError(err))
		return
	}
	reply.JSON(w, http.StatusOK, queenapi.Engines{Hive: hc.name, Workers: ws})
}

func (f *Fleet) removeEngine(w http.ResponseWriter, r *http.Request) {
	hc, err := f.hiveFor(r.Context(), r.URL.Query().Get("hive"), Quiet{})
	if err != nil {
		reply.Error(w, http.StatusBadGateway, err)
		return
	}
	if err := hc.client.RemoveEngine(r.Context(), r.PathValue("id")); err != nil {
		reply.Error(w, http.StatusConflict, HiveError(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *Fleet) addWorkerType(w http.ResponseWriter, r *http.Request) {
	var req queenapi.AddWorkerTypeRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		reply.Error(w, http.StatusBadRequest, rbee.Errorf(rbee.CodeBadRequest, "add worker type: %w", err))
		return
	}
	hc, err := f.hiveFor(r.Context(), req.Hive, Quiet{})
	if err != nil {
		reply.Error(w, http.StatusBadGateway, err)
		return
	}
	if err := hc.client.AddWorkerType(r.Context(), req.Type); err != nil {
		reply.Error(w, http.StatusUnprocessableEntity, HiveError(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *Fleet) removeWorkerType(w http.ResponseWriter, r *http.Request) {
	hc, err := f.hiveFor(r.Context(), r.URL.Query().Get("hive"), Quiet{})
	if err != nil {
		reply.Error(w, http.StatusBadGateway, err)
		return
	}
	if err := hc.client.RemoveWorkerType(r.Context(), r.PathValue("name")); err != nil {
		status := http.StatusConflict
		if rbee.CodeOf(HiveError(err)) == rbee.CodeWorkerTypeUnknown {
			status = http.StatusNotFound
		}
		reply.Error(w, status, HiveError(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// localEngineArgs tell the local agent which engine to use: the one this
// queen was given (an override), else its worker catalog's, with leave to
// install the pinned bundle on first need — the CUDA one for GPUs where
// this machine can run it. Where the probe finds a Vulkan GPU (and no
// CUDA), the pinned Vulkan bundle is got first and given to the agent: its
// backend is what lists the GPU.
func (f *Fleet) localEngineArgs(ctx context.Context, ev Events) []string {
	if f.cfg.EngineDir != "" {
		return []string{"--engine", f.cfg.EngineDir}
	}
	args := []string{"--engine-fetch"}
	cuda := f.localCUDA(ctx)
	if !cuda {
		if p, err := provision.ProbeLocal(ctx); err == nil {
			if c := provision.ChooseEngine(p, softwareGPU()); c.GPU == "vulkan" {
				ev.Narrate("engine_chosen", "this machine: the vulkan engine: "+c.Why)
				dir := f.cfg.SSH.Artifacts.GPUEngines["vulkan"]
				if dir == "" {
					dir, err = f.hostEngine(ctx, p.Platform(), "vulkan", ev)
				}
				if err == nil {
					args = append(args, "--engine", dir)
				} else {
					w := rbee.Narrate(me, "engine_fallback", fmt.Sprintf("this machine: no vulkan engine (%v): the CPU build instead", err))
					w.Level = "warn"
					ev.Send(w)
				}
			}
		}
	}
	if f.cfg.EngineRegistry != "" {
		args = append(args, "--engine-registry", f.cfg.EngineRegistry)
	}
	if f.cfg.EngineArchive != "" {
		args = append(args, "--engine-archive", f.cfg.EngineArchive)
	}
	if cuda {
		if dir := f.cfg.SSH.Artifacts.GPUEngines["cuda"]; dir != "" {
			args = append(args, "--engine", dir) // RBEE_ENGINE_CUDA: this machine's too
		}
		args = append(args, "--engine-gpu", "cuda")
	}
	return args
}

// softwareGPU: RBEE_SOFTWARE_GPU=1 counts a software Vulkan driver
// (llvmpipe) as a GPU.
func softwareGPU() bool { return os.Getenv("RBEE_SOFTWARE_GPU") == "1" }

// localCUDA reports whether this machine can run the CUDA bundle: an
// NVIDIA driver new enough and the CUDA runtime it links, as rbee doctor
// judges them. Without a loaded NVIDIA driver nothing is probed.
func (f *Fleet) localCUDA(ctx context.Context) bool {
	if _, err := os.Stat("/proc/driver/nvidia"); err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rep, err := doctor.Run(ctx, doctor.Options{Version: rbee.Version})
	if err != nil {
		return false
	}
	c, _ := rep.Check("cuda runtime") // doctor's name for the check
	f.log.Info("local CUDA bundle", "verdict", c.Verdict, "detail", c.Detail)
	return c.Verdict == doctor.OK
}

// hostEngine returns a bundle to push to a host of plat that has none and
// was given none: the pinned package of its GPU kind ("" for the CPU one), fetched on this machine (the
// tarball cached with the local hive's, checked against its pinned
// integrity) and prepared under the queen's cache. Its download is
// narrated.
func (f *Fleet) hostEngine(ctx context.Context, plat provision.Platform, gpu string, ev Events) (string, error) {
	narrate := ev.Narrate
	goos, goarch, _ := strings.Cut(plat, "/")
	pkg, ok := enginefetch.For(goos, goarch, gpu)
	if !ok {
		if gpu != "" {
			return "", fmt.Errorf("no %s engine package is pinned for %s: name a bundle with RBEE_ENGINE_%s", gpu, plat, strings.ToUpper(gpu))
		}
		return "", fmt.Errorf("no engine package is pinned for %s: name a bundle with RBEE_ENGINE_%s", plat, strings.ToUpper(goos+"_"+goarch))
	}
	archive := f.cfg.EngineArchive
	if gpu != "" {
		archive = "" // the archive given is the CPU package: a GPU one comes from the registry
	}
	dir := filepath.Join(f.cfg.Home.Cache("engine-bundles"), strings.TrimSuffix(pkg.CacheName(), ".tgz"))
	unlock, err := lockDir(ctx, dir)
	if err != nil {
		return "", err
	}
	defer unlock()
	if m, err := bundle.ValidateOnce(dir); err == nil && m.Source == pkg.Source() {
		return dir, nil
	}
	narrate("engine_download", fmt.Sprintf("getting engine %s@%s (pinned) for %s from %s", pkg.Name, pkg.Version, plat,
		cmp.Or(archive, pkg.TarballURL(f.cfg.EngineRegistry))))
	var last time.Time
	dir, err = enginefetch.Fetch(ctx, enginefetch.Options{
		Package: pkg, Dir: dir, CacheDir: f.cfg.Home.Cache("npm"), Registry: f.cfg.EngineRegistry, Archive: archive,
		Progress: func(done, total int64) {
			// A bar on a terminal; the client prints a line now and then
			// elsewhere.
			if now := time.Now(); now.Sub(last) >= 200*time.Millisecond || done == total {
				last = now
				ev.Send(rbee.Event{Type: rbee.EventProgress, Actor: me, Action: "engine_download", BytesDone: done, BytesTotal: total,
					Message: fmt.Sprintf("engine %s for %s: %s of %s", path.Base(pkg.Name), plat, rbee.Bytes(uint64(done)), rbee.Bytes(uint64(max(total, 0))))})
			}
		},
		Logf: func(format string, args ...any) { f.log.Info(fmt.Sprintf(format, args...)) },
	})
	if err != nil {
		return "", err
	}
	return dir, nil
}

// dirLocks serialise the preparation of one bundle directory: two hosts
// installed at once share the first one's download.
var dirLocks = struct {
	sync.Mutex
	m map[string]chan struct{}
}{m: map[string]chan struct{}{}}

// lockDir takes dir's lock, waiting no longer than ctx.
func lockDir(ctx context.Context, dir string) (unlock func(), err error) {
	dirLocks.Lock()
	ch := dirLocks.m[dir]
	if ch == nil {
		ch = make(chan struct{}, 1)
		dirLocks.m[dir] = ch
	}
	dirLocks.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
