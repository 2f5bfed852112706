package download

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestVerifyCachedQuarantine(t *testing.T) {
	s := &Store{Dir: t.TempDir()}
	path := filepath.Join(t.TempDir(), "model.gguf")
	data := []byte("GGUF weights, not really")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(data)
	sum := hex.EncodeToString(h[:])
	if err := s.Verify(t.Context(), path, sum); err != nil {
		t.Fatalf("Verify of a whole file: %v", err)
	}
	// Same size and mtime: the record stands and the file is not hashed
	// again (a byte changed behind an unchanged mtime goes unseen, which
	// is the price of not hashing GBs per job).
	st, _ := os.Stat(path)
	flipped := append([]byte{}, data...)
	flipped[3] ^= 0xff
	if err := os.WriteFile(path, flipped, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(t.Context(), path, sum); err != nil {
		t.Fatalf("Verify hashed a file whose size and mtime did not change: %v", err)
	}
	// A new mtime: hashed, and the flip is found.
	later := st.ModTime().Add(time.Second)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	err := s.Verify(t.Context(), path, sum)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Verify of a changed file = %v, want ErrCorrupt", err)
	}
	q, err := s.Quarantine(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the corrupt file is still in place: %v", err)
	}
	if b, err := os.ReadFile(q); err != nil || string(b) != string(flipped) {
		t.Errorf("quarantined copy %s: %v %q", q, err, b)
	}
	if err := s.Verify(t.Context(), path, sum); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Verify of a quarantined file = %v, want not exist", err)
	}
}
