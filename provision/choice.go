package provision

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// CUDADriverMin is the oldest NVIDIA driver the pinned CUDA bundle runs on:
// it is built against CUDA 13, which needs a 580 driver.
const CUDADriverMin = 580

// EngineChoice is the engine bundle a host gets, and why.
type EngineChoice struct {
	// GPU is the pinned package's GPU kind: "cuda", "vulkan", or "" for
	// the CPU build.
	GPU string `json:"gpu"`
	Why string `json:"why"`
}

// Kind names the choice for people: "cuda", "vulkan" or "cpu".
func (c EngineChoice) Kind() string {
	if c.GPU == "" {
		return "cpu"
	}
	return c.GPU
}

// softwareICDs are the manifests of Vulkan drivers that are CPUs behind
// the API: Mesa's llvmpipe (lvp) and Google's SwiftShader.
var softwareICDs = []string{"lvp_icd", "swiftshader_icd"}

func isSoftwareICD(name string) bool {
	return slices.ContainsFunc(softwareICDs, func(p string) bool { return strings.HasPrefix(name, p) })
}

// ChooseEngine picks the engine bundle for a probed host: the CUDA build
// where an NVIDIA driver new enough and the CUDA 13 runtime are there,
// else the Vulkan build where the Vulkan loader and a GPU driver are
// (software drivers count only when software is set: RBEE_SOFTWARE_GPU=1),
// else the CPU build. Only linux/amd64 has GPU builds pinned.
func ChooseEngine(p Probe, software bool) EngineChoice {
	if p.OS != "linux" || p.Arch != "amd64" {
		return EngineChoice{Why: fmt.Sprintf("%s/%s: only the CPU build is pinned for it", p.OS, p.Arch)}
	}
	// A hardware driver counts where there is hardware for it: a render
	// node (AMD, Intel and others through the kernel's DRM), or a loaded
	// NVIDIA driver for NVIDIA's. Mesa installs its drivers for every
	// vendor whether or not the machine has such a GPU.
	var hw, sw []string
	for _, icd := range p.VulkanDrivers {
		name := strings.TrimSuffix(strings.SplitN(icd, ".", 2)[0], "_icd")
		switch {
		case isSoftwareICD(icd):
			sw = append(sw, name)
		case strings.HasPrefix(icd, "nvidia") && p.NVIDIA != "", !strings.HasPrefix(icd, "nvidia") && p.RenderNodes > 0:
			hw = append(hw, name)
		}
	}
	var notes []string
	if p.NVIDIA != "" {
		major, _ := strconv.Atoi(strings.SplitN(p.NVIDIA, ".", 2)[0])
		switch {
		case major >= CUDADriverMin && p.CUDARuntime:
			return EngineChoice{GPU: "cuda", Why: fmt.Sprintf("NVIDIA driver %s (the CUDA 13 build needs %d or later) and the CUDA 13 runtime", p.NVIDIA, CUDADriverMin)}
		case major >= CUDADriverMin:
			notes = append(notes, fmt.Sprintf("NVIDIA driver %s but no CUDA 13 runtime (libcudart.so.13, libcublas.so.13) for the CUDA build", p.NVIDIA))
		default:
			notes = append(notes, fmt.Sprintf("NVIDIA driver %s is older than the CUDA build needs (%d)", p.NVIDIA, CUDADriverMin))
		}
	}
	switch {
	case p.Vulkan && len(hw) > 0:
		notes = append(notes, fmt.Sprintf("Vulkan loader and driver %s, %d GPU render node(s)", strings.Join(hw, ", "), p.RenderNodes))
		return EngineChoice{GPU: "vulkan", Why: strings.Join(notes, "; ")}
	case p.Vulkan && len(sw) > 0 && software:
		notes = append(notes, fmt.Sprintf("Vulkan loader and software driver %s (RBEE_SOFTWARE_GPU=1)", strings.Join(sw, ", ")))
		return EngineChoice{GPU: "vulkan", Why: strings.Join(notes, "; ")}
	case p.Vulkan && len(sw) > 0:
		notes = append(notes, fmt.Sprintf("only the software Vulkan driver %s (RBEE_SOFTWARE_GPU=1 uses it)", strings.Join(sw, ", ")))
	case p.Vulkan && len(p.VulkanDrivers) > 0:
		notes = append(notes, "Vulkan drivers but no GPU for them (no /dev/dri render node)")
	case p.Vulkan:
		notes = append(notes, "a Vulkan loader but no Vulkan driver")
	case len(hw) > 0:
		notes = append(notes, fmt.Sprintf("Vulkan driver %s but no Vulkan loader (libvulkan.so.1; Debian/Ubuntu: apt-get install libvulkan1)", strings.Join(hw, ", ")))
	}
	if len(notes) == 0 {
		notes = append(notes, "no NVIDIA driver, no Vulkan driver")
	}
	return EngineChoice{Why: strings.Join(notes, "; ") + ": the CPU build"}
}
