package provision

import (
	"encoding/json"
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/bundle"
)

// TestHostBundle cuts one bundle for hosts of different CPUs: each gets
// the variant ggml picks there and the portable one; one whose home
// already holds other variants (a home shared by hosts of other CPUs, or
// a whole bundle pushed before) keeps them; an omitted variant there with
// other contents is removed.
func TestHostBundle(t *testing.T) {
	t.Parallel()
	const (
		haswell = "sse4_2 avx f16c fma avx2 bmi2"
		zen4    = haswell + " avx512f avx512cd avx512vl avx512dq avx512bw avx512vbmi avx512_vnni avx512_bf16"
		dir     = "/home/h/.rbee/engines/v0.5.0-cpu"
	)
	sum := func(s string) string { return strings.Repeat(s, 64)[:64] }
	m := &bundle.Manifest{Format: bundle.Format, Engine: bundle.Engine, Version: "v0.5.0", OS: "linux", Arch: "amd64", Backends: []string{"cpu"},
		Links: map[string]string{}}
	for i, name := range []string{"libggml-base.so", "libggml-cpu-haswell.so", "libggml-cpu-sse42.so", "libggml-cpu-x64.so", "libggml-cpu-zen4.so", "libggml.so", "libllama.so"} {
		m.Files = append(m.Files, bundle.File{Name: name, Size: 1, SHA256: sum(string("abcdef9"[i]))})
	}
	var files []file
	for _, f := range m.Files {
		files = append(files, file{src: "/src/" + f.Name, dst: path.Join(dir, f.Name), sum: f.SHA256})
	}
	manifest := file{src: "/src/" + bundle.ManifestName, dst: path.Join(dir, bundle.ManifestName), sum: sum("f")}
	at := func(name string) string { return path.Join(dir, name) }

	tests := []struct {
		name        string
		flags       string
		have        map[string]string
		wantVariant []string // CPU variants sent or kept
		wantStale   []string
		whole       bool // the bundle's own manifest, nothing left out
	}{
		{name: "haswell host", flags: haswell, wantVariant: []string{"haswell", "x64"}},
		{name: "a later zen4 host", flags: zen4, wantVariant: []string{"x64", "zen4"}},
		{name: "zen4 host sharing a home with a haswell one", flags: zen4,
			have:        map[string]string{at("libggml-cpu-haswell.so"): sum("b")},
			wantVariant: []string{"haswell", "x64", "zen4"}},
		{name: "a whole bundle there already", flags: haswell,
			have:  map[string]string{at("libggml-cpu-sse42.so"): sum("c"), at("libggml-cpu-zen4.so"): sum("e"), at("libggml-cpu-haswell.so"): sum("b"), at("libggml-cpu-x64.so"): sum("d")},
			whole: true, wantVariant: []string{"haswell", "sse42", "x64", "zen4"}},
		{name: "an old omitted variant there", flags: haswell,
			have:        map[string]string{at("libggml-cpu-zen4.so"): sum("0")},
			wantVariant: []string{"haswell", "x64"}, wantStale: []string{at("libggml-cpu-zen4.so")}},
		{name: "CPU unknown", flags: "", whole: true, wantVariant: []string{"haswell", "sse42", "x64", "zen4"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			keep, last, stale, err := hostBundle(files, manifest, m, strings.Fields(tt.flags), tt.have)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, f := range keep {
				if v := bundle.CPUVariant(path.Base(f.dst)); v != "" {
					got = append(got, v)
				}
			}
			if !slices.Equal(got, tt.wantVariant) {
				t.Errorf("variants %v, want %v", got, tt.wantVariant)
			}
			if !slices.Equal(stale, tt.wantStale) {
				t.Errorf("stale %v, want %v", stale, tt.wantStale)
			}
			if tt.whole {
				if last.data != nil || last.sum != manifest.sum {
					t.Errorf("manifest made for the host, want the bundle's own")
				}
				return
			}
			var hm bundle.Manifest
			if err := json.Unmarshal(last.data, &hm); err != nil {
				t.Fatalf("host manifest: %v", err)
			}
			if !slices.Equal(hm.CPUVariants(), tt.wantVariant) || len(hm.Omitted)+len(hm.Files) != len(m.Files) || last.sum == manifest.sum {
				t.Errorf("host manifest variants %v, omitted %+v, sum %s", hm.CPUVariants(), hm.Omitted, last.sum)
			}
		})
	}
}
