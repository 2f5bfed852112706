package bundle_test

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/rbee-dev/rbee/bundle"
)

// entry is a file, symlink or directory of a synthetic source tree.
type entry struct {
	name string
	body string // contents of a regular file
	link string // target, when the entry is a symlink
	dir  bool
}

// fakeELF returns the header of an ELF64 little-endian shared object for
// machine: enough for Prepare to read the platform.
func fakeELF(machine elf.Machine) string {
	var buf bytes.Buffer
	hdr := elf.Header64{
		Type:      uint16(elf.ET_DYN),
		Machine:   uint16(machine),
		Version:   uint32(elf.EV_CURRENT),
		Ehsize:    64,
		Phentsize: 56,
		Shentsize: 64,
	}
	copy(hdr.Ident[:], []byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)})
	if err := binary.Write(&buf, binary.LittleEndian, hdr); err != nil {
		panic(err)
	}
	return buf.String()
}

const nlcMeta = `{"buildOptions":{"gpu":false,"llamaCpp":{"repo":"ggml-org/llama.cpp","release":"v0.5.0"}}}`

// cpuLibs is the library directory of node-llama-cpp's linux-x64 package,
// shrunk.
func cpuLibs() []entry {
	return []entry{
		{name: "_nlcBuildMetadata.json", body: nlcMeta},
		{name: "libllama.v0.5.0.so", body: fakeELF(elf.EM_X86_64) + "llama"},
		{name: "libggml.v0.5.0.so", body: "ggml"},
		{name: "libggml-base.so", body: "ggml base"},
		{name: "libggml-cpu-x64.so", body: "cpu x64"},
		{name: "libggml-cpu-haswell.so", body: "cpu haswell"},
		{name: "libllama-common.so", body: "common"},
		{name: "llama-addon.node", body: "addon"},
	}
}

// npmPackage lays libs out as an npm package does.
func npmPackage(libs []entry) []entry {
	es := []entry{
		{name: "package/LICENSE", body: "MIT License"},
		{name: "package/package.json", body: "{}"},
		{name: "package/dist/index.js", body: "export {}"},
	}
	return append(es, under("package/bins/linux-x64/", libs)...)
}

func under(prefix string, es []entry) []entry {
	out := make([]entry, len(es))
	for i, e := range es {
		e.name = prefix + e.name
		out[i] = e
	}
	return out
}

func without(es []entry, names ...string) []entry {
	return slices.DeleteFunc(slices.Clone(es), func(e entry) bool {
		return slices.Contains(names, filepath.Base(e.name))
	})
}

