package bundle_test

import (
	"cmp"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/bundle"
)

// allVariants are the CPU libraries of node-llama-cpp's linux-x64 bundle.
var allVariants = []string{
	"alderlake", "cannonlake", "cascadelake", "cooperlake", "haswell", "icelake", "ivybridge",
	"piledriver", "sandybridge", "sapphirerapids", "skylakex", "sse42", "x64", "zen4",
}

func variantManifest(arch string, variants ...string) *bundle.Manifest {
	m := &bundle.Manifest{Arch: arch, Files: []bundle.File{{Name: "libggml-base.so"}, {Name: "libllama.so"}}}
	for _, v := range variants {
		m.Files = append(m.Files, bundle.File{Name: "libggml-cpu-" + v + ".so"})
	}
	return m
}

func TestCPUNeeds(t *testing.T) {
	t.Parallel()
	const (
		haswell = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2"
		avx512  = haswell + " avx512f avx512cd avx512vl avx512dq avx512bw"
		zen4    = avx512 + " avx512vbmi avx512_vnni avx512_bf16"
	)
	tests := []struct {
		name  string
		arch  string
		extra []string // variants besides allVariants
		flags string
		want  []string // CPU variants needed; nil: every file
	}{
		{name: "haswell-class (AMD EPYC without AVX-512)", flags: haswell, want: []string{"haswell", "x64"}},
		{name: "sse4.2 only", flags: "fpu sse sse2 sse4_2", want: []string{"sse42", "x64"}},
		{name: "nothing but sse2", flags: "fpu sse sse2", want: []string{"x64"}},
		{name: "avx without f16c", flags: "sse4_2 avx", want: []string{"sandybridge", "x64"}},
		{name: "avx2 without bmi2", flags: "sse4_2 avx f16c fma avx2", want: []string{"piledriver", "x64"}},
		{name: "avx-vnni", flags: haswell + " avx_vnni", want: []string{"alderlake", "x64"}},
		{name: "avx512f alone is not ggml's AVX512", flags: haswell + " avx512f", want: []string{"haswell", "x64"}},
		{name: "skylake-x", flags: avx512, want: []string{"skylakex", "x64"}},
		{name: "cascade lake", flags: avx512 + " avx512_vnni", want: []string{"cascadelake", "x64"}},
		{name: "ice lake", flags: avx512 + " avx512vbmi avx512_vnni", want: []string{"icelake", "x64"}},
		{name: "zen4", flags: zen4, want: []string{"x64", "zen4"}},
		{name: "sapphire rapids", flags: zen4 + " amx_tile amx_int8 avx_vnni", want: []string{"sapphirerapids", "x64"}},
		{name: "amx_int8 without amx_tile", flags: zen4 + " amx_int8", want: []string{"x64", "zen4"}},
		{name: "unknown variant shipped", flags: haswell, extra: []string{"future"}, want: []string{"future", "haswell", "x64"}},
		{name: "flags unknown", flags: "", want: nil},
		{name: "arm64 bundle", arch: "arm64", flags: "fp asimd asimddp sve", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := variantManifest(cmp.Or(tt.arch, "amd64"), append(slices.Clone(allVariants), tt.extra...)...)
			needs := m.CPUNeeds(strings.Fields(tt.flags))
			var got []string
			for _, f := range m.Files {
				v := bundle.CPUVariant(f.Name)
				if v == "" {
					if !needs(f.Name) {
						t.Errorf("%s: not needed, want every other file needed", f.Name)
					}
					continue
				}
				if needs(f.Name) {
					got = append(got, v)
				}
			}
			want := tt.want
			if want == nil {
				want = append(slices.Clone(allVariants), tt.extra...)
			}
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("got %v, want %v", got, want)
			}
		})
	}
}

func TestCPUVariant(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]string{
		"libggml-cpu-haswell.so": "haswell", "libggml-cpu-x64.so": "x64", "libggml-cpu.so": "",
		"libggml-base.so": "", "libggml-cuda.so": "", "LICENSE": "", "libggml-cpu-zen4.v0.5.0.so": "zen4",
	} {
		if got := bundle.CPUVariant(name); got != want {
			t.Errorf("CPUVariant(%q) = %q, want %q", name, got, want)
		}
	}
}

