package bundle

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"debug/macho"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// DefaultMaxBytes bounds what Prepare extracts from an archive when
// Options.MaxBytes is zero.
const DefaultMaxBytes = 4 << 30

// Options adjust Prepare. The zero value detects everything.
type Options struct {
	// Version overrides the llama.cpp version read from the source.
	Version string
	// OS and Arch override the platform read from libllama's headers;
	// GOOS/GOARCH values such as linux and amd64.
	OS, Arch string
	// Source is recorded in the manifest instead of src, e.g. the URL the
	// archive was downloaded from.
	Source string
	// MaxBytes bounds the bytes extracted from an archive; zero means
	// DefaultMaxBytes.
	MaxBytes int64
	// Platform, when set ("linux/amd64"), is the platform the bundle must
	// run on: the hive's. Libraries built for another are refused.
	Platform string
}

// Prepare builds a bundle at dst from src, a directory or a .tgz, .tar or
// .zip archive holding llama.cpp's shared libraries somewhere inside. It
// copies the libraries and licence files of the directory holding libllama,
// links plain names (libllama.so) to versioned files (libllama.v0.5.0.so),
// writes and validates the manifest, then replaces dst in one rename; an
// existing bundle at dst is removed afterwards. On error, or when ctx ends
// first, dst is left as it was and nothing else remains.
func Prepare(ctx context.Context, src, dst string, opt Options) (*Manifest, error) {
	m, err := prepare(ctx, src, dst, opt)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
			err = fmt.Errorf("%w (%w)", ctxErr, err)
		}
		return nil, fmt.Errorf("prepare bundle: %w", err)
	}
	return m, nil
}

func prepare(ctx context.Context, src, dst string, opt Options) (*Manifest, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if dst == "" {
		return nil, errors.New("no destination directory")
	}
	dst = filepath.Clean(dst)
	fi, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	parent := filepath.Dir(dst)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, err
	}
	// Everything is built beside dst, on its file system, so that the final
	// rename is atomic; the temporary directory goes in every case.
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dst)+".tmp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	var fsys fs.FS
	if fi.IsDir() {
		fsys = os.DirFS(src)
	} else {
		staging := filepath.Join(tmp, "src")
		if err := os.Mkdir(staging, 0o755); err != nil {
			return nil, err
		}
		maxBytes := opt.MaxBytes
		if maxBytes <= 0 {
			maxBytes = DefaultMaxBytes
		}
		if err := extract(ctx, src, staging, maxBytes); err != nil {
			return nil, fmt.Errorf("extract %s: %w", src, err)
		}
		root, err := os.OpenRoot(staging)
		if err != nil {
			return nil, err
		}
		defer root.Close()
		// Through the root, no link in the archive can lead outside it.
		fsys = root.FS()
	}

	libDir, err := findLibDir(ctx, fsys)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	out := filepath.Join(tmp, "bundle")
	if err := os.Mkdir(out, 0o755); err != nil {
		return nil, err
	}
	m, err := assemble(ctx, fsys, libDir, out, opt)
	if err != nil {
		return nil, err
	}
	m.Source = src
	if opt.Source != "" {
		m.Source = opt.Source
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	data, err := m.Marshal()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(out, ManifestName), data, 0o644); err != nil {
		return nil, err
	}
	if _, err := Validate(out); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := replace(out, dst, filepath.Join(tmp, "old")); err != nil {
		return nil, err
	}
	return m, nil
}

// replace renames dir to dst, moving a bundle already at dst to aside.
func replace(dir, dst, aside string) error {
	fi, err := os.Lstat(dst)
	if errors.Is(err, fs.ErrNotExist) {
		return os.Rename(dir, dst)
	}
	if err != nil {
		return err
	}
	if !fi.IsDir() || !replaceable(dst) {
		return fmt.Errorf("%s exists and is not an engine bundle; remove it or choose another directory", dst)
	}
	if err := os.Rename(dst, aside); err != nil {
		return err
	}
	if err := os.Rename(dir, dst); err != nil {
		if err2 := os.Rename(aside, dst); err2 != nil {
			return fmt.Errorf("%w; the old bundle is at %s (%w)", err, aside, err2)
		}
		return err
	}
	return nil
}

// replaceable reports whether dir is a bundle, whole or broken, or empty.
func replaceable(dir string) bool {
	if _, err := os.Lstat(filepath.Join(dir, ManifestName)); err == nil {
		return true
	}
	entries, err := os.ReadDir(dir)
	return err == nil && len(entries) == 0
}

