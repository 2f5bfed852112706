package gpu

import (
	"github.com/rbee-dev/rbee"

	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/rbee-dev/rbee/gpu/gputest"
)

// The fake library is built once per test binary: a process keeps calling
// the first NVML library it loads (see gputest.BuildFakeNVML).
var (
	fakeLib    string // path of the fake libnvidia-ml.so.1
	notNVMLLib string // a shared library without NVML symbols
	buildErr   error
)

const mib = 1 << 20

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(m.Run()) // TestHelperProcess builds nothing
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	os.Unsetenv(gputest.EnvInitError)
	os.Unsetenv(gputest.EnvCalls)
	os.Unsetenv(EnvNVMLLibrary)
	dir, err := os.MkdirTemp("", "gpu-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if _, err := exec.LookPath("gcc"); err == nil || os.Getenv("CC") != "" {
		fakeLib, buildErr = gputest.BuildFakeNVML(dir)
		if buildErr == nil {
			notNVMLLib, buildErr = buildNotNVML(dir)
		}
	} else {
		buildErr = errSkipNoCC
	}
	return m.Run()
}

var errSkipNoCC = errors.New("no C compiler")

func buildNotNVML(dir string) (string, error) {
	src := filepath.Join(dir, "empty.c")
	if err := os.WriteFile(src, []byte("int rbee_not_nvml = 1;\n"), 0o644); err != nil {
		return "", err
	}
	lib := filepath.Join(dir, "libempty.so")
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "gcc"
	}
	if out, err := exec.Command(cc, "-shared", "-fPIC", "-o", lib, src).CombinedOutput(); err != nil {
		return "", fmt.Errorf("compile %s: %w: %s", src, err, out)
	}
	return lib, nil
}

// needFake returns the fake library's path, or ends the test when it could
// not be built.
func needFake(tb testing.TB) string {
	tb.Helper()
	if errors.Is(buildErr, errSkipNoCC) {
		tb.Skip("no C compiler to build the fake NVML library")
	}
	if buildErr != nil {
		tb.Fatalf("build fake nvml: %v", buildErr)
	}
	return fakeLib
}

// fakeProc writes a /proc with the given cpuinfo and meminfo; an empty
// string leaves that file out.
func fakeProc(tb testing.TB, cpuinfo, meminfo string) string {
	tb.Helper()
	dir := tb.TempDir()
	for name, body := range map[string]string{"cpuinfo": cpuinfo, "meminfo": meminfo} {
		if body == "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return dir
}

const (
	x86CPUInfo = `processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model name	: AMD Ryzen 9 5950X 16-Core Processor
cpu MHz		: 3400.000

processor	: 1
vendor_id	: AuthenticAMD
model name	: AMD Ryzen 9 5950X 16-Core Processor
`
	piCPUInfo = `processor	: 0
BogoMIPS	: 108.00
CPU implementer	: 0x41

Hardware	: BCM2835
Revision	: c03114
Model		: Raspberry Pi 4 Model B Rev 1.4
`
	memInfo = `MemTotal:       32768000 kB
MemFree:         1000000 kB
MemAvailable:   16384000 kB
Buffers:          200000 kB
Cached:          3000000 kB
HugePages_Total:       0
`
	oldMemInfo = `MemTotal:       32768000 kB
MemFree:         1000000 kB
Buffers:          200000 kB
Cached:          3000000 kB
`
)

var (
	rtx3090 = gputest.FakeGPU{Name: "NVIDIA RTX 3090", TotalMiB: 24576, FreeMiB: 20000, ComputeCap: "8.6"}
	rtx3060 = gputest.FakeGPU{Name: "NVIDIA RTX 3060", TotalMiB: 12288, FreeMiB: 11000, ComputeCap: "8.6"}
	h100    = gputest.FakeGPU{Name: "NVIDIA H100 80GB HBM3", TotalMiB: 81559, FreeMiB: 81000, ComputeCap: "9.0"}
	// reporting tells its load and temperature.
	reporting = gputest.FakeGPU{Name: "NVIDIA RTX 4090", TotalMiB: 24564, FreeMiB: 20000, ComputeCap: "8.9", Reports: true, UtilPercent: 37, TempC: 61}
)

func wantGPU(i int, g gputest.FakeGPU) rbee.Device {
	d := rbee.Device{
		ID:         "gpu" + strconv.Itoa(i),
		Kind:       rbee.DeviceGPU,
		Index:      i,
		Name:       g.Name,
		UUID:       fmt.Sprintf("GPU-fa4e0000-0000-0000-0000-%012d", i),
		TotalBytes: uint64(g.TotalMiB) * mib,
		FreeBytes:  uint64(g.FreeMiB) * mib,
		ComputeCap: g.ComputeCap,
	}
	if g.Reports {
		d.Utilization, d.TemperatureC = &g.UtilPercent, &g.TempC
	}
	return d
}

func wantCPU() rbee.Device {
	return rbee.Device{
		ID:         "cpu",
		Kind:       rbee.DeviceCPU,
		Name:       "AMD Ryzen 9 5950X 16-Core Processor",
		TotalBytes: 32768000 * 1024,
		FreeBytes:  16384000 * 1024,
		Cores:      runtime.NumCPU(),
	}
}

// deviceCalls is what the fake records for the queries of one GPU.
var deviceCalls = []string{
	"nvmlDeviceGetHandleByIndex_v2",
	"nvmlDeviceGetName",
	"nvmlDeviceGetUUID",
	"nvmlDeviceGetMemoryInfo",
	"nvmlDeviceGetCudaComputeCapability",
	"nvmlDeviceGetUtilizationRates",
	"nvmlDeviceGetTemperature",
}

func expectCalls(gpus int) []string {
	calls := []string{"nvmlInit_v2", "nvmlSystemGetDriverVersion", "nvmlDeviceGetCount_v2"}
	for range gpus {
		calls = append(calls, deviceCalls...)
	}
	return append(calls, "nvmlShutdown")
}

func readCalls(tb testing.TB, path string) []string {
	tb.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		tb.Fatal(err)
	}
	return strings.Fields(string(b))
}

