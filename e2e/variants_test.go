package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/bundle"
	"github.com/rbee-dev/rbee/internal/sshtest"
	"github.com/rbee-dev/rbee/queenapi"
)

// cpuFlags reads this machine's CPU flags, which the loopback hosts share.
func cpuFlags(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && (strings.TrimSpace(k) == "flags" || strings.TrimSpace(k) == "Features") {
			return strings.Fields(v)
		}
	}
	t.Fatal("no flags line in /proc/cpuinfo")
	return nil
}

// TestVariantsShippedPerCPU adds a fresh host: it gets only the engine's
// CPU variants its CPU needs (the one ggml picks there and the portable
// one), its manifest says which were left out, the bundle passes the
// host's checks and the worker runs there; hive status reports what the
// probe found.
func TestVariantsShippedPerCPU(t *testing.T) {
	t.Parallel()
	full, err := bundle.Validate(engineDir)
	if err != nil {
		t.Fatal(err)
	}
	if full.Arch != "amd64" || len(full.CPUVariants()) < 3 {
		t.Skipf("the test bundle is %s with CPU variants %v: nothing to leave out", full.Arch, full.CPUVariants())
	}
	needs := full.CPUNeeds(cpuFlags(t))
	e, hosts := sshEnv(t, 2, sshtest.Options{})
	h := hosts[0]

	// The dry run plans the same cut.
	r := e.rbee("hive", "add", target(hosts[1]), "--name", "h2", "--identity", hosts[1].ClientKey, "--accept-new-host-key", "--dry-run", "--json")
	var plan queenapi.InstallPlan
	for _, line := range lines(r.stdout) {
		var ev struct {
			Action string          `json:"action"`
			Data   json.RawMessage `json:"data"`
		}
		if json.Unmarshal([]byte(line), &ev) == nil && ev.Action == queenapi.EventInstallPlan {
			_ = json.Unmarshal(ev.Data, &plan)
		}
	}
	var planned []string
	for _, f := range plan.Files {
		if v := bundle.CPUVariant(f.Name); v != "" {
			planned = append(planned, v)
		}
	}
	if r.code != 0 || len(planned) == 0 || len(planned) >= len(full.CPUVariants()) {
		t.Errorf("dry run: exit %d, planned CPU variants %v of %v\n%s", r.code, planned, full.CPUVariants(), r.stderr)
	}

	if r := e.addHive(h, "h1"); r.code != 0 {
		t.Fatalf("hive add: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	dir := filepath.Join(h.Home, ".rbee", "engines", bundle.Variant(full))
	var shipped, omitted []string
	for _, f := range full.Files {
		v := bundle.CPUVariant(f.Name)
		_, err := os.Stat(filepath.Join(dir, f.Name))
		if bundle.Unused(f.Name) { // nothing rbee runs loads it: left out too
			if err == nil {
				t.Errorf("%s is on the host, want it left out", f.Name)
			}
			omitted = append(omitted, f.Name)
			continue
		}
		if v == "" {
			continue
		}
		switch {
		case needs(f.Name) && err != nil:
			t.Errorf("%s: %v, want it on the host (its CPU runs it)", f.Name, err)
		case !needs(f.Name) && err == nil:
			t.Errorf("%s is on the host, want it left out", f.Name)
		case needs(f.Name):
			shipped = append(shipped, v)
		default:
			omitted = append(omitted, f.Name)
		}
	}
	if !slices.Contains(shipped, bundle.PortableCPUVariant) || len(shipped) != 2 || len(omitted) == 0 {
		t.Errorf("shipped %v, omitted %v: want the best variant and %s, the rest left out", shipped, omitted, bundle.PortableCPUVariant)
	}
	if !slices.Equal(shipped, planned) {
		t.Errorf("shipped %v, the dry run planned %v", shipped, planned)
	}
	// The host's manifest records what was left out, and its bundle passes
	// the full check the hive's side runs.
	m, err := bundle.Validate(dir)
	if err != nil {
		t.Fatalf("the host's bundle: %v", err)
	}
	var gotOmitted []string
	for _, f := range m.Omitted {
		gotOmitted = append(gotOmitted, f.Name)
	}
	slices.Sort(omitted)
	if !slices.Equal(gotOmitted, omitted) || !slices.Equal(m.CPUVariants(), shipped) {
		t.Errorf("host manifest: variants %v omitted %v, want %v and %v", m.CPUVariants(), gotOmitted, shipped, omitted)
	}

	r = e.rbee("infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("infer on h1: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	// A second up sends nothing: the cut is stable.
	if r := e.addHive(h, "h1"); r.code != 0 || strings.Contains(r.stderr, "uploaded") {
		t.Errorf("second hive add: exit %d\n%s", r.code, r.stderr)
	}

	// hive status --json carries the probe's facts; the text, one line.
	r = e.rbee("hive", "status", "h1", "--json")
	var info queenapi.HiveInfo
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil || r.code != 0 {
		t.Fatalf("hive status --json: exit %d, %v\n%s\n%s", r.code, err, r.stdout, r.stderr)
	}
	f := info.Host
	if f == nil || f.OS != "linux" || f.Arch != full.Arch || f.Libc == "" || !f.Libffi || f.FreeBytes == 0 || f.Home != h.Home || f.NVML == "" {
		t.Errorf("hive status --json host = %+v, want linux/%s, libc, libffi, free bytes, home %s, the NVML answer", f, full.Arch, h.Home)
	}
	r = e.rbee("hive", "status", "h1")
	if r.code != 0 || !strings.Contains(r.stdout, "\nhost: linux/"+full.Arch+", ") || !strings.Contains(r.stdout, "libffi found") {
		t.Errorf("hive status: exit %d\n%s", r.code, r.stdout)
	}
	// This machine's hive: the same facts, probed here.
	r = e.rbee("hive", "status", "localhost", "--json")
	info = queenapi.HiveInfo{}
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil || r.code != 0 {
		t.Fatalf("hive status localhost --json: exit %d, %v\n%s\n%s", r.code, err, r.stdout, r.stderr)
	}
	if f := info.Host; f == nil || f.OS != "linux" || f.Libc == "" || f.Home == "" || f.NVML == "" {
		t.Errorf("hive status localhost --json host = %+v, want linux, libc, home, the NVML answer", f)
	}
	e.stopQueen()
}
