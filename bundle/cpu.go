package bundle

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// A bundle built with GGML_CPU_ALL_VARIANTS holds one CPU backend library
// per x86 feature level (libggml-cpu-haswell.so, …); at start ggml's loader
// asks each for its score on this CPU and loads the best. A host needs only
// that one, and the portable one as a fallback: the rest is a third of a
// bundle's bytes that a push can leave out.

// x86Feature is a feature ggml builds CPU variants for: the score ggml's
// loader gives a variant built with it (ggml/src/ggml-cpu/arch/x86/
// cpu-feats.cpp, ggml_backend_cpu_x86_score) and the /proc/cpuinfo flags a
// CPU must show for the variant to run.
type x86Feature struct {
	score int
	flags []string
}

var x86Features = map[string]x86Feature{
	"FMA":         {1, []string{"fma"}},
	"F16C":        {1 << 1, []string{"f16c"}},
	"SSE42":       {1 << 2, []string{"sse4_2"}},
	"BMI2":        {1 << 3, []string{"bmi2"}},
	"AVX":         {1 << 4, []string{"avx"}},
	"AVX2":        {1 << 5, []string{"avx2"}},
	"AVX_VNNI":    {1 << 6, []string{"avx_vnni"}},
	"AVX512":      {1 << 7, []string{"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}},
	"AVX512_VBMI": {1 << 8, []string{"avx512vbmi"}},
	"AVX512_BF16": {1 << 9, []string{"avx512_bf16"}},
	"AVX512_VNNI": {1 << 10, []string{"avx512_vnni"}},
	// ggml scores AMX_INT8 only; the variant is built for AMX_TILE too,
	// so a CPU must have both.
	"AMX_TILE": {0, []string{"amx_tile"}},
	"AMX_INT8": {1 << 11, []string{"amx_int8"}},
}

// x86Variants are ggml's x86 CPU variants and the features each is built
// for (ggml/src/CMakeLists.txt, GGML_CPU_ALL_VARIANTS).
var x86Variants = map[string][]string{
	"x64":            nil,
	"sse42":          {"SSE42"},
	"sandybridge":    {"SSE42", "AVX"},
	"ivybridge":      {"SSE42", "AVX", "F16C"},
	"piledriver":     {"SSE42", "AVX", "F16C", "FMA"},
	"haswell":        {"SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2"},
	"skylakex":       {"SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512"},
	"cannonlake":     {"SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI"},
	"cascadelake":    {"SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI"},
	"icelake":        {"SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI"},
	"cooperlake":     {"SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI", "AVX512_BF16"},
	"zen4":           {"SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"},
	"alderlake":      {"SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX_VNNI"},
	"sapphirerapids": {"SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_TILE", "AMX_INT8"},
}

// PortableCPUVariant is the x86 variant every amd64 CPU runs.
const PortableCPUVariant = "x64"

// CPUVariant returns the ggml CPU variant a bundle file holds, "haswell"
// for libggml-cpu-haswell.so; "" for any other file, the single
// libggml-cpu.so of a build without variants included.
func CPUVariant(name string) string {
	v, _ := strings.CutPrefix(libStem(name), "libggml-cpu-")
	if v == libStem(name) {
		return ""
	}
	return v
}

// x86Score is the score ggml's loader gives variant on a CPU with flags;
// 0 when the CPU lacks a feature it is built for, -1 for a variant this
// package does not know.
func x86Score(variant string, flags map[string]bool) int {
	feats, ok := x86Variants[variant]
	if !ok {
		return -1
	}
	score := 1
	for _, f := range feats {
		for _, flag := range x86Features[f].flags {
			if !flags[flag] {
				return 0
			}
		}
		score += x86Features[f].score
	}
	return score
}

// CPUNeeds returns which CPU variant libraries of m a host needs whose CPU
// shows flags (the flags line of its /proc/cpuinfo): the variant ggml's
// loader would pick there, the highest score among those the CPU runs, and
// the portable one. It answers true for every other file, for variants
// this package does not know, and for everything when flags is empty or m
// is not an amd64 bundle: what is not understood is shipped.
func (m *Manifest) CPUNeeds(flags []string) func(name string) bool {
	all := func(string) bool { return true }
	if len(flags) == 0 || m.Arch != "amd64" {
		return all
	}
	has := make(map[string]bool, len(flags))
	for _, f := range flags {
		has[strings.ToLower(f)] = true
	}
	best, bestScore := "", 0
	for _, f := range m.Files {
		v := CPUVariant(f.Name)
		if v == "" {
			continue
		}
		s := x86Score(v, has)
		if s > bestScore || s == bestScore && s > 0 && v < best {
			best, bestScore = v, s
		}
	}
	if best == "" {
		return all
	}
	return func(name string) bool {
		v := CPUVariant(name)
		if v == "" || v == best || v == PortableCPUVariant {
			return true
		}
		_, known := x86Variants[v]
		return !known
	}
}

// unused are libraries of the npm bundles that nothing rbee runs loads:
// the worker opens libllama, libggml and libggml-base (and ggml its
// backends), the RPC server links ggml alone. libllama-common (6 MB) is
// llama.cpp's helper library for its own tools.
var unused = map[string]bool{"libllama-common.so": true}

// Unused reports whether nothing rbee runs loads the bundle file name: a
// push may leave it out.
func Unused(name string) bool { return unused[name] }

// omissible reports whether a host's copy of a bundle may lack name.
func omissible(name string) bool { return CPUVariant(name) != "" || Unused(name) }

// Partial returns a copy of m without the CPU variant libraries (and
// Unused files) keep refuses, which it lists as Omitted (with those m
// omitted already): the manifest of a bundle shipped to a host that runs
// only some of them. Every other file stays, and at least one CPU variant
// must.
func (m *Manifest) Partial(keep func(File) bool) (*Manifest, error) {
	p := *m
	p.Files = nil
	p.Omitted = slices.Clone(m.Omitted)
	p.Links = maps.Clone(m.Links)
	cpu := 0
	for _, f := range m.Files {
		if !omissible(f.Name) || keep(f) {
			p.Files = append(p.Files, f)
			if CPUVariant(f.Name) != "" {
				cpu++
			}
			continue
		}
		p.Omitted = append(p.Omitted, f)
	}
	slices.SortFunc(p.Omitted, func(a, b File) int { return strings.Compare(a.Name, b.Name) })
	if cpu == 0 && m.hasCPUVariants() {
		return nil, errors.New("partial bundle: no CPU variant library left")
	}
	if err := p.check(); err != nil {
		return nil, fmt.Errorf("partial bundle: %w", err)
	}
	return &p, nil
}

func (m *Manifest) hasCPUVariants() bool {
	return slices.ContainsFunc(m.Files, func(f File) bool { return CPUVariant(f.Name) != "" })
}

// CPUVariants names the CPU variants m holds, sorted.
func (m *Manifest) CPUVariants() []string {
	var vs []string
	for _, f := range m.Files {
		if v := CPUVariant(f.Name); v != "" {
			vs = append(vs, v)
		}
	}
	slices.Sort(vs)
	return vs
}

// Marshal returns the manifest as a bundle stores it.
func (m *Manifest) Marshal() ([]byte, error) {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("marshal manifest: %w", err)
	}
	return append(data, '\n'), nil
}

// checkOmitted reports whether the omitted files of m are CPU variant
// libraries the bundle does not also hold.
func (m *Manifest) checkOmitted(files map[string]bool) error {
	seen := map[string]bool{}
	for _, f := range m.Omitted {
		switch {
		case !plainFileName(f.Name) || !omissible(f.Name):
			return fmt.Errorf("omitted %q is not a CPU variant library or an unused one", f.Name)
		case files[f.Name]:
			return fmt.Errorf("%s listed as file and omitted", f.Name)
		case seen[f.Name]:
			return fmt.Errorf("%s omitted twice", f.Name)
		case !sha256Hex.MatchString(f.SHA256):
			return fmt.Errorf("omitted %s: bad sha256 %q", f.Name, f.SHA256)
		}
		seen[f.Name] = true
	}
	return nil
}