// TestPartial cuts a prepared bundle to its portable variant, as a push to
// a host does, and checks the copy the way the host does.
func TestPartial(t *testing.T) {
	t.Parallel()
	dir := prepared(t)
	m, err := bundle.Validate(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.Partial(func(f bundle.File) bool {
		v := bundle.CPUVariant(f.Name)
		return v == "" || v == bundle.PortableCPUVariant
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := p.CPUVariants(); !slices.Equal(got, []string{"x64"}) {
		t.Errorf("variants %v, want [x64]", got)
	}
	if len(p.Omitted) != 1 || p.Omitted[0].Name != "libggml-cpu-haswell.so" || p.Omitted[0].SHA256 == "" {
		t.Errorf("omitted %+v, want libggml-cpu-haswell.so with its sum", p.Omitted)
	}
	if len(p.Files) != len(m.Files)-1 || !slices.Equal(p.Backends, m.Backends) || bundle.Variant(p) != bundle.Variant(m) {
		t.Errorf("partial %+v of %+v: want one file fewer, same backends and variant", p, m)
	}
	if len(m.Omitted) != 0 || len(m.Files) != len(p.Files)+1 {
		t.Errorf("Partial changed the whole manifest: %+v", m)
	}

	// The host's copy: the manifest made for it, without the omitted file.
	data, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	writeDir(t, dir, []entry{{name: bundle.ManifestName, body: string(data)}})
	haswell := filepath.Join(dir, "libggml-cpu-haswell.so")
	body, err := os.ReadFile(haswell)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(haswell); err != nil {
		t.Fatal(err)
	}
	got, err := bundle.Validate(dir)
	if err != nil {
		t.Fatalf("Validate of the partial bundle: %v", err)
	}
	if len(got.Omitted) != 1 {
		t.Errorf("loaded omitted %+v, want the haswell library", got.Omitted)
	}
	// An omitted library left there is one ggml would load unchecked.
	writeDir(t, dir, []entry{{name: "libggml-cpu-haswell.so", body: string(body)}})
	if _, err := bundle.Validate(dir); !errors.Is(err, bundle.ErrCorrupt) || !strings.Contains(err.Error(), "libggml-cpu-haswell.so: not listed") {
		t.Errorf("Validate with an omitted library present: got %v, want ErrCorrupt, not listed", err)
	}

	if _, err := m.Partial(func(bundle.File) bool { return false }); err == nil {
		t.Error("Partial without any CPU variant: got no error")
	}
}

func TestPartialManifestChecked(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		edit func(m *bundle.Manifest)
		want string
	}{
		{"omits a required library", func(m *bundle.Manifest) {
			m.Omitted = append(m.Omitted, bundle.File{Name: "libggml-base.so", SHA256: strings.Repeat("a", 64)})
		}, "is not a CPU variant library"},
		{"file and omitted", func(m *bundle.Manifest) {
			m.Omitted = append(m.Omitted, bundle.File{Name: "libggml-cpu-x64.so", SHA256: strings.Repeat("a", 64)})
		}, "listed as file and omitted"},
		{"bad sum", func(m *bundle.Manifest) {
			m.Omitted = append(m.Omitted, bundle.File{Name: "libggml-cpu-zen4.so", SHA256: "x"})
		}, "bad sha256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := prepared(t)
			editManifest(t, dir, tt.edit)
			if _, err := bundle.Load(dir); !errors.Is(err, bundle.ErrCorrupt) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load: got %v, want ErrCorrupt with %q", err, tt.want)
			}
		})
	}
}

// TestPartialUnused: a push leaves out the library nothing rbee runs loads
// (libllama-common, 6 MB of the npm bundles); the host's copy without it
// validates, and only such files and CPU variants may be omitted.
func TestPartialUnused(t *testing.T) {
	t.Parallel()
	dir := prepared(t)
	m, err := bundle.Validate(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.Partial(func(f bundle.File) bool { return !bundle.Unused(f.Name) })
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Omitted) != 1 || p.Omitted[0].Name != "libllama-common.so" {
		t.Fatalf("omitted %+v, want libllama-common.so", p.Omitted)
	}
	data, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	writeDir(t, dir, []entry{{name: bundle.ManifestName, body: string(data)}})
	if err := os.Remove(filepath.Join(dir, "libllama-common.so")); err != nil {
		t.Fatal(err)
	}
	if _, err := bundle.Validate(dir); err != nil {
		t.Fatalf("Validate of the copy without the unused library: %v", err)
	}
	q, err := m.Partial(func(f bundle.File) bool { return f.Name != "libllama.v0.5.0.so" })
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range q.Omitted {
		if f.Name == "libllama.v0.5.0.so" {
			t.Errorf("a needed library was omitted: %+v", q.Omitted)
		}
	}
}
