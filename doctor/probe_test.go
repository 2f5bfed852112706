package doctor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// healthyProbe is what probeScript prints on a good CPU host.
const healthyProbe = `os=Linux
machine=x86_64
distro=Debian GNU/Linux 12 (bookworm)
libc=glibc 2.36
lib=libffi.so.8 /lib/x86_64-linux-gnu/libffi.so.8
lib=libstdc++.so.6 /lib/x86_64-linux-gnu/libstdc++.so.6
lib=libgcc_s.so.1 /lib/x86_64-linux-gnu/libgcc_s.so.1
cuda=libcuda.so.1
cuda=libcudart.so.13
cuda=libcublas.so.13
home=/home/al
home_writable=yes
home_owner=al
user=al
free_kb=83886080
nvidia_smi=none
end=ok
`

// with replaces (or adds) the lines of key in a probe answer.
func with(probe string, key string, values ...string) string {
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(probe), "\n") {
		if !strings.HasPrefix(line, key+"=") {
			out = append(out, line)
		}
	}
	for _, v := range values {
		out = append(out, key+"="+v)
	}
	return strings.Join(out, "\n") + "\n"
}

func TestEvaluate(t *testing.T) {
	gpus := with(healthyProbe, "nvidia_smi", "0")
	gpus = with(gpus, "nvidia_smi_line", "0, NVIDIA H200, 143771, 580.65.06", "1, NVIDIA H200, 143771, 580.65.06")
	gpus = with(gpus, "cuda", "libcuda.so.1 /usr/lib/x86_64-linux-gnu/libcuda.so.1", "libcudart.so.13", "libcublas.so.13")
	cudaOK := with(gpus, "cuda", "libcuda.so.1 /usr/lib/x86_64-linux-gnu/libcuda.so.1",
		"libcudart.so.13 /usr/local/cuda/lib64/libcudart.so.13", "libcublas.so.13 /usr/local/cuda/lib64/libcublas.so.13")
	tests := []struct {
		name   string
		probe  string
		want   map[string]Verdict
		detail map[string]string // substrings of the detail
	}{
		{
			name:  "healthy",
			probe: healthyProbe,
			want: map[string]Verdict{checkPlatform: OK, checkGlibc: OK, checkLibs: OK, checkDisk: OK, checkHome: OK,
				checkGPU: Skip, checkCUDA: Skip, checkInstalled: OK},
			detail: map[string]string{checkPlatform: "linux/amd64 (Debian", checkGlibc: "glibc 2.36 (need 2.34"},
		},
		{name: "arm64", probe: with(healthyProbe, "machine", "aarch64"), want: map[string]Verdict{checkPlatform: OK}, detail: map[string]string{checkPlatform: "linux/arm64"}},
		{name: "riscv", probe: with(healthyProbe, "machine", "riscv64"), want: map[string]Verdict{checkPlatform: Fail}},
		{name: "old glibc", probe: with(healthyProbe, "libc", "glibc 2.31"), want: map[string]Verdict{checkGlibc: Fail}, detail: map[string]string{checkGlibc: "glibc 2.31, older than the 2.34"}},
		{name: "ldd line", probe: with(healthyProbe, "libc", "ldd (Ubuntu GLIBC 2.35-0ubuntu3.8) 2.35"), want: map[string]Verdict{checkGlibc: OK}, detail: map[string]string{checkGlibc: "glibc 2.35"}},
		{name: "musl", probe: with(healthyProbe, "libc", "musl libc (x86_64)"), want: map[string]Verdict{checkGlibc: Fail}},
		{name: "no libffi", probe: with(healthyProbe, "lib", "libffi.so.8", "libstdc++.so.6 /usr/lib/libstdc++.so.6", "libgcc_s.so.1 /usr/lib/libgcc_s.so.1"),
			want: map[string]Verdict{checkLibs: Fail}, detail: map[string]string{checkLibs: "missing libffi.so.8"}},
		{name: "little disk", probe: with(healthyProbe, "free_kb", "2097152"), want: map[string]Verdict{checkDisk: Warn}},
		{name: "no disk", probe: with(healthyProbe, "free_kb", "1024"), want: map[string]Verdict{checkDisk: Fail}},
		{name: "home read-only", probe: with(healthyProbe, "home_writable", "no"), want: map[string]Verdict{checkHome: Fail}},
		{name: ".rbee read-only", probe: with(healthyProbe, "rbee_writable", "no"), want: map[string]Verdict{checkHome: Fail}},
		{name: "installed", probe: with(healthyProbe, "installed", "0.1.0", "dev"), want: map[string]Verdict{checkInstalled: OK}, detail: map[string]string{checkInstalled: "0.1.0, dev in ~/.rbee/hive/; this rbee (0.2.0) is not there"}},
		{name: "gpus without cuda", probe: gpus, want: map[string]Verdict{checkGPU: OK, checkCUDA: Warn},
			detail: map[string]string{checkGPU: "driver 580.65.06, 2 GPU(s): 0 NVIDIA H200 (143771 MiB)", checkCUDA: "missing libcudart.so.13, libcublas.so.13"}},
		{name: "gpus with cuda", probe: cudaOK, want: map[string]Verdict{checkGPU: OK, checkCUDA: OK}},
		{name: "old driver", probe: with(cudaOK, "nvidia_smi_line", "0, Tesla T4, 15360, 535.183.01"), want: map[string]Verdict{checkCUDA: Warn}, detail: map[string]string{checkCUDA: "driver 535.183.01 is older than the 580"}},
		{name: "nvidia-smi fails", probe: with(with(healthyProbe, "nvidia_smi", "9"), "nvidia_smi_line", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."),
			want: map[string]Verdict{checkGPU: Warn, checkCUDA: Skip}, detail: map[string]string{checkGPU: "couldn't communicate"}},
		{name: "driver without nvidia-smi", probe: with(healthyProbe, "nvidia_proc", "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 07:09:29 UTC 2025"),
			want: map[string]Verdict{checkGPU: Warn}, detail: map[string]string{checkGPU: "driver 580.65.06 loaded"}},
		{name: "cut short", probe: with(healthyProbe, "end"), want: map[string]Verdict{checkProbe: Warn}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := &Report{}
			evaluate(rep, parseProbe([]byte(tt.probe)), Options{Needs: DefaultNeeds(), Version: "0.2.0"})
			for name, want := range tt.want {
				c, ok := rep.Check(name)
				if !ok {
					t.Fatalf("no %s check in %+v", name, rep.Checks)
				}
				if c.Verdict != want {
					t.Errorf("%s: got %s (%s), want %s", name, c.Verdict, c.Detail, want)
				}
				if (c.Verdict == Fail || c.Verdict == Warn) && c.Hint == "" && name != checkProbe {
					t.Errorf("%s: %s without a hint", name, c.Verdict)
				}
			}
			for name, sub := range tt.detail {
				if c, _ := rep.Check(name); !strings.Contains(c.Detail, sub) {
					t.Errorf("%s: detail %q, want it to contain %q", name, c.Detail, sub)
				}
			}
		})
	}
}