func writeDir(t testing.TB, root string, es []entry) string {
	t.Helper()
	for _, e := range es {
		p := filepath.Join(root, e.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case e.dir:
			err = os.MkdirAll(p, 0o755)
		case e.link != "":
			err = os.Symlink(e.link, p)
		default:
			err = os.WriteFile(p, []byte(e.body), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func tarBytes(t testing.TB, es []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		hdr := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(e.body)), Format: tar.FormatPAX}
		switch {
		case e.dir:
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeDir, 0o755, 0
		case e.link != "":
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeSymlink, e.link, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func writeTar(t testing.TB, name string, es []entry) string {
	t.Helper()
	if err := os.WriteFile(name, tarBytes(t, es), 0o644); err != nil {
		t.Fatal(err)
	}
	return name
}

func writeTgz(t testing.TB, name string, es []entry) string {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	if _, err := gz.Write(tarBytes(t, es)); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return name
}

func writeZip(t testing.TB, name string, es []entry) string {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range es {
		hdr := &zip.FileHeader{Name: e.name, Method: zip.Deflate}
		body := e.body
		switch {
		case e.dir:
			hdr.Name += "/"
			hdr.SetMode(fs.ModeDir | 0o755)
		case e.link != "":
			hdr.SetMode(fs.ModeSymlink | 0o777)
			body = e.link
		default:
			hdr.SetMode(0o644)
		}
		w, err := zw.CreateHeader(hdr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return name
}

// checkClean fails unless parent holds nothing but, when it exists, dst.
func checkClean(t *testing.T, parent, dst string) {
	t.Helper()
	entries, err := os.ReadDir(parent)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if filepath.Join(parent, e.Name()) != dst {
			t.Errorf("left behind: %s", filepath.Join(parent, e.Name()))
		}
	}
}

func checkAbsent(t *testing.T, dst string) {
	t.Helper()
	if _, err := os.Lstat(dst); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Lstat(%s): got %v, want not exist", dst, err)
	}
}

func fileNames(m *bundle.Manifest) []string {
	var names []string
	for _, f := range m.Files {
		names = append(names, f.Name)
	}
	return names
}

var (
	cpuFiles = []string{
		"LICENSE", "libggml-base.so", "libggml-cpu-haswell.so", "libggml-cpu-x64.so",
		"libggml.v0.5.0.so", "libllama-common.so", "libllama.v0.5.0.so",
	}
	cpuLinks = map[string]string{"libggml.so": "libggml.v0.5.0.so", "libllama.so": "libllama.v0.5.0.so"}
)

func TestPrepare(t *testing.T) {
	t.Parallel()
	cudaLibs := append(cpuLibs(), entry{name: "libggml-cuda.so", body: "cuda"})
	// The Vulkan package names its libraries libllama.vulkan.v0.5.0.so.
	var vulkanLibs []entry
	for _, e := range append(cpuLibs(), entry{name: "libggml-vulkan.so", body: "vulkan"}) {
		e.name = strings.Replace(e.name, ".v0.5.0.so", ".vulkan.v0.5.0.so", 1)
		vulkanLibs = append(vulkanLibs, e)
	}
	tests := []struct {
		name         string
		src          func(t *testing.T, dir string) string
		wantFiles    []string
		wantBackends []string
	}{
		{
			name:         "dir",
			src:          func(t *testing.T, dir string) string { return writeDir(t, dir, cpuLibs()) },
			wantFiles:    cpuFiles[1:],
			wantBackends: []string{"cpu"},
		},
		{
			name: "nested dir",
			src: func(t *testing.T, dir string) string {
				return writeDir(t, dir, npmPackage(cpuLibs()))
			},
			wantFiles:    cpuFiles,
			wantBackends: []string{"cpu"},
		},
		{
			name: "tgz",
			src: func(t *testing.T, dir string) string {
				return writeTgz(t, filepath.Join(dir, "engine.tgz"), npmPackage(cpuLibs()))
			},
			wantFiles:    cpuFiles,
			wantBackends: []string{"cpu"},
		},
		{
			name: "tar",
			src: func(t *testing.T, dir string) string {
				return writeTar(t, filepath.Join(dir, "engine.tar"), npmPackage(cpuLibs()))
			},
			wantFiles:    cpuFiles,
			wantBackends: []string{"cpu"},
		},
		{
			name: "zip",
			src: func(t *testing.T, dir string) string {
				return writeZip(t, filepath.Join(dir, "engine.zip"), npmPackage(cpuLibs()))
			},
			wantFiles:    cpuFiles,
			wantBackends: []string{"cpu"},
		},
		{
			name: "zip named tgz",
			src: func(t *testing.T, dir string) string {
				return writeZip(t, filepath.Join(dir, "engine.tgz"), npmPackage(cpuLibs()))
			},
			wantFiles:    cpuFiles,
			wantBackends: []string{"cpu"},
		},
		{
			name: "tgz without extension",
			src: func(t *testing.T, dir string) string {
				return writeTgz(t, filepath.Join(dir, "download"), npmPackage(cpuLibs()))
			},
			wantFiles:    cpuFiles,
			wantBackends: []string{"cpu"},
		},
		{
			name: "cpu and cuda",
			src: func(t *testing.T, dir string) string {
				return writeTgz(t, filepath.Join(dir, "engine.tgz"), npmPackage(cudaLibs))
			},
			wantFiles: []string{
				"LICENSE", "libggml-base.so", "libggml-cpu-haswell.so", "libggml-cpu-x64.so", "libggml-cuda.so",
				"libggml.v0.5.0.so", "libllama-common.so", "libllama.v0.5.0.so",
			},
			wantBackends: []string{"cpu", "cuda"},
		},
		{
			name: "the vulkan package",
			src: func(t *testing.T, dir string) string {
				return writeTgz(t, filepath.Join(dir, "engine.tgz"), npmPackage(vulkanLibs))
			},
			wantFiles: []string{
				"LICENSE", "libggml-base.so", "libggml-cpu-haswell.so", "libggml-cpu-x64.so", "libggml-vulkan.so",
				"libggml.vulkan.v0.5.0.so", "libllama-common.so", "libllama.vulkan.v0.5.0.so",
			},
			wantBackends: []string{"cpu", "vulkan"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := tt.src(t, t.TempDir())
			parent := filepath.Join(t.TempDir(), "engines")
			dst := filepath.Join(parent, "llama-cpu")

			m, err := bundle.Prepare(t.Context(), src, dst, bundle.Options{})
			if err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			if got := fileNames(m); !slices.Equal(got, tt.wantFiles) {
				t.Errorf("files: got %v, want %v", got, tt.wantFiles)
			}
			wantLinks := maps.Clone(cpuLinks)
			for name, want := range wantLinks {
				if slices.Contains(tt.wantBackends, "vulkan") {
					wantLinks[name] = strings.Replace(want, ".v0.5.0.so", ".vulkan.v0.5.0.so", 1)
				}
			}
			if !reflect.DeepEqual(m.Links, wantLinks) {
				t.Errorf("links: got %v, want %v", m.Links, wantLinks)
			}
			if !slices.Equal(m.Backends, tt.wantBackends) {
				t.Errorf("backends: got %v, want %v", m.Backends, tt.wantBackends)
			}
			if m.Version != "v0.5.0" || m.OS != "linux" || m.Arch != "amd64" || m.Source != src {
				t.Errorf("version, os, arch, source: got %s %s %s %s, want v0.5.0 linux amd64 %s", m.Version, m.OS, m.Arch, m.Source, src)
			}
			if m.Format != 1 || m.Engine != "llama.cpp" || m.Created.IsZero() {
				t.Errorf("format, engine, created: got %d %q %v", m.Format, m.Engine, m.Created)
			}

			got, err := bundle.Validate(dst)
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if !reflect.DeepEqual(got.Files, m.Files) {
				t.Errorf("Validate files: got %v, want %v", got.Files, m.Files)
			}
			for name, want := range wantLinks {
				if target, err := os.Readlink(filepath.Join(dst, name)); err != nil || target != want {
					t.Errorf("Readlink(%s): got %q, %v, want %q", name, target, err, want)
				}
			}
			for _, name := range []string{"llama-addon.node", "_nlcBuildMetadata.json", "package.json"} {
				checkAbsent(t, filepath.Join(dst, name))
			}
			if !slices.Equal(got.Backends, tt.wantBackends) {
				t.Errorf("Backends: got %v, want %v", got.Backends, tt.wantBackends)
			}
			checkClean(t, parent, dst)
		})
	}
}

func TestPrepareVersion(t *testing.T) {
	t.Parallel()
	plainLibs := []entry{
		{name: "libllama.so", body: fakeELF(elf.EM_X86_64)},
		{name: "libggml.so", body: "ggml"},
		{name: "libggml-base.so", body: "base"},
		{name: "libggml-cpu-x64.so", body: "cpu"},
	}
	tests := []struct {
		name    string
		libs    []entry
		opt     bundle.Options
		want    string
		wantErr string
	}{
		{
			name: "from metadata",
			libs: append(without(cpuLibs(), "_nlcBuildMetadata.json"),
				entry{name: "_nlcBuildMetadata.json", body: `{"buildOptions":{"llamaCpp":{"release":"b7000"}}}`}),
			want: "b7000",
		},
		{name: "from file name", libs: without(cpuLibs(), "_nlcBuildMetadata.json"), want: "v0.5.0"},
		{name: "override", libs: cpuLibs(), opt: bundle.Options{Version: "b1234"}, want: "b1234"},
		{name: "override plain names", libs: plainLibs, opt: bundle.Options{Version: "b1234"}, want: "b1234"},
		{name: "missing", libs: plainLibs, wantErr: "cannot tell the llama.cpp version"},
		{
			name:    "bad metadata",
			libs:    append(without(cpuLibs(), "_nlcBuildMetadata.json"), entry{name: "_nlcBuildMetadata.json", body: "{"}),
			wantErr: "_nlcBuildMetadata.json",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := writeDir(t, t.TempDir(), tt.libs)
			parent := t.TempDir()
			dst := filepath.Join(parent, "engine")
			m, err := bundle.Prepare(t.Context(), src, dst, tt.opt)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Prepare: got error %v, want one containing %q", err, tt.wantErr)
				}
				checkAbsent(t, dst)
				checkClean(t, parent, dst)
				return
			}
			if err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			if m.Version != tt.want {
				t.Errorf("version: got %q, want %q", m.Version, tt.want)
			}
		})
	}
}

func TestPreparePlatform(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		libllama  string
		opt       bundle.Options
		wantOS    string
		wantArch  string
		wantError string
	}{
		{name: "x86-64", libllama: fakeELF(elf.EM_X86_64), wantOS: "linux", wantArch: "amd64"},
		{name: "aarch64", libllama: fakeELF(elf.EM_AARCH64), wantOS: "linux", wantArch: "arm64"},
		{name: "arch override", libllama: fakeELF(elf.EM_X86_64), opt: bundle.Options{Arch: "arm64"}, wantOS: "linux", wantArch: "arm64"},
		{name: "no header, override", libllama: "junk", opt: bundle.Options{OS: "linux", Arch: "riscv64"}, wantOS: "linux", wantArch: "riscv64"},
		{name: "no header", libllama: "junk", wantError: "cannot tell which OS and CPU it is built for"},
		{name: "unknown machine", libllama: fakeELF(elf.EM_SPARCV9), wantError: "unknown ELF machine"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			libs := append(without(cpuLibs(), "libllama.v0.5.0.so"), entry{name: "libllama.v0.5.0.so", body: tt.libllama})
			src := writeDir(t, t.TempDir(), libs)
			dst := filepath.Join(t.TempDir(), "engine")
			m, err := bundle.Prepare(t.Context(), src, dst, tt.opt)
			if tt.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantError) {
					t.Fatalf("Prepare: got error %v, want one containing %q", err, tt.wantError)
				}
				checkAbsent(t, dst)
				return
			}
			if err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			if m.OS != tt.wantOS || m.Arch != tt.wantArch {
				t.Errorf("platform: got %s/%s, want %s/%s", m.OS, m.Arch, tt.wantOS, tt.wantArch)
			}
		})
	}
}

