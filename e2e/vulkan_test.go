package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/enginefetch"
	"github.com/rbee-dev/rbee/internal/sshtest"
	"github.com/rbee-dev/rbee/internal/testenv"
	"github.com/rbee-dev/rbee/queenapi"
)

// vulkanEnv is what a test of the Vulkan backend needs: the bundle, and
// llvmpipe listed as a GPU (RBEE_SOFTWARE_GPU=1) with its compiled shaders
// kept for every test of the run.
func vulkanEnv(t *testing.T) (dir string, vars []string) {
	t.Helper()
	dir, err := testenv.VulkanEngineDir()
	if err != nil {
		t.Fatal(err)
	}
	return dir, []string{"RBEE_SOFTWARE_GPU=1", "MESA_SHADER_CACHE_DIR=" + filepath.Join(tmp, "mesa-shader-cache")}
}

// listDevices is what the Vulkan bundle's backend itself reports, asked
// directly (rbee-worker --list-devices), with env added.
func listDevices(t *testing.T, engine string, env ...string) map[string]map[string]any {
	t.Helper()
	cmd := exec.Command(bins.Worker, "--list-devices", "--engine", engine)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("rbee-worker --list-devices: %v", err)
	}
	devs := map[string]map[string]any{}
	for line := range bytes.SplitSeq(bytes.TrimSpace(out), []byte("\n")) {
		var d map[string]any
		if err := json.Unmarshal(line, &d); err != nil {
			t.Fatalf("--list-devices line %q: %v", line, err)
		}
		devs[d["name"].(string)] = d
	}
	return devs
}

func hiveStatus(t *testing.T, e *env, name string) queenapi.HiveInfo {
	t.Helper()
	r := e.rbee("hive", "status", name, "--json")
	var info queenapi.HiveInfo
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &info) != nil {
		t.Fatalf("hive status %s: exit %d\n%s\n%s", name, r.code, r.stdout, r.stderr)
	}
	return info
}

func device(info queenapi.HiveInfo, id string) (rbee.Device, bool) {
	for _, d := range info.Devices {
		if d.ID == id {
			return d, true
		}
	}
	return rbee.Device{}, false
}

// workerPlacement is the placement the hive's workers logged when ready
// (what their /health says): "Vulkan0:1+out".
func workerPlacement(t *testing.T, rbeeHome string) string {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(rbeeHome, "logs", "w-*.log"))
	var all []string
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		for line := range strings.SplitSeq(string(b), "\n") {
			if strings.Contains(line, "msg=ready") {
				if _, p, ok := strings.Cut(line, "placement="); ok {
					all = append(all, strings.Trim(p, `"`))
				}
			}
		}
	}
	return strings.Join(all, "; ")
}

