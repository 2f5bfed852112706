package agent

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/bundle"
	"github.com/rbee-dev/rbee/enginefetch"
	"github.com/rbee-dev/rbee/enginefetch/npmtest"
	"github.com/rbee-dev/rbee/internal/testenv"
	"github.com/rbee-dev/rbee/supervisor"
)

// newTestAgent is an agent on a fresh home with no engine of its own.
func newTestAgent(t *testing.T, fetch *EngineFetch) *Agent {
	t.Helper()
	home := t.TempDir()
	worker := filepath.Join(home, "rbee-worker")
	if err := os.WriteFile(worker, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	a, err := New(t.Context(), Config{Home: filepath.Join(home, ".rbee"), WorkerBin: worker, Fetch: fetch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// pinnedRegistry serves the real pinned CPU package that `make engine`
// cached.
func pinnedRegistry(t *testing.T) *npmtest.Registry {
	t.Helper()
	root, err := testenv.Root()
	if err != nil {
		t.Fatal(err)
	}
	tgz, err := os.ReadFile(filepath.Join(root, ".rbee-dev", "cache", enginefetch.LinuxAMD64.CacheName()))
	if err != nil {
		t.Fatalf("the pinned engine tarball: %v (run `make engine`)", err)
	}
	return npmtest.NewRegistry(t, map[enginefetch.Package][]byte{enginefetch.LinuxAMD64: tgz})
}

// events collects what pickEngine sends.
type events struct {
	mu sync.Mutex
	ev []rbee.Event
}

func (e *events) send(ev rbee.Event) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ev = append(e.ev, ev)
	return nil
}

func (e *events) actions() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.ev {
		if len(out) == 0 || out[len(out)-1] != ev.Action { // progress comes many times
			out = append(out, ev.Action)
		}
	}
	return out
}

func TestPickEngineWithoutFetch(t *testing.T) {
	a := newTestAgent(t, nil)
	var ev events
	_, err := a.pickEngine(t.Context(), "cpu", "", ev.send)
	var re *rbee.Error
	if !errors.As(err, &re) || re.Code != rbee.CodeEngine || !strings.Contains(re.Hint, "rbee worker install") {
		t.Fatalf("got %v, want %s with a hint to rbee worker install", err, rbee.CodeEngine)
	}
}

func TestPickEngineInstallsThePinnedBundle(t *testing.T) {
	if runtime.GOOS+"/"+runtime.GOARCH != "linux/amd64" {
		t.Fatalf("this test serves the linux/amd64 package; %s/%s has none pinned", runtime.GOOS, runtime.GOARCH)
	}
	reg := pinnedRegistry(t)
	a := newTestAgent(t, &EngineFetch{Registry: reg.URL, GPU: "cuda"})
	want := filepath.Join(a.enginesDir(), "v0.5.0-cpu")

	// Two jobs at once: one download, both get the bundle.
	var wg sync.WaitGroup
	var first [2]events
	got := make([]string, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Go(func() { got[i], errs[i] = a.pickEngine(t.Context(), "cpu", "", first[i].send) })
	}
	wg.Wait()
	for i := range 2 {
		if errs[i] != nil || got[i] != want {
			t.Fatalf("job %d: got %q %v, want %s", i, got[i], errs[i], want)
		}
	}
	installs := strings.Join(first[0].actions(), " ") + " | " + strings.Join(first[1].actions(), " ")
	if reg.Hits() != 1 || (!strings.HasPrefix(installs, "engine_install engine_download engine_installed | ") &&
		!strings.HasSuffix(installs, " | engine_install engine_download engine_installed")) {
		t.Errorf("downloads %d, events %q; want one install, with progress, and one job that waited", reg.Hits(), installs)
	}
	ws, err := a.db.WorkerBinaries(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if n := len(ws); n != 2 || ws[0].Path != want && ws[1].Path != want {
		t.Errorf("worker catalog: %+v, want the worker and %s", ws, want)
	}
	if left, _ := filepath.Glob(filepath.Join(a.enginesDir(), ".fetch-*")); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}

	tests := []struct {
		name, device string
		wantActions  []string
		wantHits     int64
	}{
		{name: "installed", device: "cpu"},
		// No CUDA package in the registry: the GPU runs on the CPU bundle.
		{name: "gpu without its bundle", device: "gpu0", wantActions: []string{"engine_install", "engine_install_failed"}, wantHits: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg.Reset()
			var ev events
			got, err := a.pickEngine(t.Context(), tt.device, "", ev.send)
			if err != nil || got != want {
				t.Fatalf("got %q %v, want %s", got, err, want)
			}
			if got := ev.actions(); strings.Join(got, " ") != strings.Join(tt.wantActions, " ") {
				t.Errorf("events: got %v, want %v", got, tt.wantActions)
			}
			if reg.Hits() != tt.wantHits {
				t.Errorf("downloads: got %d, want %d", reg.Hits(), tt.wantHits)
			}
		})
	}
}

// copyBundle copies the dev engine bundle into a fresh directory; drop
// names files left out (the bundle is then prepared again without them).
func copyBundle(t *testing.T, drop ...string) string {
	t.Helper()
	src, err := testenv.EngineDir()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "engine")
	if out, err := exec.Command("cp", "-a", src, dir).CombinedOutput(); err != nil {
		t.Fatalf("copy engine: %v\n%s", err, out)
	}
	if len(drop) == 0 {
		return dir
	}
	for _, name := range append(drop, bundle.ManifestName) {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "prepared")
	if _, err := bundle.Prepare(t.Context(), dir, out, bundle.Options{Source: dir}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestEngineFault: a start that failed on a bundle changed since it was
// installed is the engine's fault (engine_unusable, exit 10) with the
// command that reinstalls it, not a failed worker; on an intact bundle, or
// for another failure, the error stays what it was.
func TestEngineFault(t *testing.T) {
	a := newTestAgent(t, nil)
	a.cfg.Name = "h1"
	dir := copyBundle(t)
	failed := rbee.Errorf(rbee.CodeWorkerFailed, "worker w-1 (pid 1) exited: exit status 1")
	if got := a.engineFault(dir, failed); got != error(failed) {
		t.Errorf("intact bundle: got %v, want the worker's error", got)
	}
	lib, err := filepath.EvalSymlinks(filepath.Join(dir, "libllama.so"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(lib)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 0xff
	if err := os.WriteFile(lib, b, 0o644); err != nil {
		t.Fatal(err)
	}
	got := a.engineFault(dir, failed)
	var re *rbee.Error
	if !errors.As(got, &re) || re.Code != rbee.CodeEngine || !strings.Contains(re.Message, "sha256 mismatch") ||
		!strings.Contains(re.Hint, "rbee worker install --hive h1 ") {
		t.Errorf("tampered bundle: got %v (hint %q), want %s naming the file, with the command that reinstalls it", got, rbee.HintOf(got), rbee.CodeEngine)
	}
	if rbee.ExitCodeFor(rbee.CodeOf(got)) != rbee.ExitEngine {
		t.Errorf("tampered bundle: exit %d, want %d", rbee.ExitCodeFor(rbee.CodeOf(got)), rbee.ExitEngine)
	}
	busy := rbee.Errorf(rbee.CodeBusy, "busy")
	if got := a.engineFault(dir, busy); got != error(busy) {
		t.Errorf("another failure: got %v, want it as it was", got)
	}
}

// TestEngineWithoutRPC: a split's worker on a hive whose bundle has no RPC
// backend, and an RPC server where it has no rpc-server, fail before
// anything starts, as the engine's fault, naming the command that installs
// one.
func TestEngineWithoutRPC(t *testing.T) {
	plain := copyBundle(t, "libggml-rpc.so", bundle.RPCServer)
	home := t.TempDir()
	worker := filepath.Join(home, "rbee-worker")
	if err := os.WriteFile(worker, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	a, err := New(t.Context(), Config{Name: "h2", Home: filepath.Join(home, ".rbee"), WorkerBin: worker, EngineDir: plain})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()

	for name, err := range map[string]error{
		"split worker": func() error {
			_, err := a.workerEngine(t.Context(), workerStart{device: "cpu", rpc: []string{"127.0.0.1:5000"}}, quietSend)
			return err
		}(),
		"rpc server": func() error {
			_, err := a.sup.StartRPC(t.Context(), supervisor.RPCSpec{Engine: plain, Device: "cpu"})
			return a.rpcStartError(plain, err)
		}(),
	} {
		if rbee.CodeOf(err) != rbee.CodeEngine || !strings.Contains(rbee.HintOf(err), "rbee worker install --hive h2 ") {
			t.Errorf("%s: got %v (code %s, hint %q), want %s with the command that installs a bundle with the RPC backend",
				name, err, rbee.CodeOf(err), rbee.HintOf(err), rbee.CodeEngine)
		}
	}
	if got := a.sup.RPCServers(); len(got) != 0 {
		t.Errorf("started %v", got)
	}
	// Without RPC the bundle serves.
	if engine, err := a.workerEngine(t.Context(), workerStart{device: "cpu"}, quietSend); err != nil || engine != plain {
		t.Errorf("plain worker: got %q %v, want %s", engine, err, plain)
	}
}
