package download

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// List returns the blobs in the store, ordered by sha256 (for the tests:
// rbee keeps its models in the hive catalog).
func (s *Store) List() ([]Blob, error) {
	dir := filepath.Join(s.Dir, "blobs")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list store: %w", err)
	}
	var blobs []Blob
	for _, e := range entries {
		sum, ok := strings.CutPrefix(e.Name(), "sha256-")
		if !ok || sha256FromETag(sum) != sum || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		blobs = append(blobs, Blob{SHA256: sum, Path: filepath.Join(dir, e.Name()), Size: info.Size()})
	}
	slices.SortFunc(blobs, func(a, b Blob) int { return strings.Compare(a.SHA256, b.SHA256) })
	return blobs, nil
}