func TestDetect(t *testing.T) {
	lib := needFake(t)
	proc := fakeProc(t, x86CPUInfo, memInfo)
	missing := filepath.Join(t.TempDir(), "nowhere", "libnvidia-ml.so.1")
	driver := "driver " + gputest.DriverVersion

	tests := []struct {
		name      string
		opt       Options
		env       map[string]string // set for the test
		gpus      []gputest.FakeGPU
		want      []rbee.Device // before the CPU
		wantNVML  string        // exact, or a prefix when it ends in "..."
		wantCalls []string
	}{
		{
			name:      "two gpus",
			opt:       Options{NVMLLibrary: lib},
			gpus:      []gputest.FakeGPU{rtx3090, rtx3060},
			want:      []rbee.Device{wantGPU(0, rtx3090), wantGPU(1, rtx3060)},
			wantNVML:  driver,
			wantCalls: expectCalls(2),
		},
		{
			// The driver's load and temperature, where it tells them.
			name:      "utilisation and temperature",
			opt:       Options{NVMLLibrary: lib},
			gpus:      []gputest.FakeGPU{reporting, rtx3060},
			want:      []rbee.Device{wantGPU(0, reporting), wantGPU(1, rtx3060)},
			wantNVML:  driver,
			wantCalls: expectCalls(2),
		},
		{
			name:      "three gpus keep index order",
			opt:       Options{NVMLLibrary: lib},
			gpus:      []gputest.FakeGPU{rtx3060, h100, rtx3090},
			want:      []rbee.Device{wantGPU(0, rtx3060), wantGPU(1, h100), wantGPU(2, rtx3090)},
			wantNVML:  driver,
			wantCalls: expectCalls(3),
		},
		{
			name:      "driver without gpus",
			opt:       Options{NVMLLibrary: lib},
			wantNVML:  driver,
			wantCalls: expectCalls(0),
		},
		{
			name:      "library from environment",
			env:       map[string]string{EnvNVMLLibrary: lib},
			gpus:      []gputest.FakeGPU{rtx3090},
			want:      []rbee.Device{wantGPU(0, rtx3090)},
			wantNVML:  driver,
			wantCalls: expectCalls(1),
		},
		{
			name:     "library missing",
			opt:      Options{NVMLLibrary: missing},
			gpus:     []gputest.FakeGPU{rtx3090},
			wantNVML: missing + " not found",
		},
		{
			name:     "not an nvml library",
			opt:      Options{NVMLLibrary: notNVMLLib},
			gpus:     []gputest.FakeGPU{rtx3090},
			wantNVML: notNVMLLib + " lacks nvmlInit_v2",
		},
		{
			name:     "nvml disabled",
			opt:      Options{NVMLLibrary: lib, DisableNVML: true},
			gpus:     []gputest.FakeGPU{rtx3090},
			wantNVML: "disabled",
		},
		{
			name:     "bad fake spec fails init",
			opt:      Options{NVMLLibrary: lib},
			env:      map[string]string{gputest.EnvGPUs: "no commas here"},
			wantNVML: "init: ERROR_UNKNOWN",
			// go-nvml still holds the library after the failed init.
			wantCalls: []string{"nvmlInit_v2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := filepath.Join(t.TempDir(), "calls")
			t.Setenv(gputest.EnvCalls, calls)
			t.Setenv(gputest.EnvGPUs, gputest.GPUsEnv(tt.gpus...))
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			opt := tt.opt
			opt.ProcRoot = proc

			got, err := Detect(context.Background(), opt)
			if err != nil {
				t.Fatalf("Detect: %v", err)
			}
			want := append(append([]rbee.Device(nil), tt.want...), wantCPU())
			if !reflect.DeepEqual(got.Devices, want) {
				t.Errorf("got devices\n%+v\nwant\n%+v", got.Devices, want)
			}
			if got.NVML != tt.wantNVML {
				t.Errorf("got NVML %q, want %q", got.NVML, tt.wantNVML)
			}
			if gotCalls := readCalls(t, calls); !reflect.DeepEqual(gotCalls, tt.wantCalls) {
				t.Errorf("got calls %q, want %q", gotCalls, tt.wantCalls)
			}
		})
	}
}

