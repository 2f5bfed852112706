package gpu

import (
	"github.com/rbee-dev/rbee"

	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// cpuNameKeys are the /proc/cpuinfo fields that name the CPU, best first:
// x86 and most arm64 kernels have "model name"; the others cover Raspberry
// Pi, older ARM, MIPS, POWER and RISC-V.
var cpuNameKeys = []string{"model name", "Model", "Hardware", "cpu model", "cpu", "Processor", "uarch"}

// CPU describes the machine's CPU from procRoot's cpuinfo and meminfo
// ("" means "/proc"). Memory is the whole machine's; cgroup limits are not
// applied.
func CPU(procRoot string) (rbee.Device, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	cpuinfo, err := os.ReadFile(filepath.Join(procRoot, "cpuinfo"))
	if err != nil {
		return rbee.Device{}, fmt.Errorf("read cpu info: %w", err)
	}
	meminfo, err := os.ReadFile(filepath.Join(procRoot, "meminfo"))
	if err != nil {
		return rbee.Device{}, fmt.Errorf("read memory info: %w", err)
	}
	total, avail, err := parseMeminfo(meminfo)
	if err != nil {
		return rbee.Device{}, fmt.Errorf("read memory info: %w", err)
	}
	return rbee.Device{
		ID:         rbee.DeviceCPU,
		Kind:       rbee.DeviceCPU,
		Name:       cpuName(cpuinfo),
		TotalBytes: total,
		FreeBytes:  avail,
		Cores:      runtime.NumCPU(),
	}, nil
}

func cpuName(cpuinfo []byte) string {
	found := make(map[string]string)
	for line := range bytes.Lines(cpuinfo) {
		key, val, ok := strings.Cut(string(line), ":")
		if !ok {
			continue
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		if _, seen := found[key]; !seen && val != "" {
			found[key] = val
		}
	}
	for _, k := range cpuNameKeys {
		if v, ok := found[k]; ok {
			return v
		}
	}
	return runtime.GOARCH + " CPU"
}

// parseMeminfo returns MemTotal and MemAvailable in bytes. Kernels older
// than 3.14 lack MemAvailable; MemFree+Buffers+Cached stands in for it.
func parseMeminfo(meminfo []byte) (total, avail uint64, err error) {
	fields := make(map[string]uint64)
	sc := bufio.NewScanner(bytes.NewReader(meminfo))
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("parse %s: %w", key, err)
		}
		if len(f) > 1 && f[1] == "kB" {
			n *= 1024
		}
		fields[key] = n
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	total, ok := fields["MemTotal"]
	if !ok {
		return 0, 0, errors.New("no MemTotal")
	}
	avail, ok = fields["MemAvailable"]
	if !ok {
		avail = fields["MemFree"] + fields["Buffers"] + fields["Cached"]
	}
	return total, avail, nil
}
