package gputest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestGPUsEnv(t *testing.T) {
	tests := []struct {
		name string
		gpus []FakeGPU
		want string
	}{
		{name: "none", want: ""},
		{
			name: "one",
			gpus: []FakeGPU{{Name: "NVIDIA RTX 3090", TotalMiB: 24576, FreeMiB: 20000, ComputeCap: "8.6"}},
			want: "NVIDIA RTX 3090,24576,20000,8.6",
		},
		{
			name: "two",
			gpus: []FakeGPU{
				{Name: "NVIDIA RTX 3090", TotalMiB: 24576, FreeMiB: 20000, ComputeCap: "8.6"},
				{Name: "NVIDIA RTX 3060", TotalMiB: 12288, FreeMiB: 11000, ComputeCap: "8.6"},
			},
			want: "NVIDIA RTX 3090,24576,20000,8.6;NVIDIA RTX 3060,12288,11000,8.6",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := GPUsEnv(tt.gpus...); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestDriverVersionMatchesSource(t *testing.T) {
	if want := []byte(`#define FAKE_DRIVER_VERSION "` + DriverVersion + `"`); !bytes.Contains(fakeSource, want) {
		t.Errorf("fakenvml.c does not contain %s", want)
	}
}

func TestBuildFakeNVML(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil && os.Getenv("CC") == "" {
		t.Skip("no C compiler")
	}
	dir := t.TempDir()
	lib, err := BuildFakeNVML(dir)
	if err != nil {
		t.Fatalf("BuildFakeNVML: %v", err)
	}
	if want := filepath.Join(dir, LibraryName); lib != want {
		t.Errorf("got %q, want %q", lib, want)
	}
	if _, err := os.Stat(lib); err != nil {
		t.Errorf("library not built: %v", err)
	}

	t.Setenv("CC", "false")
	if _, err := BuildFakeNVML(t.TempDir()); err == nil {
		t.Error("got no error from a failing compiler, want one")
	}
}
