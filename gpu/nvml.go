package gpu

import (
	"github.com/rbee-dev/rbee"

	"context"
	"fmt"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/dl"
	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// nvmlSem serialises NVML use in the process: Init and Shutdown are
// reference counted, but a Shutdown from one detection must not interleave
// with the queries of another. A channel rather than a mutex lets a waiter
// give up when its ctx ends.
var nvmlSem = make(chan struct{}, 1)

// firstLibrary is the first NVML library handed to go-nvml in this process,
// guarded by nvmlSem. go-nvml calls NVML through symbols that the dynamic
// loader binds once, to the first library loaded globally, so a later
// library with another path is loaded but not called.
var firstLibrary string

// requiredSymbols are the functions detection makes go-nvml call; each entry
// lists the versions go-nvml accepts, the one it prefers first. A library
// that lacks one is not used: calling a missing symbol kills the process.
var requiredSymbols = [][]string{
	{"nvmlInit_v2", "nvmlInit"},
	{"nvmlShutdown"},
	{"nvmlSystemGetDriverVersion"},
	{"nvmlDeviceGetCount_v2", "nvmlDeviceGetCount"},
	{"nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByIndex"},
	{"nvmlDeviceGetName"},
	{"nvmlDeviceGetUUID"},
	{"nvmlDeviceGetMemoryInfo"},
	{"nvmlDeviceGetCudaComputeCapability"},
}

// optionalSymbols are called only when the library has them: what a
// driver may or may not tell (rbee top shows them).
var optionalSymbols = []string{"nvmlDeviceGetUtilizationRates", "nvmlDeviceGetTemperature"}

// detectNVML lists the GPUs that the NVML library at path reports. status
// is Report.NVML; err is set only when ctx ends.
func detectNVML(ctx context.Context, path string) (gpus []rbee.Device, status string, err error) {
	select {
	case nvmlSem <- struct{}{}:
	case <-ctx.Done():
		return nil, "", ctx.Err()
	}
	defer func() { <-nvmlSem }()

	reason, optional := checkLibrary(path)
	if reason != "" {
		return nil, reason, nil
	}
	var notes []string
	if firstLibrary == "" {
		firstLibrary = path
	} else if firstLibrary != path {
		notes = append(notes, fmt.Sprintf("calls go to %s, the first NVML library this process loaded", firstLibrary))
	}

	defer func() {
		// go-nvml is generated code over C; a panic in it must not take the
		// hive down with it.
		if r := recover(); r != nil {
			gpus, status, err = nil, fmt.Sprintf("nvml panic: %v", r), nil
		}
	}()
	gpus, probeNotes, err := probe(ctx, nvml.New(nvml.WithLibraryPath(path)), optional)
	if err != nil {
		return nil, "", err
	}
	return gpus, strings.Join(append(probeNotes, notes...), "; "), nil
}

// checkLibrary loads the library and looks up the symbols detection needs,
// without calling any of them. It returns why the library cannot be used,
// or "", and which optional symbols it has.
//
// The library is loaded with RTLD_NODELETE so that it stays mapped after
// go-nvml's Shutdown unloads it: the symbols bound on the first detection
// must stay valid for the next one.
func checkLibrary(path string) (string, map[string]bool) {
	lib := dl.New(path, dl.RTLD_LAZY|dl.RTLD_LOCAL|dl.RTLD_NODELETE)
	if err := lib.Open(); err != nil {
		if strings.Contains(err.Error(), "No such file or directory") {
			return path + " not found", nil
		}
		return fmt.Sprintf("load %s: %v", path, err), nil
	}
	defer lib.Close()
	for _, versions := range requiredSymbols {
		found := false
		for _, sym := range versions {
			if lib.Lookup(sym) == nil {
				found = true
				break
			}
		}
		if !found {
			return fmt.Sprintf("%s lacks %s", path, versions[0]), nil
		}
	}
	optional := map[string]bool{}
	for _, sym := range optionalSymbols {
		optional[sym] = lib.Lookup(sym) == nil
	}
	return "", optional
}

// probe initialises lib, queries its GPUs and shuts it down again. notes
// make up Report.NVML. When Init fails, probe calls nothing else on lib:
// on some systems any NVML call after a failed init kills the process.
// err is set only when ctx ends.
func probe(ctx context.Context, lib nvml.Interface, optional map[string]bool) (gpus []rbee.Device, notes []string, err error) {
	if ret := lib.Init(); ret != nvml.SUCCESS {
		return nil, []string{"init: " + retName(ret)}, nil
	}
	defer func() {
		if ret := lib.Shutdown(); ret != nvml.SUCCESS {
			notes = append(notes, "shutdown: "+retName(ret))
		}
	}()

	if v, ret := lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		notes = append(notes, "driver "+v)
	} else {
		notes = append(notes, "driver version: "+retName(ret))
	}
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, append(notes, "device count: "+retName(ret)), nil
	}
	for i := range n {
		if err := ctx.Err(); err != nil {
			return nil, notes, err
		}
		d, err := queryDevice(lib, i, optional)
		if err != nil {
			notes = append(notes, fmt.Sprintf("gpu%d skipped: %v", i, err))
			continue
		}
		gpus = append(gpus, d)
	}
	return gpus, notes, nil
}

// nvmlError is a failed NVML call. Its message never comes from
// nvml.Return.Error, which asks the loaded library.
type nvmlError struct {
	op  string
	ret nvml.Return
}

func (e nvmlError) Error() string { return e.op + ": " + retName(e.ret) }