// findLibDir returns the one directory of fsys that holds libllama.
func findLibDir(ctx context.Context, fsys fs.FS) (string, error) {
	found := map[string]bool{}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !d.IsDir() && isLibllama(d.Name()) {
			found[path.Dir(p)] = true
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	dirs := slices.Sorted(maps.Keys(found))
	switch len(dirs) {
	case 0:
		return "", errors.New("no libllama library inside; is it a llama.cpp build?")
	case 1:
		return dirs[0], nil
	}
	return "", fmt.Errorf("libllama in several directories (%s); point at one of them", strings.Join(dirs, ", "))
}

// assemble copies the libraries and licences of libDir into out, links
// plain names, and describes the result.
func assemble(ctx context.Context, fsys fs.FS, libDir, out string, opt Options) (*Manifest, error) {
	entries, err := fs.ReadDir(fsys, libDir)
	if err != nil {
		return nil, err
	}
	files := map[string]File{}
	links := map[string]string{}
	var linked []string
	for _, e := range entries {
		name := e.Name()
		if name == ManifestName || !(isLib(name) || isLicense(name) || IsTool(name)) {
			continue
		}
		switch {
		case e.Type().IsRegular():
			f, err := copyFile(ctx, fsys, path.Join(libDir, name), out)
			if err != nil {
				return nil, err
			}
			files[name] = f
		case e.Type()&fs.ModeSymlink != 0:
			linked = append(linked, name)
		}
	}
	for _, name := range linked {
		if target, ok := localTarget(fsys, libDir, name, files); ok {
			links[name] = target
			continue
		}
		// A link out of the directory: keep what it points to.
		f, err := copyFile(ctx, fsys, path.Join(libDir, name), out)
		if err != nil {
			return nil, err
		}
		files[name] = f
	}
	// Licences often sit at the top of a package, above the libraries.
	for d := libDir; d != "."; {
		d = path.Dir(d)
		entries, err := fs.ReadDir(fsys, d)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			name := e.Name()
			if _, ok := files[name]; ok || !e.Type().IsRegular() || !isLicense(name) {
				continue
			}
			f, err := copyFile(ctx, fsys, path.Join(d, name), out)
			if err != nil {
				return nil, err
			}
			files[name] = f
		}
	}
	if err := addPlainLinks(files, links); err != nil {
		return nil, err
	}
	for _, name := range slices.Sorted(maps.Keys(links)) {
		if err := os.Symlink(links[name], filepath.Join(out, name)); err != nil {
			return nil, err
		}
	}

	m := &Manifest{
		Format:  Format,
		Engine:  Engine,
		Files:   slices.SortedFunc(maps.Values(files), func(a, b File) int { return strings.Compare(a.Name, b.Name) }),
		Links:   links,
		Created: time.Now().UTC().Truncate(time.Second),
	}
	names := slices.Collect(maps.Keys(m.names()))
	m.Backends = backendsOf(names)
	if m.Version, err = version(fsys, libDir, names, opt); err != nil {
		return nil, err
	}
	m.OS, m.Arch = opt.OS, opt.Arch
	if m.OS == "" || m.Arch == "" {
		lib := libllamaFile(files, links)
		if lib == "" {
			return nil, errors.New("no libllama among the libraries")
		}
		goos, goarch, err := platform(filepath.Join(out, lib))
		if err != nil {
			return nil, fmt.Errorf("%s: %w: cannot tell which OS and CPU it is built for", lib, err)
		}
		if m.OS == "" {
			m.OS = goos
		}
		if m.Arch == "" {
			m.Arch = goarch
		}
	}
	if lib := libllamaFile(files, links); lib != "" {
		if err := checkLibllama(filepath.Join(out, lib), lib); err != nil {
			return nil, err
		}
	}
	if err := checkPlatform(m, opt.Platform); err != nil {
		return nil, err
	}
	return m, nil
}

// localTarget follows the link name in dir through links in the same
// directory to a regular file already copied.
func localTarget(fsys fs.FS, dir, name string, files map[string]File) (string, bool) {
	cur := name
	for range 16 {
		target, err := fs.ReadLink(fsys, path.Join(dir, cur))
		if err != nil || strings.Contains(target, "/") || target == "." || target == ".." {
			return "", false
		}
		if _, ok := files[target]; ok {
			return target, true
		}
		cur = target
	}
	return "", false
}

// addPlainLinks links each library's plain name to it where the plain name
// is missing: libllama.so → libllama.v0.5.0.so.
func addPlainLinks(files map[string]File, links map[string]string) error {
	plain := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		p := plainName(name)
		if p == name {
			continue
		}
		if _, ok := files[p]; ok {
			continue
		}
		if _, ok := links[p]; ok {
			continue
		}
		if prev, ok := plain[p]; ok {
			return fmt.Errorf("both %s and %s could be %s; keep one version in the source", prev, name, p)
		}
		plain[p] = name
	}
	maps.Copy(links, plain)
	return nil
}

// libllamaFile returns the file libllama's plain name stands for.
func libllamaFile(files map[string]File, links map[string]string) string {
	for _, name := range []string{"libllama.so", "libllama.dylib"} {
		if _, ok := files[name]; ok {
			return name
		}
		if target, ok := links[name]; ok {
			return target
		}
	}
	return ""
}

