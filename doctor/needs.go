package doctor

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// engineGlibc is the newest GLIBC_ symbol version the pinned engine
// bundles (node-llama-cpp 3.22.1 linux-x64 and linux-x64-cuda, llama.cpp
// v0.5.0) need, read from their ELF version needs. It stands in when no
// local agent or engine file can be read.
const engineGlibc = "2.34"

// Needs is what the agent and the engine require of a host.
type Needs struct {
	Glibc string   // oldest glibc that runs them, "2.34"
	From  []string // the files it was read from; empty: the built-in value
}

func (n Needs) from() string {
	if len(n.From) == 0 {
		return "the pinned engine bundle"
	}
	names := make([]string, 0, len(n.From))
	for _, f := range n.From {
		names = append(names, filepath.Base(f))
	}
	if len(names) > 3 {
		names = append(names[:3], fmt.Sprintf("%d more", len(names)-3))
	}
	return "read from " + strings.Join(names, ", ")
}

// DefaultNeeds is the built-in requirement of the pinned engine.
func DefaultNeeds() Needs { return Needs{Glibc: engineGlibc} }

// NeedsOf reads the glibc the given ELF files need: the newest GLIBC_x.y
// version any of them needs from libc, libm, libpthread or the loader.
// A directory stands for the *.so* files in it (an engine bundle); paths
// that do not exist or are not ELF are passed over. With nothing
// readable it returns DefaultNeeds.
func NeedsOf(paths ...string) Needs {
	n := Needs{}
	for _, p := range paths {
		for _, file := range elfFiles(p) {
			v, err := glibcNeeded(file)
			if err != nil || v == "" {
				continue
			}
			n.From = append(n.From, file)
			if n.Glibc == "" || versionLess(n.Glibc, v) {
				n.Glibc = v
			}
		}
	}
	if n.Glibc == "" {
		return DefaultNeeds()
	}
	return n
}

func elfFiles(p string) []string {
	fi, err := os.Stat(p)
	if err != nil {
		return nil
	}
	if !fi.IsDir() {
		return []string{p}
	}
	matches, _ := filepath.Glob(filepath.Join(p, "*.so*"))
	var files []string
	for _, m := range matches {
		// Plain names are links to the versioned files: read each once.
		if li, err := os.Lstat(m); err == nil && li.Mode().IsRegular() {
			files = append(files, m)
		}
	}
	return files
}

// glibcNeeded returns the newest GLIBC_ version path needs, "" for none
// (a static binary).
func glibcNeeded(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	needs, err := f.DynamicVersionNeeds()
	if err != nil {
		return "", nil // no version needs: static, or not dynamic
	}
	newest := ""
	for _, need := range needs {
		for _, dep := range need.Needs {
			v, ok := strings.CutPrefix(dep.Dep, "GLIBC_")
			if !ok || v == "" || v[0] < '0' || v[0] > '9' {
				continue // GLIBC_PRIVATE
			}
			if newest == "" || versionLess(newest, v) {
				newest = v
			}
		}
	}
	return newest, nil
}