// TestDetectRepeated runs detections one after another and at once: the
// library is loaded and unloaded each time, and concurrent callers must not
// interleave Init and Shutdown.
func TestDetectRepeated(t *testing.T) {
	lib := needFake(t)
	t.Setenv(gputest.EnvGPUs, gputest.GPUsEnv(rtx3090, rtx3060))
	opt := Options{NVMLLibrary: lib, ProcRoot: fakeProc(t, x86CPUInfo, memInfo)}
	want := []rbee.Device{wantGPU(0, rtx3090), wantGPU(1, rtx3060), wantCPU()}

	for i := range 3 {
		got, err := Detect(context.Background(), opt)
		if err != nil {
			t.Fatalf("Detect %d: %v", i, err)
		}
		if !reflect.DeepEqual(got.Devices, want) {
			t.Fatalf("Detect %d: got devices %+v, want %+v", i, got.Devices, want)
		}
	}

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			got, err := Detect(context.Background(), opt)
			switch {
			case err != nil:
				errs <- err
			case !reflect.DeepEqual(got.Devices, want) || got.NVML != "driver "+gputest.DriverVersion:
				errs <- fmt.Errorf("got %+v, want devices %+v", got, want)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestDetectContext(t *testing.T) {
	proc := fakeProc(t, x86CPUInfo, memInfo)

	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := Detect(ctx, Options{ProcRoot: proc})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("got error %v, want %v", err, context.Canceled)
		}
	})
	t.Run("waiting for another detection", func(t *testing.T) {
		nvmlSem <- struct{}{} // another detection in progress
		defer func() { <-nvmlSem }()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		_, err := Detect(ctx, Options{ProcRoot: proc})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("got error %v, want %v", err, context.DeadlineExceeded)
		}
	})
	t.Run("disabled nvml does not wait", func(t *testing.T) {
		nvmlSem <- struct{}{}
		defer func() { <-nvmlSem }()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		got, err := Detect(ctx, Options{ProcRoot: proc, DisableNVML: true})
		if err != nil {
			t.Fatalf("Detect: %v", err)
		}
		if want := []rbee.Device{wantCPU()}; !reflect.DeepEqual(got.Devices, want) {
			t.Errorf("got devices %+v, want %+v", got.Devices, want)
		}
	})
}

func TestDetectNoCPU(t *testing.T) {
	_, err := Detect(context.Background(), Options{ProcRoot: t.TempDir(), DisableNVML: true})
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got error %v, want one wrapping %v", err, os.ErrNotExist)
	}
}

const helperEnv = "RBEE_GPU_TEST_HELPER"

// TestHelperProcess is not a test: TestDetectInitError runs the test binary
// as a child that detects devices (or misbehaves) and prints the report, so
// that an abort in the fake library fails the test instead of killing it.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper process only")
	}
	lib := os.Getenv(EnvNVMLLibrary)
	switch mode {
	case "detect", "system":
		rep, err := Detect(context.Background(), Options{ProcRoot: os.Getenv("RBEE_GPU_TEST_PROC")})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		json.NewEncoder(os.Stdout).Encode(rep)
	case "shutdown-after-failed-init":
		// What Detect must never do; the fake aborts.
		l := nvml.New(nvml.WithLibraryPath(lib))
		fmt.Println(int32(l.Init()))
		fmt.Println(int32(l.Shutdown()))
	}
	os.Exit(0)
}