var reFileVersion = regexp.MustCompile(`\.(v[0-9]+(?:\.[0-9]+)*)\.(?:so|dylib)$`)

// nlcMetadata is the part of node-llama-cpp's _nlcBuildMetadata.json that
// names the llama.cpp release.
type nlcMetadata struct {
	BuildOptions struct {
		LlamaCpp struct {
			Release string `json:"release"`
		} `json:"llamaCpp"`
	} `json:"buildOptions"`
}

// version returns the llama.cpp version: the override, node-llama-cpp's
// build metadata, or a libllama.vX.Y.Z file name, in that order.
func version(fsys fs.FS, libDir string, names []string, opt Options) (string, error) {
	if opt.Version != "" {
		return opt.Version, nil
	}
	const metaName = "_nlcBuildMetadata.json"
	data, err := fs.ReadFile(fsys, path.Join(libDir, metaName))
	switch {
	case err == nil:
		var meta nlcMetadata
		if err := json.Unmarshal(data, &meta); err != nil {
			return "", fmt.Errorf("read %s: %w", metaName, err)
		}
		if v := meta.BuildOptions.LlamaCpp.Release; v != "" {
			return v, nil
		}
	case !errors.Is(err, fs.ErrNotExist):
		return "", err
	}
	slices.SortFunc(names, func(a, b string) int {
		// libllama first, then the rest by name.
		if la, lb := isLibllama(a), isLibllama(b); la != lb {
			if la {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	for _, name := range names {
		if m := reFileVersion.FindStringSubmatch(name); m != nil {
			return m[1], nil
		}
	}
	return "", errors.New("cannot tell the llama.cpp version: no build metadata and no versioned library name (libllama.vX.Y.Z.so)")
}

// platform reads GOOS and GOARCH from a library's ELF or Mach-O header.
func platform(name string) (goos, goarch string, err error) {
	f, err := os.Open(name)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	if ef, err := elf.NewFile(f); err == nil {
		goarch := elfArch(ef)
		if goarch == "" {
			return "", "", fmt.Errorf("unknown ELF machine %v (%v)", ef.Machine, ef.Class)
		}
		goos := "linux"
		switch ef.OSABI {
		case elf.ELFOSABI_FREEBSD:
			goos = "freebsd"
		case elf.ELFOSABI_NETBSD:
			goos = "netbsd"
		case elf.ELFOSABI_OPENBSD:
			goos = "openbsd"
		}
		return goos, goarch, nil
	}
	if mf, err := macho.NewFile(f); err == nil {
		switch mf.Cpu {
		case macho.CpuAmd64:
			return "darwin", "amd64", nil
		case macho.CpuArm64:
			return "darwin", "arm64", nil
		}
		return "", "", fmt.Errorf("unknown Mach-O cpu %v", mf.Cpu)
	}
	if _, err := macho.NewFatFile(f); err == nil {
		return "", "", errors.New("universal Mach-O library holds several architectures")
	}
	return "", "", errors.New("not an ELF or Mach-O library")
}

func elfArch(f *elf.File) string {
	is64 := f.Class == elf.ELFCLASS64
	switch {
	case f.Machine == elf.EM_X86_64 && is64:
		return "amd64"
	case f.Machine == elf.EM_AARCH64 && is64:
		return "arm64"
	case f.Machine == elf.EM_386:
		return "386"
	case f.Machine == elf.EM_ARM:
		return "arm"
	case f.Machine == elf.EM_RISCV && is64:
		return "riscv64"
	case f.Machine == elf.EM_LOONGARCH && is64:
		return "loong64"
	case f.Machine == elf.EM_S390 && is64:
		return "s390x"
	case f.Machine == elf.EM_PPC64 && f.ByteOrder == binary.LittleEndian:
		return "ppc64le"
	case f.Machine == elf.EM_PPC64:
		return "ppc64"
	}
	return ""
}

// copyFile copies the regular file name of fsys into dir, following links,
// and describes the copy.
func copyFile(ctx context.Context, fsys fs.FS, name, dir string) (File, error) {
	if err := ctx.Err(); err != nil {
		return File{}, err
	}
	in, err := fsys.Open(name)
	if err != nil {
		return File{}, err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return File{}, err
	}
	if !fi.Mode().IsRegular() {
		return File{}, fmt.Errorf("%s: not a regular file", name)
	}
	base := path.Base(name)
	mode := File{Name: base}.Mode()
	out, err := os.OpenFile(filepath.Join(dir, base), os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return File{}, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), ctxReader{ctx, in})
	if err == nil {
		err = out.Chmod(mode) // whatever the umask took away
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return File{}, fmt.Errorf("copy %s: %w", name, err)
	}
	return File{Name: base, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// ctxReader stops reading once ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
