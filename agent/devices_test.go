package agent

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee"
)

func TestMergeDevices(t *testing.T) {
	const gib = 1 << 30
	nvml := []rbee.Device{
		{ID: "gpu0", Kind: "gpu", Index: 0, Name: "NVIDIA GeForce RTX 3090", TotalBytes: 24 * gib, FreeBytes: 20 * gib},
		{ID: "gpu1", Kind: "gpu", Index: 1, Name: "NVIDIA GeForce RTX 3090", TotalBytes: 24 * gib, FreeBytes: 23 * gib},
		{ID: "cpu", Kind: "cpu", Name: "Ryzen"},
	}
	radeon := engineDevice{Name: "Vulkan2", Description: "AMD Radeon RX 7900 XTX (RADV NAVI31)", Type: "gpu", TotalBytes: 24 * gib, FreeBytes: 22 * gib}
	tests := []struct {
		name string
		nvml []rbee.Device
		eng  []engineDevice
		want string // id=backend/free GiB, in order
	}{
		{"NVML alone", nvml, nil, "gpu0=/20 gpu1=/23 cpu=/0"},
		{"CUDA devices are NVML's, by index; NVML's free stays", nvml, []engineDevice{
			{Name: "CUDA0", Description: "NVIDIA GeForce RTX 3090", Type: "gpu", FreeBytes: 19 * gib},
			{Name: "CUDA1", Description: "NVIDIA GeForce RTX 3090", Type: "gpu", FreeBytes: 22 * gib},
		}, "gpu0=CUDA0/20 gpu1=CUDA1/23 cpu=/0"},
		{"Vulkan drives NVIDIA cards with no CUDA bundle, by name; another card is added", nvml, []engineDevice{
			{Name: "Vulkan0", Description: "NVIDIA GeForce RTX 3090", Type: "gpu"},
			{Name: "Vulkan1", Description: "NVIDIA GeForce RTX 3090", Type: "gpu"},
			radeon,
		}, "gpu0=Vulkan0/20 gpu1=Vulkan1/23 gpu2=Vulkan2/22 cpu=/0"},
		{"CUDA wins over Vulkan for the same card", nvml, []engineDevice{
			{Name: "CUDA0", Description: "NVIDIA GeForce RTX 3090", Type: "gpu"},
			{Name: "CUDA1", Description: "NVIDIA GeForce RTX 3090", Type: "gpu"},
			{Name: "Vulkan0", Description: "NVIDIA GeForce RTX 3090", Type: "gpu"},
			{Name: "Vulkan1", Description: "NVIDIA GeForce RTX 3090", Type: "gpu"},
		}, "gpu0=CUDA0/20 gpu1=CUDA1/23 cpu=/0"},
		{"no NVML: the backend's devices and figures", nvml[2:], []engineDevice{
			{Name: "Vulkan0", Description: "llvmpipe (LLVM 15.0.6, 256 bits)", Type: "gpu", TotalBytes: 2 * gib, FreeBytes: 2 * gib},
			radeon,
		}, "gpu0=Vulkan0/2 gpu1=Vulkan2/22 cpu=/0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, d := range mergeDevices(tt.nvml, tt.eng) {
				got = append(got, fmt.Sprintf("%s=%s/%d", d.ID, d.Backend, d.FreeBytes/gib))
				if d.ID == "gpu0" && strings.Contains(d.Name, "llvmpipe") && !d.Software {
					t.Errorf("%s is not marked software", d.Name)
				}
			}
			if g := strings.Join(got, " "); g != tt.want {
				t.Errorf("merged = %s, want %s", g, tt.want)
			}
		})
	}
}

// With RBEE_SOFTWARE_GPU=1 the agent names the Vulkan devices one more at a
// time (llama.cpp lists a CPU-type device only when named) and keeps the
// longest list that held; without it a software device is dropped.
func TestEngineDevicesSoftware(t *testing.T) {
	const physical = 2 // the loader's devices: a Radeon and llvmpipe
	listing := func(_ context.Context, _ string, env []string) ([]engineDevice, error) {
		vis := ""
		for _, e := range env {
			if v, ok := strings.CutPrefix(e, envVKVisible+"="); ok {
				vis = v
			}
		}
		descs := []string{"AMD Radeon RX 6600 (RADV NAVI23)", "llvmpipe (LLVM 15.0.6, 256 bits)"}
		if vis == "" {
			return []engineDevice{{Name: "Vulkan0", Description: descs[0], Type: "gpu"}, {Name: "CPU", Type: "cpu"}}, nil
		}
		var out []engineDevice
		for i, idx := range strings.Split(vis, ",") {
			var n int
			fmt.Sscan(idx, &n)
			if n >= physical {
				return []engineDevice{{Name: "CPU", Type: "cpu"}}, nil // llama.cpp drops the whole list
			}
			out = append(out, engineDevice{Name: fmt.Sprintf("Vulkan%d", i), Description: descs[n], Type: "gpu"})
		}
		return append(out, engineDevice{Name: "CPU", Type: "cpu"}), nil
	}
	for _, tt := range []struct {
		software, want, env string
	}{
		{"", "Vulkan0", ""},
		{"1", "Vulkan0 Vulkan1", "0,1"},
	} {
		t.Setenv(EnvSoftwareGPU, tt.software)
		t.Setenv(envVKVisible, "")
		p := &engineProbe{listing: listing}
		devs, env, _ := p.list(context.Background(), []string{"/b"})
		var names []string
		for _, d := range devs {
			names = append(names, d.Name)
		}
		if g := strings.Join(names, " "); g != tt.want || env != tt.env {
			t.Errorf("RBEE_SOFTWARE_GPU=%q: devices %q, env %q; want %q, %q", tt.software, g, env, tt.want, tt.env)
		}
	}
}
