package bundle

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
)

// validated remembers, by directory, the fingerprint of the last bundle
// Validate passed in this process.
var validated = struct {
	sync.Mutex
	m map[string]onceEntry
}{m: map[string]onceEntry{}}

type onceEntry struct {
	print [32]byte
	m     *Manifest
}

// ValidateOnce is Validate, remembered: a bundle whose manifest and files
// (name, size, modification time, inode) have not changed since this
// process last validated it is not hashed again. The queen pushes one
// bundle to a hundred hosts: it was hashed (29.6 MB) for each, one at a
// time.
func ValidateOnce(dir string) (*Manifest, error) {
	fp, err := fingerprint(dir)
	if err == nil {
		validated.Lock()
		e, ok := validated.m[dir]
		validated.Unlock()
		if ok && e.print == fp {
			c := *e.m
			return &c, nil
		}
	}
	m, verr := Validate(dir)
	if verr != nil {
		return nil, verr
	}
	if err == nil {
		// What was hashed is what was fingerprinted only if nothing moved
		// meanwhile: taken again, it must be the same.
		if again, ferr := fingerprint(dir); ferr == nil && again == fp {
			c := *m
			validated.Lock()
			validated.m[dir] = onceEntry{print: fp, m: &c}
			validated.Unlock()
		}
	}
	return m, nil
}

// fingerprint sums what a change to a bundle directory changes: the
// manifest's bytes and every entry's name, size, modification time, inode
// and link target.
func fingerprint(dir string) ([32]byte, error) {
	h := sha256.New()
	data, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return [32]byte{}, err
	}
	h.Write(data)
	des, err := os.ReadDir(dir)
	if err != nil {
		return [32]byte{}, err
	}
	names := make([]string, 0, len(des))
	for _, de := range des {
		names = append(names, de.Name())
	}
	sort.Strings(names)
	for _, n := range names {
		p := filepath.Join(dir, n)
		fi, err := os.Lstat(p)
		if err != nil {
			return [32]byte{}, err
		}
		var ino uint64
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			ino = st.Ino
		}
		target, _ := os.Readlink(p)
		fmt.Fprintf(h, "%s\x00%d\x00%d\x00%o\x00%d\x00%s\n", n, fi.Size(), fi.ModTime().UnixNano(), fi.Mode(), ino, target)
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out, nil
}
