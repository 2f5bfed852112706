package download

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrCorrupt means a file's content no longer matches the sha256 it is
// known by (its blob name, or the catalog's record).
var ErrCorrupt = errors.New("content does not match its sha256")

// verifiedRecord is what Verify remembers of a file whose hash matched:
// while its size and mtime stay, it is not hashed again.
type verifiedRecord struct {
	Path    string `json:"path"`
	SHA256  string `json:"sha256"`
	Size    int64  `json:"size"`
	ModTime int64  `json:"mtime_ns"`
}

func (s *Store) verifiedPath(path string) string {
	return filepath.Join(s.Dir, "verified", hashString(path)+".json")
}

// Verify checks that the file at path has sha256 sum before a worker loads
// it. The file is hashed only when its size or mtime changed since the
// last check that passed (the record lives under Dir/verified/), so a
// multi-GB model costs one hash per change, not one per job. A mismatch
// returns an error wrapping ErrCorrupt; a missing file one wrapping
// fs.ErrNotExist. ctx bounds the hashing.
func (s *Store) Verify(ctx context.Context, path, sum string) error {
	sum = strings.ToLower(strings.TrimPrefix(sum, "sha256:"))
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("verify %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("verify %s: not a regular file", path)
	}
	var rec verifiedRecord
	if b, err := os.ReadFile(s.verifiedPath(path)); err == nil && json.Unmarshal(b, &rec) == nil &&
		rec.Path == path && rec.SHA256 == sum && rec.Size == st.Size() && rec.ModTime == st.ModTime().UnixNano() {
		return nil
	}
	got, err := hashFile(ctx, path)
	if err != nil {
		return fmt.Errorf("verify %s: %w", path, err)
	}
	if got != sum {
		os.Remove(s.verifiedPath(path))
		return fmt.Errorf("verify %s: %w: its sha256 is %s, want %s", path, ErrCorrupt, got, sum)
	}
	s.record(path, sum, st)
	return nil
}

// Verified records that the file at path, as it is now, has sha256 sum
// (its caller just hashed it), so that Verify does not hash it again.
func (s *Store) Verified(path, sum string) {
	if st, err := os.Stat(path); err == nil {
		s.record(path, strings.ToLower(strings.TrimPrefix(sum, "sha256:")), st)
	}
}

// record writes a verification record; losing one only costs a hash, so
// errors are ignored.
func (s *Store) record(path, sum string, st fs.FileInfo) {
	b, err := json.Marshal(verifiedRecord{Path: path, SHA256: sum, Size: st.Size(), ModTime: st.ModTime().UnixNano()})
	if err != nil {
		return
	}
	dir := filepath.Dir(s.verifiedPath(path))
	if os.MkdirAll(dir, 0o755) != nil {
		return
	}
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return
	}
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil && cerr == nil {
		err = os.Rename(tmp.Name(), s.verifiedPath(path))
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
}

// Quarantine moves a file that failed Verify out of the way, into
// Dir/quarantine/, so that nothing loads it again and a person can still
// look at it; it is never deleted here. It returns the new path.
func (s *Store) Quarantine(path string) (string, error) {
	dir := filepath.Join(s.Dir, "quarantine")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("quarantine %s: %w", path, err)
	}
	dst := filepath.Join(dir, fmt.Sprintf("%s.%s", filepath.Base(path), time.Now().UTC().Format("20060102T150405.000000000Z")))
	if err := os.Rename(path, dst); err != nil {
		return "", fmt.Errorf("quarantine %s: %w", path, err)
	}
	os.Remove(s.verifiedPath(path))
	return dst, nil
}

// hashFile returns a file's sha256 in hex; ctx cancels it between reads.
func hashFile(ctx context.Context, path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, copyBuffer)
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n, err := f.Read(buf)
		h.Write(buf[:n])
		if err == io.EOF {
			return hex.EncodeToString(h.Sum(nil)), nil
		}
		if err != nil {
			return "", err
		}
	}
}
