package rbee

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
	Cores      int    `json:"cores,omitempty"`       // CPU only: usable CPUs
	// Utilization (GPU busy, %) and TemperatureC are what the GPU's driver
	// reports when it was probed; nil where it tells nothing.
	Utilization  *int `json:"utilization_percent,omitempty"`
	TemperatureC *int `json:"temperature_c,omitempty"`
}
