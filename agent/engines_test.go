package agent

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/enginefetch"
	"github.com/rbee-dev/rbee/enginefetch/npmtest"
	"github.com/rbee-dev/rbee/internal/testenv"
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
	_, err := a.pickEngine(t.Context(), "cpu", ev.send)
	var re *rbee.Error
	if !errors.As(err, &re) || re.Code != rbee.CodeWorkerFailed || !strings.Contains(re.Hint, "rbee worker install") {
		t.Fatalf("got %v, want %s with a hint to rbee worker install", err, rbee.CodeWorkerFailed)
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
		wg.Go(func() { got[i], errs[i] = a.pickEngine(t.Context(), "cpu", first[i].send) })
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
			got, err := a.pickEngine(t.Context(), tt.device, ev.send)
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
