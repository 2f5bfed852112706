package enginefetch

import (
	"os"
	"path"
	"strings"
)

// Package is one pinned npm package holding a llama.cpp build.
type Package struct {
	Name      string // "@node-llama-cpp/linux-x64"
	Version   string // "3.22.1"
	Integrity string // npm's "sha512-<base64>" of the tarball
	OS, Arch  string // GOOS/GOARCH it runs on
	GPU       string // "" for CPUs, "cuda", "vulkan"
}

// The pinned engines: node-llama-cpp 3.22.1's packages, which hold
// llama.cpp release v0.5.0. Bump them together (npm view
// @node-llama-cpp/linux-x64@VERSION dist.integrity).
var (
	// LinuxAMD64 is the CPU build (about 11 MB): every x86-64 CPU
	// variant, chosen at load time.
	LinuxAMD64 = Package{
		Name: "@node-llama-cpp/linux-x64", Version: "3.22.1", OS: "linux", Arch: "amd64",
		Integrity: "sha512-5uCCDNqWCNfaAm8aR/Uzxbo4HBpKgNF91kCHPepKhgMgV2OAmatoefbOlMihsqCiH2Od35E/eUHQCFbfRBJuOg==",
	}
	// LinuxAMD64CUDA is the CUDA build (143 MB): it links
	// libcudart.so.13 and libcublas.so.13, so it needs the CUDA 13
	// runtime and an NVIDIA driver of 580 or later on the host.
	LinuxAMD64CUDA = Package{
		Name: "@node-llama-cpp/linux-x64-cuda", Version: "3.22.1", OS: "linux", Arch: "amd64", GPU: "cuda",
		Integrity: "sha512-8rQCjyNNLZJUFit+YpjwlC4hwkKgOMIkB2wuycKBf8NU2O3ySKbiWZQ8aw9ku2nUTXjSnUIrE6KB88itduTBuA==",
	}

	// LinuxAMD64Vulkan is the Vulkan build (24 MB): any GPU with a Vulkan
	// driver (AMD and Intel through Mesa, NVIDIA without CUDA), and
	// Mesa's software rasteriser llvmpipe. It needs the Vulkan loader
	// (libvulkan.so.1) on the host.
	LinuxAMD64Vulkan = Package{
		Name: "@node-llama-cpp/linux-x64-vulkan", Version: "3.22.1", OS: "linux", Arch: "amd64", GPU: "vulkan",
		Integrity: "sha512-bBxqU+JOcBu1nb5Qj2zcMci+JByT1E8EajHvYodyNfVIPkEhXh+/HMwR1/BT7xP08YK0hks+kM8fglER0P8JEg==",
	}
	// LinuxARM64 is the arm64 CPU build (7 MB): Raspberry Pi 4/5,
	// Graviton, Ampere, a Jetson's CPU.
	LinuxARM64 = Package{
		Name: "@node-llama-cpp/linux-arm64", Version: "3.22.1", OS: "linux", Arch: "arm64",
		Integrity: "sha512-W+7naKCXX9/eEjjFmRS8vvx91QyLXDbeFxexZc3bh/PtQABZgmRL3C0AtYYXn4YGTj/3Qor4lWZn2tpjZFPLdQ==",
	}
)

// Packages are the pinned packages, CPU builds first.
var Packages = []Package{LinuxAMD64, LinuxARM64, LinuxAMD64CUDA, LinuxAMD64Vulkan}

// For returns the pinned package for a platform and GPU kind ("" for the
// CPU build).
func For(goos, goarch, gpu string) (Package, bool) {
	for _, p := range Packages {
		if p.OS == goos && p.Arch == goarch && p.GPU == gpu {
			return p, true
		}
	}
	return Package{}, false
}

// TarballPath is the tarball's path on a registry:
// "@node-llama-cpp/linux-x64/-/linux-x64-3.22.1.tgz".
func (p Package) TarballPath() string {
	return p.Name + "/-/" + path.Base(p.Name) + "-" + p.Version + ".tgz"
}

// CacheName names the cached tarball: "node-llama-cpp-linux-x64-3.22.1.tgz".
func (p Package) CacheName() string {
	return strings.TrimPrefix(strings.ReplaceAll(p.Name, "/", "-"), "@") + "-" + p.Version + ".tgz"
}

// Source is what a bundle's manifest records for it: the package and its
// integrity, so that a bundle from a mirror or a local copy of the same
// tarball counts as the same.
func (p Package) Source() string {
	return "npm:" + p.Name + "@" + p.Version + " " + p.Integrity
}

// DefaultRegistry is npm's public registry.
const DefaultRegistry = "https://registry.npmjs.org/"

// Registry is where packages come from: $RBEE_NPM_REGISTRY (a mirror, or a
// test server), else npm's own setting ($NPM_CONFIG_REGISTRY,
// $npm_config_registry), else DefaultRegistry.
func Registry() string {
	for _, key := range []string{"RBEE_NPM_REGISTRY", "NPM_CONFIG_REGISTRY", "npm_config_registry"} {
		if v := os.Getenv(key); v != "" {
			return v
		}
	}
	return DefaultRegistry
}

// TarballURL is the package's tarball on registry ("" for Registry()).
func (p Package) TarballURL(registry string) string {
	if registry == "" {
		registry = Registry()
	}
	return strings.TrimSuffix(registry, "/") + "/" + p.TarballPath()
}
