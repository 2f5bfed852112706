package bundle_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/bundle"
)

// ValidateOnce hashes a bundle once while it stays as it is, and sees any
// change: a file rewritten with the same size is caught.
func TestValidateOnce(t *testing.T) {
	t.Parallel()
	dir := prepared(t)
	if _, err := bundle.ValidateOnce(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := bundle.ValidateOnce(dir); err != nil {
		t.Fatalf("again: %v", err)
	}
	lib := filepath.Join(dir, "libllama.v0.5.0.so")
	b, err := os.ReadFile(lib)
	if err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if err := os.WriteFile(lib, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// Same size; the modification time moves (set it apart in case the
	// clock's grain hides the write).
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(lib, later, later); err != nil {
		t.Fatal(err)
	}
	if _, err := bundle.ValidateOnce(dir); err == nil {
		t.Fatal("a changed library passed")
	}
}
