package bundle_test

import (
	"debug/elf"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/bundle"
)

// TestPrepareRefusesWrongLibraries: a library built for another CPU than
// the hive's, and an unrelated library renamed libllama, are refused with
// what to install instead, and no internal option names.
func TestPrepareRefusesWrongLibraries(t *testing.T) {
	t.Parallel()
	// Any real shared library that is not llama.cpp: libffi is on every
	// machine rbee runs on.
	unrelated, _ := filepath.Glob("/usr/lib/*/libffi.so.8")
	if len(unrelated) == 0 {
		t.Fatal("no libffi.so.8 here (apt-get install libffi8)")
	}
	other, err := os.ReadFile(unrelated[0])
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		libllama string
		platform string
		want     error
		wantText string
	}{
		{"arm64 on amd64", fakeELF(elf.EM_AARCH64), "linux/amd64", bundle.ErrWrongPlatform, "built for linux/arm64 and this hive runs linux/amd64"},
		{"amd64 on arm64", fakeELF(elf.EM_X86_64), "linux/arm64", bundle.ErrWrongPlatform, "install a linux/arm64 build of llama.cpp"},
		{"renamed unrelated library", string(other), "", bundle.ErrNotLlama, "does not export llama.cpp's functions"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			libs := append(without(cpuLibs(), "libllama.v0.5.0.so"), entry{name: "libllama.v0.5.0.so", body: tt.libllama})
			src := writeDir(t, t.TempDir(), libs)
			dst := filepath.Join(t.TempDir(), "engine")
			_, err := bundle.Prepare(t.Context(), src, dst, bundle.Options{Platform: tt.platform})
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.wantText) {
				t.Fatalf("Prepare: got %v, want %v with %q", err, tt.want, tt.wantText)
			}
			if strings.Contains(err.Error(), "Options") || strings.Contains(err.Error(), "Platform") {
				t.Errorf("the message names internal options: %v", err)
			}
			checkAbsent(t, dst)
		})
	}
	// The right platform passes.
	src := writeDir(t, t.TempDir(), cpuLibs())
	if _, err := bundle.Prepare(t.Context(), src, filepath.Join(t.TempDir(), "engine"), bundle.Options{Platform: "linux/amd64"}); err != nil {
		t.Errorf("Prepare for linux/amd64: %v", err)
	}
}