// TestVulkanLocal: the Vulkan bundle installed on this machine's hive
// makes its backend's device (llvmpipe) a GPU of the hive, with the
// backend's own memory figures; rbee infer --device names it through
// keeper, queen and hive, and the worker holds every layer there.
func TestVulkanLocal(t *testing.T) {
	t.Parallel()
	vk, vars := vulkanEnv(t)
	e := newEnv(t, vars...)
	if r := e.rbee("worker", "install", "--hive", "localhost", vk); r.code != 0 || !strings.Contains(r.stderr, "backends cpu, vulkan") {
		t.Fatalf("worker install: exit %d\n%s", r.code, r.stderr)
	}
	info := hiveStatus(t, e, "localhost")
	gpu0, ok := device(info, "gpu0")
	want := listDevices(t, vk, "GGML_VK_VISIBLE_DEVICES=0")["Vulkan0"]
	if !ok || gpu0.Backend != "Vulkan0" || !gpu0.Software || want == nil ||
		gpu0.Name != want["description"] || float64(gpu0.TotalBytes) != want["total_bytes"].(float64) {
		t.Fatalf("hive status devices = %+v; want gpu0 = the backend's Vulkan0 %v, software", info.Devices, want)
	}
	r := e.rbee("infer", "--hive", "localhost", "--device", "gpu0", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" || !strings.Contains(r.stderr, "engine v0.5.0-cpu-vulkan") {
		t.Fatalf("infer on gpu0: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	if p := workerPlacement(t, filepath.Join(e.home, ".rbee")); p != "Vulkan0:1+out" {
		t.Errorf("worker placement = %q, want every layer and the output on Vulkan0", p)
	}
	e.stopQueen()
}

// TestVulkanLocalChosen: with no engine named, the local hive gets the
// engine its probe calls for — Vulkan here (llvmpipe, RBEE_SOFTWARE_GPU=1)
// — says why, and runs the job on the GPU it lists.
func TestVulkanLocalChosen(t *testing.T) {
	t.Parallel()
	vk, vars := vulkanEnv(t)
	e := newEnv(t, append(vars, "RBEE_ENGINE=", "RBEE_ENGINE_VULKAN="+vk)...)
	r := e.rbee("infer", "--hive", "localhost", "--device", "gpu0", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" || !strings.Contains(r.stderr, "this machine: the vulkan engine: Vulkan loader and software driver lvp") ||
		!strings.Contains(r.stderr, "engine "+filepath.Base(vk)+")") {
		t.Fatalf("infer on gpu0 with the chosen engine: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	info := hiveStatus(t, e, "localhost")
	if info.Host == nil || info.Host.EngineKind != "vulkan" || !strings.Contains(info.Host.EngineWhy, "lvp") {
		t.Errorf("hive status localhost: host %+v, want the vulkan engine and why", info.Host)
	}
	e.stopQueen()
}

// TestVulkanTwoGPUs: a hive with two GPUs (llvmpipe named twice through
// llama.cpp's GGML_VK_VISIBLE_DEVICES=0,0) runs one worker split across
// both when asked for gpu0,gpu1, and --explain shows the split.
func TestVulkanTwoGPUs(t *testing.T) {
	t.Parallel()
	vk, vars := vulkanEnv(t)
	e := newEnv(t, append(vars, "GGML_VK_VISIBLE_DEVICES=0,0")...)
	if r := e.rbee("worker", "install", "--hive", "localhost", vk); r.code != 0 {
		t.Fatalf("worker install: exit %d\n%s", r.code, r.stderr)
	}
	info := hiveStatus(t, e, "localhost")
	if g0, ok0 := device(info, "gpu0"); !ok0 || g0.Backend != "Vulkan0" {
		t.Fatalf("devices = %+v, want gpu0 Vulkan0 and gpu1 Vulkan1", info.Devices)
	}
	if g1, ok1 := device(info, "gpu1"); !ok1 || g1.Backend != "Vulkan1" {
		t.Fatalf("devices = %+v, want gpu0 Vulkan0 and gpu1 Vulkan1", info.Devices)
	}
	r := e.rbee("infer", "--hive", "localhost", "--device", "gpu0,gpu1", "--explain", "--model", longModel, "--temperature", "0", "--max-tokens", "4", "hello")
	if r.code != 0 || !strings.Contains(r.stderr, "2 GPUs split by layers") || !strings.Contains(r.stderr, "picked") {
		t.Fatalf("infer on gpu0,gpu1: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	p := workerPlacement(t, filepath.Join(e.home, ".rbee"))
	if !strings.HasPrefix(p, "Vulkan0:") || !strings.Contains(p, " Vulkan1:") || strings.Contains(p, "CPU") || strings.Contains(p, ";") {
		t.Errorf("worker placement = %q, want one worker with layers on Vulkan0 and Vulkan1", p)
	}

	// The door places a deployment's replica the same way.
	if r := e.rbee("model", "deploy", longModel, "--name", "split", "--hive", "localhost", "--device", "gpu0,gpu1"); r.code != 0 {
		t.Fatalf("model deploy --device gpu0,gpu1: exit %d\n%s", r.code, r.stderr)
	}
	c := openai.NewClient(option.WithBaseURL("http://"+e.queen+"/v1/"), option.WithAPIKey("unused-on-loopback"), option.WithMaxRetries(0))
	got, err := c.Completions.New(context.Background(), openai.CompletionNewParams{
		Model: "split", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("abc")}, Temperature: openai.Float(0), MaxTokens: openai.Int(5),
	})
	if err != nil || len(got.Choices) != 1 || got.Usage.CompletionTokens == 0 {
		t.Fatalf("door completion on the split deployment: %v %+v", err, got)
	}
	ds := e.deployments(t)
	if len(ds) != 1 || len(ds[0].Workers) != 1 || ds[0].Workers[0].Device != "gpu0,gpu1" {
		t.Errorf("deployments = %+v, want one replica on gpu0,gpu1", ds)
	}
	e.stopQueen()
}

// TestSSHVulkanHost: a host whose probe finds the Vulkan loader and a
// driver gets the Vulkan bundle pushed, says why, and serves on its GPU.
func TestSSHVulkanHost(t *testing.T) {
	t.Parallel()
	vk, vars := vulkanEnv(t)
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	e.vars = append(e.vars, append(vars, "RBEE_ENGINE_VULKAN="+vk)...)
	r := e.addHive(hosts[0], "h1")
	if r.code != 0 || !strings.Contains(r.stderr, "the vulkan engine: Vulkan loader and software driver lvp (RBEE_SOFTWARE_GPU=1)") {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	info := hiveStatus(t, e, "h1")
	if g, ok := device(info, "gpu0"); !ok || g.Backend != "Vulkan0" || info.Host == nil || info.Host.EngineKind != "vulkan" ||
		!strings.Contains(strings.Join(info.Host.Engines, " "), "cpu, vulkan") {
		t.Fatalf("hive status h1: devices %+v, host %+v; want gpu0 on Vulkan0, the vulkan engine", info.Devices, info.Host)
	}
	r = e.rbee("infer", "--hive", "h1", "--device", "gpu0", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" || !strings.Contains(r.stderr, "-vulkan") {
		t.Fatalf("infer on h1/gpu0: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	e.stopQueen()
}

// TestSSHEngineChoice: the engine a host would get follows its probe: an
// NVIDIA driver of 580 with the CUDA 13 runtime gets the CUDA build, an
// arm64 host the arm64 CPU build (hive add --dry-run: nothing installed).
// The hosts' tools are faked on their PATH (nvidia-smi, uname) and
// library path, as the probe reads them.
func TestSSHEngineChoice(t *testing.T) {
	t.Parallel()
	// The hosts' users must reach the fakes: t.TempDir's parent is 0700.
	fake, err := os.MkdirTemp("", "rbee-fake-host-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(fake) })
	bin, lib := filepath.Join(fake, "bin"), filepath.Join(fake, "lib")
	for _, d := range []string{bin, lib} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, s string, mode os.FileMode) {
		if err := os.WriteFile(p, []byte(s), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(bin, "nvidia-smi"), "#!/bin/sh\necho 580.95.05\n", 0o755)
	write(filepath.Join(lib, "libcudart.so.13"), "", 0o644)
	write(filepath.Join(lib, "libcublas.so.13"), "", 0o644)
	for _, p := range []string{fake, bin, lib} {
		os.Chmod(p, 0o755)
	}
	// sshd reads ~/.ssh/environment after it sets PATH.
	userEnv := sshtest.Options{ExtraConfig: "PermitUserEnvironment yes\n"}
	hosts := sshtest.Start(t, 2, userEnv)
	nv, arm := hosts[0], hosts[1]
	armBin := filepath.Join(fake, "arm")
	os.MkdirAll(armBin, 0o755)
	write(filepath.Join(armBin, "uname"), "#!/bin/sh\ncase \"$1\" in -m) echo aarch64;; *) exec /bin/uname \"$@\";; esac\n", 0o755)
	write(filepath.Join(nv.Home, ".ssh", "environment"), "PATH="+bin+":/usr/local/bin:/usr/bin:/bin\nLD_LIBRARY_PATH="+lib+"\n", 0o644)
	write(filepath.Join(arm.Home, ".ssh", "environment"), "PATH="+armBin+":/usr/local/bin:/usr/bin:/bin\n", 0o644)

	e := newEnv(t, "RBEE_INVENTORY="+filepath.Join(t.TempDir(), "inventory.toml"))
	for _, tt := range []struct {
		h              *sshtest.Host
		kind, pkg, why string
	}{
		{nv, "cuda", "@node-llama-cpp/linux-x64-cuda@3.22.1", "NVIDIA driver 580.95.05 (the CUDA 13 build needs 580 or later) and the CUDA 13 runtime"},
		{arm, "cpu", "@node-llama-cpp/linux-arm64@3.22.1", "linux/arm64: only the CPU build is pinned for it"},
	} {
		r := e.rbee("hive", "add", target(tt.h), "--identity", tt.h.ClientKey, "--accept-new-host-key", "--dry-run", "--json")
		var plan *queenapi.InstallPlan
		for line := range strings.SplitSeq(r.stdout, "\n") {
			var ev rbee.Event
			if json.Unmarshal([]byte(line), &ev) == nil && ev.Action == queenapi.EventInstallPlan {
				plan = &queenapi.InstallPlan{}
				json.Unmarshal(ev.Data, plan)
			}
		}
		if plan == nil || plan.EngineKind != tt.kind || plan.EnginePackage != tt.pkg || plan.EngineWhy != tt.why {
			t.Errorf("hive add %s --dry-run: exit %d, plan %+v; want the %s engine %s because %q\n%s\n%s", tt.h.Addr, r.code, plan, tt.kind, tt.pkg, tt.why, r.stdout, r.stderr)
		}
	}
	e.stopQueen()
}

// TestVulkanFetchedOnFirstInfer: a user with nothing set on a machine with
// a Vulkan driver: the local hive's probe calls for the Vulkan engine,
// which the first job fetches from the registry (a stand-in serving the
// real pinned package) and installs, and answers on gpu0.
func TestVulkanFetchedOnFirstInfer(t *testing.T) {
	t.Parallel()
	_, vars := vulkanEnv(t)
	pkg := enginefetch.LinuxAMD64Vulkan
	reg := packageRegistry(t, pkg)
	e := newEnv(t, append(vars, noEngine(reg)...)...)
	r := e.rbee("infer", "--device", "gpu0", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("first infer: exit %d stdout %q\n%s", r.code, r.stdout, r.stderr)
	}
	inOrder(t, r.stderr,
		"this machine: the vulkan engine: Vulkan loader and software driver lvp",
		"getting engine "+pkg.Name+"@"+pkg.Version+" (pinned) for linux/amd64 from "+reg.URL,
		"has 2 device(s): gpu0 llvmpipe",
		"is ready on gpu0",
		"engine node-llama-cpp-linux-x64-vulkan-3.22.1)",
	)
	if got := reg.Hits(); got != 1 {
		t.Errorf("registry downloads: got %d, want 1", got)
	}
	e.stopQueen()
}
