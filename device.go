package rbee

import "strings"

// Device kinds.
const (
	DeviceGPU = "gpu"
	DeviceCPU = "cpu"
)

// Device is one place a model can run on a hive: a GPU, or the CPU with the
// host's RAM. The hive's probe fills it, the queen's catalog stores it, the
// scheduler ranks devices on FreeBytes and the VRAM checker grants on
// RoomBytes (free memory less the reservations of workers being started),
// so a job that races another for the same device is refused and moves on.
type Device struct {
	ID         string `json:"id"`                    // "gpu0", "gpu1", ...; "cpu" for the CPU
	Kind       string `json:"kind"`                  // DeviceGPU or DeviceCPU
	Index      int    `json:"index"`                 // NVML index; 0 for the CPU
	Name       string `json:"name"`                  // "NVIDIA GeForce RTX 3090"; the CPU's model name
	UUID       string `json:"uuid,omitempty"`        // NVML UUID, GPUs only
	TotalBytes uint64 `json:"total_bytes"`           // VRAM; for the CPU: MemTotal
	FreeBytes  uint64 `json:"free_bytes"`            // VRAM free; for the CPU: MemAvailable
	RoomBytes  uint64 `json:"room_bytes,omitempty"`  // what the VRAM checker would still grant
	ComputeCap string `json:"compute_cap,omitempty"` // CUDA compute capability, "8.6"
	// Backend is the engine's name of the device, what rbee-worker
	// --device takes ("CUDA0", "Vulkan1"); "" for the CPU and for a GPU
	// no installed engine bundle drives (NVML alone saw it). A split
	// across a host's GPUs lists them: "Vulkan0,Vulkan1".
	Backend string `json:"backend,omitempty"`
	// Software marks a GPU that is a CPU in disguise (Mesa's llvmpipe):
	// listed only with RBEE_SOFTWARE_GPU=1.
	Software bool `json:"software,omitempty"`
	Cores    int  `json:"cores,omitempty"` // CPU only: usable CPUs
	// Utilization (GPU busy, %) and TemperatureC are what the GPU's driver
	// reports when it was probed; nil where it tells nothing.
	Utilization  *int `json:"utilization_percent,omitempty"`
	TemperatureC *int `json:"temperature_c,omitempty"`
}

// Driven says what drives a GPU: "Vulkan0", "CUDA0, compute 8.6",
// "Vulkan0, software"; "" when nothing is known.
func (d Device) Driven() string {
	var parts []string
	if d.Backend != "" {
		parts = append(parts, d.Backend)
	}
	if d.ComputeCap != "" {
		parts = append(parts, "compute "+d.ComputeCap)
	}
	if d.Software {
		parts = append(parts, "software")
	}
	return strings.Join(parts, ", ")
}
