package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/enginefetch"
	"github.com/rbee-dev/rbee/enginefetch/npmtest"
	"github.com/rbee-dev/rbee/internal/sshtest"
	"github.com/rbee-dev/rbee/internal/testenv"
)

// engineRegistry serves the real pinned CPU package (the tarball `make
// engine` cached) as the npm registry would: no network in tests.
func engineRegistry(t *testing.T) *npmtest.Registry {
	t.Helper()
	return packageRegistry(t, enginefetch.LinuxAMD64)
}

// packageRegistry serves the real pinned package pkg from the cache the
// Makefile's engine targets fill.
func packageRegistry(t *testing.T, pkg enginefetch.Package) *npmtest.Registry {
	t.Helper()
	root, err := testenv.Root()
	if err != nil {
		t.Fatal(err)
	}
	tgz, err := os.ReadFile(filepath.Join(root, ".rbee-dev", "cache", pkg.CacheName()))
	if err != nil {
		t.Fatalf("the pinned %s tarball: %v (run `make engine engine-vulkan`)", pkg.Name, err)
	}
	return npmtest.NewRegistry(t, map[enginefetch.Package][]byte{pkg: tgz})
}

// noEngine is what a user with nothing set has: no RBEE_ENGINE, the
// registry a stand-in.
func noEngine(reg *npmtest.Registry) []string {
	return []string{"RBEE_ENGINE=", "RBEE_ENGINE_ARCHIVE=", "RBEE_NPM_REGISTRY=" + reg.URL}
}

// TestEngineInstalledOnFirstInfer: on a fresh home with no engine named,
// the first job installs the pinned bundle into the local hive's worker
// catalog, with progress, and answers; the next installs nothing.
func TestEngineInstalledOnFirstInfer(t *testing.T) {
	t.Parallel()
	reg := engineRegistry(t)
	e := newEnv(t, noEngine(reg)...)
	r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("first infer: exit %d stdout %q\n%s", r.code, r.stdout, r.stderr)
	}
	inOrder(t, r.stderr,
		"[hive localhost] no engine bundle for cpu on hive localhost: installing @node-llama-cpp/linux-x64@3.22.1 (pinned) from "+reg.URL,
		"[hive localhost] engine linux-x64: 10.3 MiB of 10.3 MiB", // the progress, as plain lines off a terminal
		"[hive localhost] engine v0.5.0-cpu installed in "+filepath.Join(e.home, ".rbee", "engines", "v0.5.0-cpu"),
		"engine v0.5.0-cpu)",
		"done:",
	)
	if got := reg.Hits(); got != 1 {
		t.Errorf("registry downloads: got %d, want 1", got)
	}
	r = e.rbee("worker", "ls", "--json")
	if !strings.Contains(r.stdout, `"engine-llama.cpp-v0.5.0-cpu"`) {
		t.Errorf("worker ls lacks the installed engine: %s", r.stdout)
	}

	// A new queen, hive and worker: the bundle is in the catalog.
	e.stopQueen()
	r = e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("second infer: exit %d stdout %q\n%s", r.code, r.stdout, r.stderr)
	}
	inOrder(t, r.stderr, "hive localhost is asleep", "starting a worker", "engine v0.5.0-cpu)", "done:")
	if strings.Contains(r.stderr, "install") || strings.Contains(r.stderr, "engine linux-x64") {
		t.Errorf("second infer installs again:\n%s", r.stderr)
	}
	if got := reg.Hits(); got != 1 {
		t.Errorf("registry downloads after the second infer: got %d, want still 1", got)
	}
	e.stopQueen()
}

// TestEngineNotNeededForHiveAdd: with no engine on this machine, hive add
// fetches the pinned bundle here, pushes it, and the host answers; the
// local hive installs nothing.
func TestEngineNotNeededForHiveAdd(t *testing.T) {
	t.Parallel()
	reg := engineRegistry(t)
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	e.vars = append(e.vars, noEngine(reg)...)
	r := e.addHive(hosts[0], "h1")
	if r.code != 0 || !strings.Contains(r.stdout, "hive h1 is ready") {
		t.Fatalf("hive add: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	inOrder(t, r.stderr,
		"getting engine @node-llama-cpp/linux-x64@3.22.1 (pinned) for linux/amd64 from "+reg.URL,
		"engine linux-x64 for linux/amd64: 10.3 MiB of 10.3 MiB",
		"uploaded rbee-hive, rbee-worker, engine",
		"started rbee-hive",
	)
	r = e.rbee("infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" || !strings.Contains(r.stderr, "engine v0.5.0-cpu)") {
		t.Fatalf("infer on h1: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	if got := reg.Hits(); got != 1 {
		t.Errorf("registry downloads: got %d, want 1", got)
	}
	if _, err := os.Stat(filepath.Join(e.home, ".rbee", "engines")); !os.IsNotExist(err) {
		t.Errorf("the local hive has an engine directory: %v", err)
	}
	e.stopQueen()
}
