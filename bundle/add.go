package bundle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
)

// Add prepares the bundle in dir again with the files at paths added
// beside its own (backend libraries such as libggml-rpc.so, or Tools),
// replacing a bundle file of the same name. The manifest keeps its source;
// the bundle is replaced in one rename, as Prepare does. Adding files the
// bundle already holds with the same SHA-256 changes nothing; the second
// result says whether the bundle changed.
func Add(ctx context.Context, dir string, paths ...string) (*Manifest, bool, error) {
	m, changed, err := add(ctx, dir, paths)
	if err != nil {
		return nil, false, fmt.Errorf("add to bundle %s: %w", dir, err)
	}
	return m, changed, nil
}

func add(ctx context.Context, dir string, paths []string) (*Manifest, bool, error) {
	m, err := Validate(dir)
	if err != nil {
		return nil, false, err
	}
	if len(m.Omitted) > 0 {
		return nil, false, errors.New("it is a partial bundle (cut for one host); add to the whole one")
	}
	have := map[string]File{}
	for _, f := range m.Files {
		have[f.Name] = f
	}
	extra := map[string]string{} // name in the bundle → path
	same := true
	buf := make([]byte, 1<<20)
	for _, p := range paths {
		name := filepath.Base(p)
		switch {
		case !isLib(name) && !IsTool(name):
			return nil, false, fmt.Errorf("%s is neither a library nor a bundle tool (%v)", p, Tools)
		case extra[name] != "":
			return nil, false, fmt.Errorf("%s given twice", name)
		case m.Links[name] != "":
			return nil, false, fmt.Errorf("%s is a link of the bundle", name)
		}
		extra[name] = p
		sum, err := hashFile(p, buf)
		if err != nil {
			return nil, false, err
		}
		if have[name].SHA256 != sum {
			same = false
		}
	}
	if same {
		return m, false, nil
	}

	// The staging directory holds both sets of files (hard links where it
	// can) and the bundle's links; Prepare copies it, checks it all and
	// writes the manifest.
	stage, err := os.MkdirTemp(filepath.Dir(filepath.Clean(dir)), "."+filepath.Base(dir)+".add-")
	if err != nil {
		return nil, false, err
	}
	defer os.RemoveAll(stage)
	for _, f := range m.Files {
		if extra[f.Name] == "" {
			if err := linkOrCopy(filepath.Join(dir, f.Name), filepath.Join(stage, f.Name)); err != nil {
				return nil, false, err
			}
		}
	}
	for name, p := range extra {
		if err := linkOrCopy(p, filepath.Join(stage, name)); err != nil {
			return nil, false, err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(m.Links)) {
		if err := os.Symlink(m.Links[name], filepath.Join(stage, name)); err != nil {
			return nil, false, err
		}
	}
	nm, err := Prepare(ctx, stage, dir, Options{Version: m.Version, OS: m.OS, Arch: m.Arch, Source: m.Source})
	if err != nil {
		return nil, false, err
	}
	return nm, true, nil
}

// linkOrCopy makes dst a hard link to src, or a copy where src is on
// another file system.
func linkOrCopy(src, dst string) error {
	if os.Link(src, dst) == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
