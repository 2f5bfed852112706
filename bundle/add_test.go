package bundle_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/bundle"
)

// The RPC backend and server join a prepared bundle as make engine adds
// them: listed with their sums, the server executable, the source kept.
func TestAdd(t *testing.T) {
	ctx := context.Background()
	dir := prepared(t)
	before, err := bundle.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	built := writeDir(t, t.TempDir(), []entry{
		{name: "libggml-rpc.so", body: "rpc backend"},
		{name: "rpc-server", body: "rpc server"},
	})
	paths := []string{filepath.Join(built, "libggml-rpc.so"), filepath.Join(built, "rpc-server")}

	m, changed, err := bundle.Add(ctx, dir, paths...)
	if err != nil {
		t.Fatal(err)
	}
	if !changed {
		t.Error("changed: got false, want true")
	}
	if want := []string{"cpu", "rpc"}; !slices.Equal(m.Backends, want) {
		t.Errorf("backends: got %v, want %v", m.Backends, want)
	}
	if got, want := fileNames(m), slices.Sorted(slices.Values(append(fileNames(before), "libggml-rpc.so", "rpc-server"))); !slices.Equal(got, want) {
		t.Errorf("files: got %v, want %v", got, want)
	}
	if m.Source != before.Source {
		t.Errorf("source: got %q, want %q", m.Source, before.Source)
	}
	if got := bundle.Variant(m); got != "v0.5.0-cpu" {
		t.Errorf("variant: got %q, want v0.5.0-cpu (rpc is no hardware)", got)
	}
	fi, err := os.Stat(filepath.Join(dir, "rpc-server"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o755 {
		t.Errorf("rpc-server mode: got %v, want 0755", fi.Mode().Perm())
	}
	if _, err := bundle.Validate(dir); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if _, changed, err := bundle.Add(ctx, dir, paths...); err != nil || changed {
		t.Errorf("add again: got changed %v, %v; want false, nil", changed, err)
	}

	// A server that lost its executable bit is a corrupt bundle.
	if err := os.Chmod(filepath.Join(dir, "rpc-server"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := bundle.Validate(dir); !errors.Is(err, bundle.ErrCorrupt) || !strings.Contains(err.Error(), "rpc-server: not executable") {
		t.Errorf("validate 0644 server: got %v, want ErrCorrupt naming it", err)
	}
}

func TestAddRefuses(t *testing.T) {
	dir := prepared(t)
	stray := writeDir(t, t.TempDir(), []entry{{name: "notes.txt", body: "x"}})
	if _, _, err := bundle.Add(context.Background(), dir, filepath.Join(stray, "notes.txt")); err == nil || !strings.Contains(err.Error(), "neither a library nor a bundle tool") {
		t.Errorf("add notes.txt: got %v, want a refusal", err)
	}
	if _, _, err := bundle.Add(context.Background(), t.TempDir(), filepath.Join(stray, "notes.txt")); !errors.Is(err, bundle.ErrNotBundle) {
		t.Errorf("add to no bundle: got %v, want ErrNotBundle", err)
	}
}

func TestFileMode(t *testing.T) {
	for _, tt := range []struct {
		name string
		want os.FileMode
	}{
		{"rpc-server", 0o755},
		{"libggml-rpc.so", 0o644},
		{"LICENSE", 0o644},
	} {
		if got := (bundle.File{Name: tt.name}).Mode(); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}