func queryDevice(lib nvml.Interface, i int, optional map[string]bool) (rbee.Device, error) {
	dev, ret := lib.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		return rbee.Device{}, nvmlError{"get handle", ret}
	}
	name, ret := dev.GetName()
	if ret != nvml.SUCCESS {
		return rbee.Device{}, nvmlError{"get name", ret}
	}
	uuid, ret := dev.GetUUID()
	if ret != nvml.SUCCESS {
		return rbee.Device{}, nvmlError{"get uuid", ret}
	}
	mem, ret := dev.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return rbee.Device{}, nvmlError{"get memory info", ret}
	}
	major, minor, ret := dev.GetCudaComputeCapability()
	if ret != nvml.SUCCESS {
		return rbee.Device{}, nvmlError{"get compute capability", ret}
	}
	d := rbee.Device{
		ID:         fmt.Sprintf("gpu%d", i),
		Kind:       rbee.DeviceGPU,
		Index:      i,
		Name:       name,
		UUID:       uuid,
		TotalBytes: mem.Total,
		FreeBytes:  mem.Free,
		ComputeCap: fmt.Sprintf("%d.%d", major, minor),
	}
	// What the driver may not tell is left unknown, never an error.
	if optional["nvmlDeviceGetUtilizationRates"] {
		if u, ret := dev.GetUtilizationRates(); ret == nvml.SUCCESS {
			v := int(u.Gpu)
			d.Utilization = &v
		}
	}
	if optional["nvmlDeviceGetTemperature"] {
		if t, ret := dev.GetTemperature(nvml.TEMPERATURE_GPU); ret == nvml.SUCCESS {
			v := int(t)
			d.TemperatureC = &v
		}
	}
	return d, nil
}

// retName names an NVML return code the way nvml.h does. nvml.Return's own
// String and Error call nvmlErrorString in the loaded library, which must
// not be called after a failed init.
func retName(r nvml.Return) string {
	if s, ok := retNames[r]; ok {
		return s
	}
	return fmt.Sprintf("ERROR_%d", int32(r))
}

var retNames = map[nvml.Return]string{
	nvml.SUCCESS:                         "SUCCESS",
	nvml.ERROR_UNINITIALIZED:             "ERROR_UNINITIALIZED",
	nvml.ERROR_INVALID_ARGUMENT:          "ERROR_INVALID_ARGUMENT",
	nvml.ERROR_NOT_SUPPORTED:             "ERROR_NOT_SUPPORTED",
	nvml.ERROR_NO_PERMISSION:             "ERROR_NO_PERMISSION",
	nvml.ERROR_ALREADY_INITIALIZED:       "ERROR_ALREADY_INITIALIZED",
	nvml.ERROR_NOT_FOUND:                 "ERROR_NOT_FOUND",
	nvml.ERROR_INSUFFICIENT_SIZE:         "ERROR_INSUFFICIENT_SIZE",
	nvml.ERROR_INSUFFICIENT_POWER:        "ERROR_INSUFFICIENT_POWER",
	nvml.ERROR_DRIVER_NOT_LOADED:         "ERROR_DRIVER_NOT_LOADED",
	nvml.ERROR_TIMEOUT:                   "ERROR_TIMEOUT",
	nvml.ERROR_IRQ_ISSUE:                 "ERROR_IRQ_ISSUE",
	nvml.ERROR_LIBRARY_NOT_FOUND:         "ERROR_LIBRARY_NOT_FOUND",
	nvml.ERROR_FUNCTION_NOT_FOUND:        "ERROR_FUNCTION_NOT_FOUND",
	nvml.ERROR_CORRUPTED_INFOROM:         "ERROR_CORRUPTED_INFOROM",
	nvml.ERROR_GPU_IS_LOST:               "ERROR_GPU_IS_LOST",
	nvml.ERROR_RESET_REQUIRED:            "ERROR_RESET_REQUIRED",
	nvml.ERROR_OPERATING_SYSTEM:          "ERROR_OPERATING_SYSTEM",
	nvml.ERROR_LIB_RM_VERSION_MISMATCH:   "ERROR_LIB_RM_VERSION_MISMATCH",
	nvml.ERROR_IN_USE:                    "ERROR_IN_USE",
	nvml.ERROR_MEMORY:                    "ERROR_MEMORY",
	nvml.ERROR_NO_DATA:                   "ERROR_NO_DATA",
	nvml.ERROR_VGPU_ECC_NOT_SUPPORTED:    "ERROR_VGPU_ECC_NOT_SUPPORTED",
	nvml.ERROR_INSUFFICIENT_RESOURCES:    "ERROR_INSUFFICIENT_RESOURCES",
	nvml.ERROR_FREQ_NOT_SUPPORTED:        "ERROR_FREQ_NOT_SUPPORTED",
	nvml.ERROR_ARGUMENT_VERSION_MISMATCH: "ERROR_ARGUMENT_VERSION_MISMATCH",
	nvml.ERROR_DEPRECATED:                "ERROR_DEPRECATED",
	nvml.ERROR_NOT_READY:                 "ERROR_NOT_READY",
	nvml.ERROR_GPU_NOT_FOUND:             "ERROR_GPU_NOT_FOUND",
	nvml.ERROR_INVALID_STATE:             "ERROR_INVALID_STATE",
	nvml.ERROR_RESET_TYPE_NOT_SUPPORTED:  "ERROR_RESET_TYPE_NOT_SUPPORTED",
	nvml.ERROR_UNKNOWN:                   "ERROR_UNKNOWN",
}