func TestDetectInitError(t *testing.T) {
	lib := needFake(t)
	proc := fakeProc(t, x86CPUInfo, memInfo)
	tests := []struct {
		name      string
		mode      string
		code      int
		wantCrash bool
		wantNVML  string
		wantCalls []string
	}{
		{
			name:      "driver not loaded",
			mode:      "detect",
			code:      9,
			wantNVML:  "init: ERROR_DRIVER_NOT_LOADED",
			wantCalls: []string{"nvmlInit_v2"},
		},
		{
			name:      "version mismatch",
			mode:      "detect",
			code:      18,
			wantNVML:  "init: ERROR_LIB_RM_VERSION_MISMATCH",
			wantCalls: []string{"nvmlInit_v2"},
		},
		{
			name:      "unknown code",
			mode:      "detect",
			code:      1234,
			wantNVML:  "init: ERROR_1234",
			wantCalls: []string{"nvmlInit_v2"},
		},
		{
			// Proves the harness: a call after a failed init crashes the child.
			name:      "shutdown after failed init aborts",
			mode:      "shutdown-after-failed-init",
			code:      9,
			wantCrash: true,
			wantCalls: []string{"nvmlInit_v2", "nvmlShutdown"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := filepath.Join(t.TempDir(), "calls")
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
			cmd.Env = append(os.Environ(),
				helperEnv+"="+tt.mode,
				EnvNVMLLibrary+"="+lib,
				"RBEE_GPU_TEST_PROC="+proc,
				gputest.EnvGPUs+"="+gputest.GPUsEnv(rtx3090, rtx3060),
				gputest.EnvInitError+"="+strconv.Itoa(tt.code),
				gputest.EnvCalls+"="+calls,
			)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()

			if gotCalls := readCalls(t, calls); !reflect.DeepEqual(gotCalls, tt.wantCalls) {
				t.Errorf("got calls %q, want %q", gotCalls, tt.wantCalls)
			}
			if tt.wantCrash {
				if err == nil {
					t.Errorf("got a clean exit, want a crash; stdout:\n%s", stdout.Bytes())
				}
				return
			}
			if err != nil {
				t.Fatalf("helper: %v\nstderr:\n%s", err, stderr.Bytes())
			}
			var got Report
			if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
				t.Fatalf("decode report %q: %v", stdout.Bytes(), err)
			}
			if want := []rbee.Device{wantCPU()}; !reflect.DeepEqual(got.Devices, want) {
				t.Errorf("got devices %+v, want %+v", got.Devices, want)
			}
			if got.NVML != tt.wantNVML {
				t.Errorf("got NVML %q, want %q", got.NVML, tt.wantNVML)
			}
		})
	}
}

// TestDetectSystem detects with this machine's own NVML, if any, in a child
// process (this process keeps the fake). On a machine with a GPU it checks
// the real library; elsewhere it checks that a missing one is reported.
func TestDetectSystem(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"=system", EnvNVMLLibrary+"=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v\nstderr:\n%s", err, stderr.Bytes())
	}
	var rep Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("decode report %q: %v", out, err)
	}
	t.Logf("nvml: %s", rep.NVML)
	for _, d := range rep.Devices {
		t.Logf("%+v", d)
	}
	if n := len(rep.Devices); n == 0 || rep.Devices[n-1].Kind != rbee.DeviceCPU {
		t.Fatalf("got devices %+v, want the CPU last", rep.Devices)
	}
	if rep.NVML == "" {
		t.Error("got an empty NVML status")
	}
	for i, d := range rep.Devices[:len(rep.Devices)-1] {
		if d.ID != fmt.Sprintf("gpu%d", d.Index) || d.Kind != rbee.DeviceGPU || d.Name == "" ||
			d.TotalBytes == 0 || d.FreeBytes > d.TotalBytes || d.ComputeCap == "" {
			t.Errorf("device %d: got %+v, want a complete GPU", i, d)
		}
	}
}

func TestReportJSON(t *testing.T) {
	rep := Report{Devices: []rbee.Device{wantCPU()}, NVML: "disabled"}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`{"devices":[{"id":"cpu","kind":"cpu","index":0,"name":"AMD Ryzen 9 5950X 16-Core Processor",`+
		`"total_bytes":33554432000,"free_bytes":16777216000,"cores":%d}],"nvml":"disabled"}`, runtime.NumCPU())
	if string(b) != want {
		t.Errorf("got %s, want %s", b, want)
	}
}

func BenchmarkDetect(b *testing.B) {
	lib := needFake(b)
	b.Setenv(gputest.EnvGPUs, gputest.GPUsEnv(rtx3090, rtx3060))
	opt := Options{NVMLLibrary: lib}
	ctx := context.Background()
	for b.Loop() {
		rep, err := Detect(ctx, opt)
		if err != nil {
			b.Fatal(err)
		}
		if len(rep.Devices) != 3 {
			b.Fatalf("got %d devices, want 3", len(rep.Devices))
		}
	}
}
