package provision

import "testing"

func TestChooseEngine(t *testing.T) {
	amd64 := Probe{OS: "linux", Arch: "amd64"}
	with := func(f func(*Probe)) Probe { p := amd64; f(&p); return p }
	mesa := []string{"intel_icd.x86_64.json", "radeon_icd.x86_64.json", "lvp_icd.x86_64.json"}
	tests := []struct {
		name     string
		p        Probe
		software bool
		want     string
		why      string
	}{
		{"nothing", amd64, false, "cpu", "no NVIDIA driver, no Vulkan driver: the CPU build"},
		{"arm64", Probe{OS: "linux", Arch: "arm64", NVIDIA: "580.1"}, false, "cpu", "linux/arm64: only the CPU build is pinned for it"},
		{"NVIDIA 580 with the CUDA 13 runtime", with(func(p *Probe) { p.NVIDIA, p.CUDARuntime = "580.95.05", true }), false, "cuda",
			"NVIDIA driver 580.95.05 (the CUDA 13 build needs 580 or later) and the CUDA 13 runtime"},
		{"NVIDIA 550: Vulkan through NVIDIA's own driver", with(func(p *Probe) {
			p.NVIDIA, p.CUDARuntime, p.Vulkan, p.VulkanDrivers = "550.54.14", true, true, []string{"nvidia_icd.json"}
		}), false, "vulkan", "NVIDIA driver 550.54.14 is older than the CUDA build needs (580); Vulkan loader and driver nvidia, 0 GPU render node(s)"},
		{"NVIDIA 580 without the runtime, no Vulkan", with(func(p *Probe) { p.NVIDIA = "580.95.05" }), false, "cpu",
			"NVIDIA driver 580.95.05 but no CUDA 13 runtime (libcudart.so.13, libcublas.so.13) for the CUDA build: the CPU build"},
		{"a Radeon", with(func(p *Probe) { p.Vulkan, p.VulkanDrivers, p.RenderNodes = true, mesa, 1 }), false, "vulkan",
			"Vulkan loader and driver intel, radeon, 1 GPU render node(s)"},
		{"Mesa's drivers, no GPU", with(func(p *Probe) { p.Vulkan, p.VulkanDrivers = true, mesa }), false, "cpu",
			"only the software Vulkan driver lvp (RBEE_SOFTWARE_GPU=1 uses it): the CPU build"},
		{"Mesa's drivers, no GPU, software allowed", with(func(p *Probe) { p.Vulkan, p.VulkanDrivers = true, mesa }), true, "vulkan",
			"Vulkan loader and software driver lvp (RBEE_SOFTWARE_GPU=1)"},
		{"a driver without the loader", with(func(p *Probe) { p.VulkanDrivers, p.RenderNodes = mesa, 1 }), false, "cpu",
			"Vulkan driver intel, radeon but no Vulkan loader (libvulkan.so.1; Debian/Ubuntu: apt-get install libvulkan1): the CPU build"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ChooseEngine(tt.p, tt.software)
			if c.Kind() != tt.want || c.Why != tt.why {
				t.Errorf("ChooseEngine = %s %q, want %s %q", c.Kind(), c.Why, tt.want, tt.why)
			}
		})
	}
}
