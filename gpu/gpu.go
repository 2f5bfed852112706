package gpu

import (
	"github.com/rbee-dev/rbee"

	"context"
	"fmt"
	"os"
)

// EnvNVMLLibrary names the environment variable that overrides the NVML
// library's path when Options.NVMLLibrary is empty.
const EnvNVMLLibrary = "RBEE_NVML_LIBRARY"

// DefaultNVMLLibrary is the library loaded when no path is given; the dynamic
// loader finds it on its usual search path.
const DefaultNVMLLibrary = "libnvidia-ml.so.1"

// Report is what Detect found.
type Report struct {
	Devices []rbee.Device `json:"devices"` // GPUs by index, then the CPU (always present)
	// NVML is "driver 550.54" when NVML was used, followed by "; "-separated
	// notes on GPUs that were skipped; otherwise why it was not used
	// ("libnvidia-ml.so.1 not found", "init: ERROR_DRIVER_NOT_LOADED").
	NVML string `json:"nvml"`
}

// Options tune Detect. The zero value detects GPUs with the system's NVML.
type Options struct {
	// NVMLLibrary is the path of libnvidia-ml.so.1 to use; "" means
	// $RBEE_NVML_LIBRARY, else DefaultNVMLLibrary.
	NVMLLibrary string
	DisableNVML bool
	// ProcRoot is where /proc is mounted; "" means "/proc".
	ProcRoot string
}

// Detect reports the machine's GPUs and its CPU. A missing or broken NVML is
// not an error: the report then lists the CPU alone and says why in
// Report.NVML. Detect fails only when the CPU cannot be read or ctx ends.
//
// ctx bounds the whole detection, including the wait for another detection
// in progress; it is checked between NVML calls because a call already in
// progress cannot be interrupted.
func Detect(ctx context.Context, opt Options) (Report, error) {
	if err := ctx.Err(); err != nil {
		return Report{}, fmt.Errorf("detect devices: %w", err)
	}
	cpu, err := CPU(opt.ProcRoot)
	if err != nil {
		return Report{}, fmt.Errorf("detect devices: %w", err)
	}
	var rep Report
	if opt.DisableNVML {
		rep.NVML = "disabled"
	} else {
		path := opt.NVMLLibrary
		if path == "" {
			path = os.Getenv(EnvNVMLLibrary)
		}
		if path == "" {
			path = DefaultNVMLLibrary
		}
		gpus, status, err := detectNVML(ctx, path)
		if err != nil {
			return Report{}, fmt.Errorf("detect gpus: %w", err)
		}
		rep.Devices = gpus
		rep.NVML = status
	}
	rep.Devices = append(rep.Devices, cpu)
	return rep, nil
}