// A CMake build: versioned files behind chains of links, and a library
// linked from elsewhere on the disk.
func TestPrepareLinkedSource(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeDir(t, dir, []entry{
		{name: "other/libggml-base.so.real", body: "base"},
		{name: "bin/libllama.so.0.0.7000", body: fakeELF(elf.EM_X86_64)},
		{name: "bin/libllama.so.0", link: "libllama.so.0.0.7000"},
		{name: "bin/libllama.so", link: "libllama.so.0"},
		{name: "bin/libggml.so", body: "ggml"},
		{name: "bin/libggml-base.so", link: "../other/libggml-base.so.real"},
		{name: "bin/libggml-cpu.so", body: "cpu"},
		{name: "bin/llama-cli", body: "binary"},
	})
	dst := filepath.Join(t.TempDir(), "engine")
	m, err := bundle.Prepare(t.Context(), filepath.Join(dir, "bin"), dst, bundle.Options{Version: "b7000"})
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	wantFiles := []string{"libggml-base.so", "libggml-cpu.so", "libggml.so", "libllama.so.0.0.7000"}
	if got := fileNames(m); !slices.Equal(got, wantFiles) {
		t.Errorf("files: got %v, want %v", got, wantFiles)
	}
	wantLinks := map[string]string{"libllama.so": "libllama.so.0.0.7000", "libllama.so.0": "libllama.so.0.0.7000"}
	if !reflect.DeepEqual(m.Links, wantLinks) {
		t.Errorf("links: got %v, want %v", m.Links, wantLinks)
	}
	if _, err := bundle.Validate(dst); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestPrepareRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		src     func(t *testing.T, dir string) string
		opt     bundle.Options
		wantErr string
	}{
		{
			name: "tgz parent path",
			src: func(t *testing.T, dir string) string {
				return writeTgz(t, filepath.Join(dir, "a.tgz"), append(npmPackage(cpuLibs()), entry{name: "../evil.so", body: "x"}))
			},
			wantErr: "unsafe path",
		},
		{
			name: "tgz deep parent path",
			src: func(t *testing.T, dir string) string {
				return writeTgz(t, filepath.Join(dir, "a.tgz"), append(npmPackage(cpuLibs()), entry{name: "package/../../../evil.so", body: "x"}))
			},
			wantErr: "unsafe path",
		},
		{
			name: "tgz absolute path",
			src: func(t *testing.T, dir string) string {
				return writeTgz(t, filepath.Join(dir, "a.tgz"), append(npmPackage(cpuLibs()), entry{name: "/tmp/evil.so", body: "x"}))
			},
			wantErr: "unsafe path",
		},
		{
			name: "tgz link out",
			src: func(t *testing.T, dir string) string {
				return writeTgz(t, filepath.Join(dir, "a.tgz"), append(npmPackage(cpuLibs()),
					entry{name: "package/bins/linux-x64/libggml-cpu-zen4.so", link: "../../../../evil.so"}))
			},
			wantErr: "unsafe link",
		},
		{
			name: "tgz absolute link",
			src: func(t *testing.T, dir string) string {
				return writeTgz(t, filepath.Join(dir, "a.tgz"), append(npmPackage(cpuLibs()),
					entry{name: "package/bins/linux-x64/libggml-cpu-zen4.so", link: "/etc/passwd"}))
			},
			wantErr: "unsafe link",
		},
		{
			// Each link looks local on its own; together they lead out.
			name: "tgz write through links",
			src: func(t *testing.T, dir string) string {
				return writeTgz(t, filepath.Join(dir, "a.tgz"), append(npmPackage(cpuLibs()),
					entry{name: "package/up", link: ".."},
					entry{name: "package/up/up", link: ".."},
					entry{name: "package/up/up/evil.so", body: "x"}))
			},
			wantErr: "escapes",
		},
		{
			name: "zip parent path",
			src: func(t *testing.T, dir string) string {
				return writeZip(t, filepath.Join(dir, "a.zip"), append(npmPackage(cpuLibs()), entry{name: "../evil.so", body: "x"}))
			},
			wantErr: "unsafe path",
		},
		{
			name: "zip link out",
			src: func(t *testing.T, dir string) string {
				return writeZip(t, filepath.Join(dir, "a.zip"), append(npmPackage(cpuLibs()),
					entry{name: "package/bins/linux-x64/libggml-cpu-zen4.so", link: "../../../../evil.so"}))
			},
			wantErr: "unsafe link",
		},
		{
			name: "tgz too big",
			src: func(t *testing.T, dir string) string {
				return writeTgz(t, filepath.Join(dir, "a.tgz"), npmPackage(cpuLibs()))
			},
			opt:     bundle.Options{MaxBytes: 100},
			wantErr: "Options.MaxBytes",
		},
		{
			name: "zip too big",
			src: func(t *testing.T, dir string) string {
				return writeZip(t, filepath.Join(dir, "a.zip"), npmPackage(cpuLibs()))
			},
			opt:     bundle.Options{MaxBytes: 100},
			wantErr: "Options.MaxBytes",
		},
		{
			name: "not an archive",
			src: func(t *testing.T, dir string) string {
				name := filepath.Join(dir, "a.tgz")
				if err := os.WriteFile(name, []byte("hello"), 0o644); err != nil {
					t.Fatal(err)
				}
				return name
			},
			wantErr: "not a .tgz",
		},
		{
			name: "no libllama",
			src: func(t *testing.T, dir string) string {
				return writeTgz(t, filepath.Join(dir, "a.tgz"), npmPackage(without(cpuLibs(), "libllama.v0.5.0.so")))
			},
			wantErr: "no libllama",
		},
		{
			name: "no backend",
			src: func(t *testing.T, dir string) string {
				return writeDir(t, dir, without(cpuLibs(), "libggml-cpu-x64.so", "libggml-cpu-haswell.so"))
			},
			wantErr: "no ggml backend",
		},
		{
			name: "no libggml-base",
			src: func(t *testing.T, dir string) string {
				return writeDir(t, dir, without(cpuLibs(), "libggml-base.so"))
			},
			wantErr: "no libggml-base.so",
		},
		{
			name: "two versions",
			src: func(t *testing.T, dir string) string {
				return writeDir(t, dir, append(cpuLibs(), entry{name: "libllama.v0.4.0.so", body: "old"}))
			},
			wantErr: "keep one version",
		},
		{
			name: "several library directories",
			src: func(t *testing.T, dir string) string {
				return writeDir(t, dir, append(under("a/", cpuLibs()), under("b/", cpuLibs())...))
			},
			wantErr: "several directories",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			base := t.TempDir()
			if err := os.Mkdir(filepath.Join(base, "src"), 0o755); err != nil {
				t.Fatal(err)
			}
			src := tt.src(t, filepath.Join(base, "src"))
			parent := filepath.Join(base, "out", "engines")
			dst := filepath.Join(parent, "engine")
			_, err := bundle.Prepare(t.Context(), src, dst, tt.opt)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Prepare: got error %v, want one containing %q", err, tt.wantErr)
			}
			t.Log(err)
			if !strings.HasPrefix(err.Error(), "prepare bundle: ") {
				t.Errorf("error: got %q, want it to start with %q", err, "prepare bundle: ")
			}
			checkAbsent(t, dst)
			checkClean(t, parent, dst)
			err = filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
				if err == nil && strings.Contains(d.Name(), "evil") {
					t.Errorf("extracted outside: %s", p)
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestPrepareReplace(t *testing.T) {
	t.Parallel()
	cuda := append(cpuLibs(), entry{name: "libggml-cuda.so", body: "cuda"})
	tests := []struct {
		name    string
		before  func(t *testing.T, dst string)
		wantErr string
	}{
		{
			name: "bundle",
			before: func(t *testing.T, dst string) {
				src := writeDir(t, t.TempDir(), cuda)
				if _, err := bundle.Prepare(t.Context(), src, dst, bundle.Options{Version: "v0.4.0"}); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "broken bundle",
			before: func(t *testing.T, dst string) {
				writeDir(t, dst, []entry{{name: bundle.ManifestName, body: "{"}, {name: "libggml-cuda.so", body: "x"}})
			},
		},
		{
			name:   "empty directory",
			before: func(t *testing.T, dst string) { writeDir(t, dst, []entry{{name: ".", dir: true}}) },
		},
		{
			name:    "other directory",
			before:  func(t *testing.T, dst string) { writeDir(t, dst, []entry{{name: "notes.txt", body: "mine"}}) },
			wantErr: "not an engine bundle",
		},
		{
			name: "file",
			before: func(t *testing.T, dst string) {
				writeDir(t, filepath.Dir(dst), []entry{{name: filepath.Base(dst), body: "mine"}})
			},
			wantErr: "not an engine bundle",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			parent := t.TempDir()
			dst := filepath.Join(parent, "engine")
			tt.before(t, dst)
			src := writeTgz(t, filepath.Join(t.TempDir(), "a.tgz"), npmPackage(cpuLibs()))

			m, err := bundle.Prepare(t.Context(), src, dst, bundle.Options{})
			checkClean(t, parent, dst)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Prepare: got error %v, want one containing %q", err, tt.wantErr)
				}
				if _, err := os.Lstat(dst); err != nil {
					t.Errorf("dst: got %v, want it left alone", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			got, err := bundle.Validate(dst)
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if got.Version != "v0.5.0" || !slices.Equal(got.Backends, []string{"cpu"}) || !reflect.DeepEqual(got.Files, m.Files) {
				t.Errorf("bundle: got %s %v %v, want v0.5.0 [cpu] %v", got.Version, got.Backends, fileNames(got), fileNames(m))
			}
			checkAbsent(t, filepath.Join(dst, "libggml-cuda.so"))
		})
	}
}

// countdownCtx is cancelled from its n+1st Err call on, to end Prepare at
// every point where it looks.
type countdownCtx struct {
	context.Context
	n atomic.Int64
}

func (c *countdownCtx) Err() error {
	if c.n.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

func TestPrepareCancel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		src  func(t *testing.T, dir string) string
	}{
		{name: "dir", src: func(t *testing.T, dir string) string { return writeDir(t, dir, npmPackage(cpuLibs())) }},
		{name: "tgz", src: func(t *testing.T, dir string) string {
			return writeTgz(t, filepath.Join(dir, "a.tgz"), npmPackage(cpuLibs()))
		}},
		{name: "zip", src: func(t *testing.T, dir string) string {
			return writeZip(t, filepath.Join(dir, "a.zip"), npmPackage(cpuLibs()))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := tt.src(t, t.TempDir())
			parent := t.TempDir()
			dst := filepath.Join(parent, "engine")
			for n := int64(0); ; n++ {
				if n > 10_000 {
					t.Fatal("Prepare never finished")
				}
				ctx := &countdownCtx{Context: t.Context()}
				ctx.n.Store(n)
				_, err := bundle.Prepare(ctx, src, dst, bundle.Options{})
				if err == nil {
					if n == 0 {
						t.Fatal("Prepare with a cancelled context: got no error")
					}
					if _, err := bundle.Validate(dst); err != nil {
						t.Errorf("Validate: %v", err)
					}
					t.Logf("cancelled at each of %d points", n)
					break
				}
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("cancelled after %d checks: got %v, want context.Canceled", n, err)
				}
				checkAbsent(t, dst)
				checkClean(t, parent, dst)
			}
		})
	}
}

func TestBackends(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		files []string
		want  []string
	}{
		{name: "cpu only", files: []string{"libllama.so", "libggml.so", "libggml-base.so", "libggml-cpu-x64.so", "libggml-cpu-haswell.so"}, want: []string{"cpu"}},
		{name: "plain cpu", files: []string{"libggml-cpu.so"}, want: []string{"cpu"}},
		{name: "cpu and cuda", files: []string{"libggml-base.so", "libggml-cpu-x64.so", "libggml-cuda.so"}, want: []string{"cpu", "cuda"}},
		{
			name:  "many",
			files: []string{"libggml-vulkan.so", "libggml-metal.dylib", "libggml-hip.so", "libggml-sycl.so", "libggml-blas.so", "libggml-rpc.so"},
			want:  []string{"blas", "hip", "metal", "rpc", "sycl", "vulkan"},
		},
		{name: "none", files: []string{"libggml-base.so", "libggml.so", "libggml-cudart.so", "ggml-cuda.so", "libggml-cuda.node"}, want: []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := bundle.BackendsOf(tt.files)
			if !slices.Equal(got, tt.want) || got == nil {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

// prepared returns a fresh bundle made from cpuLibs.
func prepared(t testing.TB) string {
	t.Helper()
	src := writeDir(t, t.TempDir(), cpuLibs())
	dst := filepath.Join(t.TempDir(), "engine")
	if _, err := bundle.Prepare(context.Background(), src, dst, bundle.Options{}); err != nil {
		t.Fatal(err)
	}
	return dst
}

func editManifest(t *testing.T, dir string, edit func(m *bundle.Manifest)) {
	t.Helper()
	name := filepath.Join(dir, bundle.ManifestName)
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	var m bundle.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	edit(&m)
	if data, err = json.Marshal(&m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		damage    func(t *testing.T, dir string)
		want      error  // from Validate
		wantMsg   string // in Validate's error
		quickPass bool   // whether Quick misses the damage
	}{
		{name: "intact", damage: func(*testing.T, string) {}, quickPass: true},
		{
			name: "changed byte",
			damage: func(t *testing.T, dir string) {
				writeDir(t, dir, []entry{{name: "libggml-base.so", body: "ggml bas3"}})
			},
			want:      bundle.ErrCorrupt,
			wantMsg:   "libggml-base.so: sha256 mismatch (want ",
			quickPass: true,
		},
		{
			name:    "truncated",
			damage:  func(t *testing.T, dir string) { writeDir(t, dir, []entry{{name: "libggml-base.so", body: "ggml"}}) },
			want:    bundle.ErrCorrupt,
			wantMsg: "libggml-base.so: size 4, want 9; reinstall the bundle",
		},
		{
			name: "missing file",
			damage: func(t *testing.T, dir string) {
				if err := os.Remove(filepath.Join(dir, "libggml-cpu-x64.so")); err != nil {
					t.Fatal(err)
				}
			},
			want:    bundle.ErrCorrupt,
			wantMsg: "libggml-cpu-x64.so: missing; reinstall the bundle",
		},
		{
			name: "missing link",
			damage: func(t *testing.T, dir string) {
				if err := os.Remove(filepath.Join(dir, "libllama.so")); err != nil {
					t.Fatal(err)
				}
			},
			want:    bundle.ErrCorrupt,
			wantMsg: "libllama.so: missing link to libllama.v0.5.0.so",
		},
		{
			name: "link retargeted",
			damage: func(t *testing.T, dir string) {
				p := filepath.Join(dir, "libllama.so")
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink("/usr/lib/libllama.so", p); err != nil {
					t.Fatal(err)
				}
			},
			want:    bundle.ErrCorrupt,
			wantMsg: "libllama.so: links to /usr/lib/libllama.so, want libllama.v0.5.0.so",
		},
		{
			name:    "unlisted library",
			damage:  func(t *testing.T, dir string) { writeDir(t, dir, []entry{{name: "libggml-cuda.so", body: "x"}}) },
			want:    bundle.ErrCorrupt,
			wantMsg: "libggml-cuda.so: not listed in rbee-bundle.json",
		},
		{
			name: "manifest lacks libggml-base",
			damage: func(t *testing.T, dir string) {
				editManifest(t, dir, func(m *bundle.Manifest) {
					m.Files = slices.DeleteFunc(m.Files, func(f bundle.File) bool { return f.Name == "libggml-base.so" })
				})
			},
			want:      bundle.ErrCorrupt,
			wantMsg:   "no libggml-base.so",
			quickPass: true,
		},
		{
			name: "manifest link outside",
			damage: func(t *testing.T, dir string) {
				editManifest(t, dir, func(m *bundle.Manifest) { m.Links["libllama.so"] = "../libllama.so" })
			},
			want:      bundle.ErrCorrupt,
			wantMsg:   "not a file of the bundle",
			quickPass: true,
		},
		{
			name: "bad manifest",
			damage: func(t *testing.T, dir string) {
				writeDir(t, dir, []entry{{name: bundle.ManifestName, body: "{"}})
			},
			want:      bundle.ErrCorrupt,
			wantMsg:   "rbee-bundle.json: unexpected end of JSON input",
			quickPass: true,
		},
		{
			name: "missing manifest",
			damage: func(t *testing.T, dir string) {
				if err := os.Remove(filepath.Join(dir, bundle.ManifestName)); err != nil {
					t.Fatal(err)
				}
			},
			want:      bundle.ErrNotBundle,
			wantMsg:   "no rbee-bundle.json",
			quickPass: true,
		},
		{
			name: "missing directory",
			damage: func(t *testing.T, dir string) {
				if err := os.RemoveAll(dir); err != nil {
					t.Fatal(err)
				}
			},
			want:    bundle.ErrNotBundle,
			wantMsg: "no rbee-bundle.json",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := prepared(t)
			m, err := bundle.Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			tt.damage(t, dir)

			_, err = bundle.Validate(dir)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Validate: got %v, want %v", err, tt.want)
			}
			if err != nil {
				if !strings.Contains(err.Error(), tt.wantMsg) || !strings.HasPrefix(err.Error(), "bundle "+dir+": ") {
					t.Errorf("Validate: got %q, want %q after %q", err, tt.wantMsg, "bundle "+dir+": ")
				}
			}
			// Check, given the directory as a host's listing reports it,
			// judges as Validate does.
			if manifest, entries, ok := listing(t, dir); ok {
				_, cerr := bundle.Check(dir, manifest, entries)
				if fmt.Sprint(cerr) != fmt.Sprint(err) {
					t.Errorf("Check: got %v, want what Validate said: %v", cerr, err)
				}
			}
			// Quick works from the manifest read before the damage, as a
			// worker that loaded it at start would.
			err = m.Quick(dir)
			if got := err == nil; got != tt.quickPass {
				t.Errorf("Quick: got %v, want passing %v", err, tt.quickPass)
			}
			if err != nil && !errors.Is(err, bundle.ErrCorrupt) {
				t.Errorf("Quick: got %v, want ErrCorrupt", err)
			}
		})
	}
}

// listing reads dir as rbee doctor's probe reports a host's bundle: the
// manifest's bytes and every entry, with the SHA-256 of each regular file.
// ok is false without a manifest.
func listing(t *testing.T, dir string) (manifest []byte, entries []bundle.Entry, ok bool) {
	t.Helper()
	manifest, err := os.ReadFile(filepath.Join(dir, bundle.ManifestName))
	if err != nil {
		return nil, nil, false
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		p := filepath.Join(dir, de.Name())
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		e := bundle.Entry{Name: de.Name(), Mode: fi.Mode(), Size: fi.Size()}
		if fi.Mode()&fs.ModeSymlink != 0 {
			e.Link, _ = os.Readlink(p)
		} else if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(b)
			e.SHA256 = hex.EncodeToString(sum[:])
		}
		entries = append(entries, e)
	}
	return manifest, entries, true
}

// TestPrepareNPM prepares node-llama-cpp's real package when
// RBEE_TEST_NPM_TGZ names a copy of it.
func TestPrepareNPM(t *testing.T) {
	t.Parallel()
	tgz := os.Getenv("RBEE_TEST_NPM_TGZ")
	if tgz == "" {
		t.Skip("set RBEE_TEST_NPM_TGZ to node-llama-cpp's linux-x64 .tgz")
	}
	dst := filepath.Join(t.TempDir(), "llama-cpu")
	m, err := bundle.Prepare(t.Context(), tgz, dst, bundle.Options{})
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	if m.Version != "v0.5.0" || !slices.Equal(m.Backends, []string{"cpu"}) || m.OS != "linux" || m.Arch != "amd64" {
		t.Errorf("got %s %v %s/%s, want v0.5.0 [cpu] linux/amd64", m.Version, m.Backends, m.OS, m.Arch)
	}
	for name, want := range cpuLinks {
		if got, err := os.Readlink(filepath.Join(dst, name)); err != nil || got != want {
			t.Errorf("Readlink(%s): got %q, %v, want %q", name, got, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dst, "LICENSE")); err != nil {
		t.Errorf("LICENSE: %v", err)
	}
	if _, err := bundle.Validate(dst); err != nil {
		t.Errorf("Validate: %v", err)
	}
	t.Logf("%d files, links %v", len(m.Files), m.Links)
}

// benchBundle prepares a bundle the size of the npm CPU one (30 MB).
func benchBundle(b *testing.B) (dir string, size int64) {
	rng := rand.NewChaCha8([32]byte{})
	big := func(n int) string {
		buf := make([]byte, n)
		rng.Read(buf)
		return string(buf)
	}
	libs := []entry{
		{name: "libllama.v0.5.0.so", body: fakeELF(elf.EM_X86_64) + big(7<<20)},
		{name: "libggml.v0.5.0.so", body: big(64 << 10)},
		{name: "libggml-base.so", body: big(1 << 20)},
		{name: "libllama-common.so", body: big(6 << 20)},
	}
	for _, cpu := range []string{"alderlake", "haswell", "icelake", "sandybridge", "skylakex", "sse42", "x64", "zen4"} {
		libs = append(libs, entry{name: "libggml-cpu-" + cpu + ".so", body: big(2 << 20)})
	}
	src := writeDir(b, b.TempDir(), libs)
	dst := filepath.Join(b.TempDir(), "engine")
	m, err := bundle.Prepare(b.Context(), src, dst, bundle.Options{Version: "v0.5.0"})
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range m.Files {
		size += f.Size
	}
	return dst, size
}

func BenchmarkValidate(b *testing.B) {
	dst, size := benchBundle(b)
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		if _, err := bundle.Validate(dst); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkValidateOnce: the queen's check of a bundle it pushes to many
// hosts, after the first.
func BenchmarkValidateOnce(b *testing.B) {
	dst, size := benchBundle(b)
	b.SetBytes(size)
	if _, err := bundle.ValidateOnce(dst); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := bundle.ValidateOnce(dst); err != nil {
			b.Fatal(err)
		}
	}
}
