package gputest

import (
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

//go:embed fakenvml/fakenvml.c
var fakeSource []byte

// Environment variables read by the fake library. They are read when the
// functions are called, so tests can change them between detections.
const (
	// EnvGPUs lists the fake GPUs; build its value with GPUsEnv.
	EnvGPUs = "FAKE_NVML_GPUS"
	// EnvInitError makes nvmlInit return this NVML error code; every other
	// function then aborts the process.
	EnvInitError = "FAKE_NVML_INIT_ERROR"
	// EnvCalls names a file to which each called function's name is appended,
	// one per line.
	EnvCalls = "FAKE_NVML_CALLS"
)

// DriverVersion is the driver version the fake reports.
const DriverVersion = "999.0-fake"

// LibraryName is the file name BuildFakeNVML gives the library.
const LibraryName = "libnvidia-ml.so.1"

// FakeGPU describes one GPU of the fake library.
type FakeGPU struct {
	Name       string // must not contain ',' or ';'
	TotalMiB   int
	FreeMiB    int
	ComputeCap string // "8.6"
	// UtilPercent and TempC, when Reports is set, are what the driver
	// says of its load and temperature; without, it says "not supported".
	Reports            bool
	UtilPercent, TempC int
}

// GPUsEnv returns the value of EnvGPUs that makes the fake report gpus, in
// index order.
func GPUsEnv(gpus ...FakeGPU) string {
	parts := make([]string, len(gpus))
	for i, g := range gpus {
		f := []string{g.Name, strconv.Itoa(g.TotalMiB), strconv.Itoa(g.FreeMiB), g.ComputeCap}
		if g.Reports {
			f = append(f, strconv.Itoa(g.UtilPercent), strconv.Itoa(g.TempC))
		}
		parts[i] = strings.Join(f, ",")
	}
	return strings.Join(parts, ";")
}

// BuildFakeNVML compiles the fake library into dir and returns its path. It
// uses $CC, or gcc when CC is unset.
//
// A process keeps the first NVML library it loads for its whole life (go-nvml
// binds the symbols once), so build the library once per test binary, for
// example in TestMain, and drive it through the environment.
func BuildFakeNVML(dir string) (libPath string, err error) {
	src := filepath.Join(dir, "fakenvml.c")
	if err := os.WriteFile(src, fakeSource, 0o644); err != nil {
		return "", fmt.Errorf("write fake nvml source: %w", err)
	}
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "gcc"
	}
	libPath = filepath.Join(dir, LibraryName)
	out, err := exec.Command(cc, "-shared", "-fPIC", "-O2", "-o", libPath, src).CombinedOutput()
	if err != nil {
		const max = 4 << 10
		if len(out) > max {
			out = out[:max]
		}
		return "", fmt.Errorf("compile fake nvml with %s: %w: %s", cc, err, strings.TrimSpace(string(out)))
	}
	return libPath, nil
}