func TestVersionLess(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{{"2.9", "2.34", true}, {"2.34", "2.34", false}, {"2.36", "2.34", false}, {"2", "2.1", true}, {"3.0", "2.40", false}}
	for _, tt := range tests {
		if got := versionLess(tt.a, tt.b); got != tt.want {
			t.Errorf("versionLess(%s, %s): got %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestNeedsOf(t *testing.T) {
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	n := NeedsOf(sh)
	if len(n.From) != 1 || !strings.HasPrefix(n.Glibc, "2.") {
		t.Fatalf("NeedsOf(%s): got %+v, want a glibc 2.x read from it", sh, n)
	}
	// A bundle directory: its *.so* files count, links to them do not.
	dir := t.TempDir()
	data, err := os.ReadFile(sh)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "libllama.v1.so"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("libllama.v1.so", filepath.Join(dir, "libllama.so")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rbee-bundle.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := NeedsOf(dir, filepath.Join(dir, "missing")); got.Glibc != n.Glibc || len(got.From) != 1 {
		t.Errorf("NeedsOf(bundle dir): got %+v, want glibc %s from one file", got, n.Glibc)
	}
	if got := NeedsOf("/nonexistent", filepath.Join(dir, "rbee-bundle.json")); got.Glibc != engineGlibc || len(got.From) != 0 {
		t.Errorf("NeedsOf(nothing readable): got %+v, want the built-in %s", got, engineGlibc)
	}
}

// This machine: the same probe, run by sh here.
func TestRunLocal(t *testing.T) {
	rep, err := Run(context.Background(), Options{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", b.String())
	if rep.Target != "localhost" {
		t.Errorf("target: got %q, want localhost", rep.Target)
	}
	for _, name := range []string{checkReach, checkHostKey, checkAuth, checkForwarding} {
		if c, _ := rep.Check(name); c.Verdict != Skip {
			t.Errorf("%s: got %s, want skip on this machine", name, c.Verdict)
		}
	}
	if c, _ := rep.Check(checkPlatform); c.Verdict != OK {
		t.Errorf("platform: got %s (%s), want ok", c.Verdict, c.Detail)
	}
	if rep.Facts.Home == "" || rep.Facts.FreeBytes == 0 || rep.Facts.Glibc == "" {
		t.Errorf("facts: got %+v, want home, free space and glibc", rep.Facts)
	}
	if len(rep.Checks) != len(allChecks) {
		t.Errorf("checks: got %d, want %d", len(rep.Checks), len(allChecks))
	}
}
