package bundle

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// ManifestName is the manifest's file name inside a bundle.
const ManifestName = "rbee-bundle.json"

// Format is the manifest format this package writes and reads. It only goes
// up, when a reader of the old format would misread the new one.
//
//	1 (2026-11-27): first format.
const Format = 1

// Engine is the engine every bundle holds today.
const Engine = "llama.cpp"

var (
	// ErrNotBundle reports a directory without a manifest.
	ErrNotBundle = errors.New("not an engine bundle")
	// ErrCorrupt reports a bundle whose files do not match its manifest.
	ErrCorrupt = errors.New("engine bundle is corrupt")
)

// Manifest describes a prepared bundle. It lives in the bundle as
// ManifestName.
type Manifest struct {
	Format   int               `json:"format"`
	Engine   string            `json:"engine"`
	Version  string            `json:"version"` // llama.cpp release, e.g. "v0.5.0"
	OS       string            `json:"os"`      // GOOS style: linux, darwin
	Arch     string            `json:"arch"`    // GOARCH style: amd64, arm64
	Backends []string          `json:"backends"`
	Files    []File            `json:"files"` // every regular file but the manifest, sorted by name
	Links    map[string]string `json:"links"` // plain name → file it points to
	// Omitted are the files of the bundle this one was cut from that it
	// leaves out: CPU variant libraries the host it was shipped to cannot
	// run or does not need (see Partial). Empty for a whole bundle.
	Omitted []File    `json:"omitted,omitempty"`
	Source  string    `json:"source"`
	Created time.Time `json:"created"`
}

// File is one regular file of a bundle.
type File struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Mode is the permission a bundle gives the file: executable for the
// programs it ships (Tools), read-only for everyone else.
func (f File) Mode() fs.FileMode {
	if IsTool(f.Name) {
		return 0o755
	}
	return 0o644
}

// Tools are the programs a bundle may ship beside its libraries, built
// from the same llama.cpp release: rpc-server serves the bundle's devices
// to another host's worker over llama.cpp's RPC protocol (libggml-rpc).
var Tools = []string{RPCServer}

// RPCServer is llama.cpp's RPC server, run from the bundle directory:
// rpc-server -H 127.0.0.1 -p PORT [-c] [-t THREADS].
const RPCServer = "rpc-server"

// IsTool reports whether name is one of the programs a bundle may ship.
func IsTool(name string) bool { return slices.Contains(Tools, name) }

// bundleError carries a message for people and a sentinel for code.
type bundleError struct {
	msg  string
	kind error
}

func (e *bundleError) Error() string { return e.msg }
func (e *bundleError) Unwrap() error { return e.kind }

func corrupt(dir, format string, args ...any) error {
	return &bundleError{msg: "bundle " + dir + ": " + fmt.Sprintf(format, args...), kind: ErrCorrupt}
}

// Load reads and checks the manifest of the bundle in dir without looking at
// the other files; follow it with Quick or use Validate.
func Load(dir string) (*Manifest, error) {
	data, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &bundleError{
			msg:  fmt.Sprintf("bundle %s: no %s; it is not a prepared engine bundle, prepare it again", dir, ManifestName),
			kind: ErrNotBundle,
		}
	}
	if err != nil {
		return nil, fmt.Errorf("load bundle %s: %w", dir, err)
	}
	return parse(dir, data)
}

// parse reads and checks a manifest, the content of dir's ManifestName.
func parse(dir string, data []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, corrupt(dir, "%s: %v; reinstall the bundle", ManifestName, err)
	}
	if m.Format != Format {
		return nil, fmt.Errorf("bundle %s: manifest format %d, this rbee reads format %d; prepare the bundle again with this rbee", dir, m.Format, Format)
	}
	if err := m.check(); err != nil {
		return nil, corrupt(dir, "%s: %v; reinstall the bundle", ManifestName, err)
	}
	return &m, nil
}

// Validate checks the bundle in dir against its manifest: every file present
// with its size and SHA-256, every link in place, nothing unlisted that ggml
// could load. Errors wrap ErrNotBundle or ErrCorrupt and say what to do.
func Validate(dir string) (*Manifest, error) {
	m, err := Load(dir)
	if err != nil {
		return nil, err
	}
	entries, err := readEntries(dir, m, true)
	if err != nil {
		return nil, err
	}
	if err := m.compare(dir, entries, true); err != nil {
		return nil, err
	}
	return m, nil
}

// Entry is one name in a bundle's directory as a check sees it: read on
// this machine (Quick, Validate), or listed on another (rbee doctor's probe
// of a host).
type Entry struct {
	Name   string
	Mode   fs.FileMode // type and permission bits, as lstat gives them
	Size   int64
	Link   string // a link's target
	SHA256 string // a regular file's content, hex; "" = not read
}

// Check checks a bundle directory given as its manifest's content and the
// entries it holds, as Validate checks one on this machine: every listed
// file present with its size and SHA-256, every link in place, nothing
// unlisted that ggml could load. dir names the bundle in messages.
func Check(dir string, manifest []byte, entries []Entry) (*Manifest, error) {
	m, err := parse(dir, manifest)
	if err != nil {
		return nil, err
	}
	byName := make(map[string]Entry, len(entries))
	for _, e := range entries {
		byName[e.Name] = e
	}
	if err := m.compare(dir, byName, true); err != nil {
		return nil, err
	}
	return m, nil
}

func hashFile(name string, buf []byte) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, buf); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Quick checks that the files of m exist in dir with their listed sizes and
// that the links are in place, without reading file contents. It is meant
// for a worker's start; Validate does the full check.
func (m *Manifest) Quick(dir string) error {
	if err := m.check(); err != nil {
		return corrupt(dir, "%s: %v; reinstall the bundle", ManifestName, err)
	}
	entries, err := readEntries(dir, m, false)
	if err != nil {
		return err
	}
	return m.compare(dir, entries, false)
}

// readEntries lists dir by name, with the SHA-256 of the files m lists
// when hash is set.
func readEntries(dir string, m *Manifest, hash bool) (map[string]Entry, error) {
	des, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) { // a directory gone lacks every file
		return nil, fmt.Errorf("check bundle %s: %w", dir, err)
	}
	listed := map[string]bool{}
	for _, f := range m.Files {
		listed[f.Name] = true
	}
	var buf []byte
	entries := make(map[string]Entry, len(des))
	for _, de := range des {
		p := filepath.Join(dir, de.Name())
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue // gone since the listing
		}
		if err != nil {
			return nil, fmt.Errorf("check bundle %s: %w", dir, err)
		}
		e := Entry{Name: de.Name(), Mode: fi.Mode(), Size: fi.Size()}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if e.Link, err = os.Readlink(p); err != nil {
				return nil, fmt.Errorf("check bundle %s: %w", dir, err)
			}
		case hash && fi.Mode().IsRegular() && listed[e.Name]:
			if buf == nil {
				buf = make([]byte, 1<<20)
			}
			if e.SHA256, err = hashFile(p, buf); err != nil {
				return nil, fmt.Errorf("validate bundle %s: %w", dir, err)
			}
		}
		entries[e.Name] = e
	}
	return entries, nil
}

// compare checks a bundle directory's entries against m, the contents
// too when hashed: the one judgement Quick, Validate and Check share.
func (m *Manifest) compare(dir string, entries map[string]Entry, hashed bool) error {
	for _, f := range m.Files {
		e, ok := entries[f.Name]
		switch {
		case !ok:
			return corrupt(dir, "%s: missing; reinstall the bundle", f.Name)
		case !e.Mode.IsRegular():
			return corrupt(dir, "%s: not a regular file; reinstall the bundle", f.Name)
		case e.Size != f.Size:
			return corrupt(dir, "%s: size %d, want %d; reinstall the bundle", f.Name, e.Size, f.Size)
		case IsTool(f.Name) && e.Mode.Perm()&0o100 == 0:
			return corrupt(dir, "%s: not executable; reinstall the bundle", f.Name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(m.Links)) {
		want := m.Links[name]
		e, ok := entries[name]
		switch {
		case !ok:
			return corrupt(dir, "%s: missing link to %s; reinstall the bundle", name, want)
		case e.Mode&fs.ModeSymlink == 0:
			return corrupt(dir, "%s: not a link to %s; reinstall the bundle", name, want)
		case e.Link != want:
			return corrupt(dir, "%s: links to %s, want %s; reinstall the bundle", name, e.Link, want)
		}
	}
	// ggml loads every backend plugin it finds beside libggml, so a library
	// the manifest does not vouch for must not sit there.
	listed := m.names()
	for _, name := range slices.Sorted(maps.Keys(entries)) {
		if isLib(name) && !listed[name] {
			return corrupt(dir, "%s: not listed in %s; remove it or reinstall the bundle", name, ManifestName)
		}
	}
	if !hashed {
		return nil
	}
	for _, f := range m.Files {
		switch sum := entries[f.Name].SHA256; {
		case sum == "":
			return fmt.Errorf("validate bundle %s: %s: its content was not read", dir, f.Name)
		case sum != f.SHA256:
			return corrupt(dir, "%s: sha256 mismatch (want %s, got %s); reinstall the bundle", f.Name, f.SHA256, sum)
		}
	}
	return nil
}

// ReinstallHint is the command that puts a good copy of the bundle m
// describes on hive: its source again, where that is a path or URL
// `rbee worker install` takes. The agent and rbee doctor both say it.
func ReinstallHint(hive string, m *Manifest) string {
	cmd := "rbee worker install --hive " + hive + " "
	if m == nil {
		return cmd + "SOURCE installs a good bundle (see rbee worker install --help)"
	}
	if filepath.IsAbs(m.Source) || strings.HasPrefix(m.Source, "https://") {
		return cmd + m.Source + " puts a good copy in place"
	}
	src := m.Source
	if src == "" {
		src = "an unnamed source"
	}
	return fmt.Sprintf("%sSOURCE puts a good copy in place (SOURCE: a directory or archive of llama.cpp %s for %s/%s; this one came from %s)",
		cmd, m.Version, m.OS, m.Arch, src)
}

// names returns the names of the files and links of m.
func (m *Manifest) names() map[string]bool {
	names := make(map[string]bool, len(m.Files)+len(m.Links))
	for _, f := range m.Files {
		names[f.Name] = true
	}
	for name := range m.Links {
		names[name] = true
	}
	return names
}

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

// check reports whether m is consistent in itself.
func (m *Manifest) check() error {
	switch {
	case m.Engine != Engine:
		return fmt.Errorf("engine %q, want %q", m.Engine, Engine)
	case m.Version == "":
		return errors.New("no version")
	case m.OS == "" || m.Arch == "":
		return errors.New("no os or arch")
	}
	files := make(map[string]bool, len(m.Files))
	for _, f := range m.Files {
		switch {
		case !plainFileName(f.Name):
			return fmt.Errorf("bad file name %q", f.Name)
		case files[f.Name]:
			return fmt.Errorf("%s listed twice", f.Name)
		case f.Size < 0:
			return fmt.Errorf("%s: negative size", f.Name)
		case !sha256Hex.MatchString(f.SHA256):
			return fmt.Errorf("%s: bad sha256 %q", f.Name, f.SHA256)
		}
		files[f.Name] = true
	}
	for name, target := range m.Links {
		switch {
		case !plainFileName(name):
			return fmt.Errorf("bad link name %q", name)
		case files[name]:
			return fmt.Errorf("%s listed as file and link", name)
		case !files[target]:
			return fmt.Errorf("link %s points to %q, which is not a file of the bundle", name, target)
		}
	}
	if err := m.checkOmitted(files); err != nil {
		return err
	}
	names := m.names()
	for _, want := range requiredLibs(m.OS) {
		if !names[want] {
			return fmt.Errorf("no %s", want)
		}
	}
	backends := backendsOf(slices.Collect(maps.Keys(names)))
	if len(backends) == 0 {
		return errors.New("no ggml backend library (libggml-cpu*, libggml-cuda, …)")
	}
	if !slices.Equal(backends, m.Backends) {
		return fmt.Errorf("backends %v, but the libraries are %v", m.Backends, backends)
	}
	return nil
}

// plainFileName reports whether name is a file directly inside the bundle.
func plainFileName(name string) bool {
	return name != "" && name != "." && name != ".." && name != ManifestName &&
		!strings.ContainsAny(name, `/\`)
}

// requiredLibs returns the names yzma opens for a bundle built for goos.
func requiredLibs(goos string) []string {
	ext := libExt(goos)
	return []string{"libllama" + ext, "libggml" + ext, "libggml-base" + ext}
}

func libExt(goos string) string {
	if goos == "darwin" {
		return ".dylib"
	}
	return ".so"
}

// knownBackends are ggml's backend plugins, libggml-<name>.
var knownBackends = []string{
	"blas", "cann", "cpu", "cuda", "hip", "metal", "musa", "opencl", "rpc", "sycl", "vulkan", "webgpu", "zdnn",
}

func backendsOf(names []string) []string {
	found := map[string]bool{}
	for _, name := range names {
		if b := backendOf(name); b != "" {
			found[b] = true
		}
	}
	out := slices.Sorted(maps.Keys(found))
	if out == nil {
		out = []string{}
	}
	return out
}

func backendOf(name string) string {
	stem := libStem(name)
	rest, ok := strings.CutPrefix(stem, "libggml-")
	if !ok {
		return ""
	}
	// CPU variants are one backend: libggml-cpu-haswell, libggml-cpu-zen4, …
	b, _, _ := strings.Cut(rest, "-")
	if slices.Contains(knownBackends, b) && (b == "cpu" || b == rest) {
		return b
	}
	return ""
}

var (
	// libllama.v0.5.0.so, libllama.v0.5.0.dylib (node-llama-cpp), and its
	// GPU packages' libllama.vulkan.v0.5.0.so, libggml.cuda.v0.5.0.so
	reDotV = regexp.MustCompile(`^(lib.+?)(?:\.(?:cuda|vulkan|metal|hip|rocm|sycl))?\.v[0-9]+(?:\.[0-9]+)*\.(so|dylib)$`)
	// libllama.so.0, libllama.so.0.0.1234 (CMake SOVERSION on Linux)
	reSOVersion = regexp.MustCompile(`^(lib.+\.so)(?:\.[0-9]+)+$`)
	// libllama.0.dylib (CMake SOVERSION on macOS)
	reDylibVersion = regexp.MustCompile(`^(lib.+?)(?:\.[0-9]+)+\.dylib$`)
)

// plainName returns the unversioned name of a shared library: libllama.so
// for libllama.v0.5.0.so or libllama.so.0; name itself when unversioned.
func plainName(name string) string {
	if m := reDotV.FindStringSubmatch(name); m != nil {
		return m[1] + "." + m[2]
	}
	if m := reSOVersion.FindStringSubmatch(name); m != nil {
		return m[1]
	}
	if m := reDylibVersion.FindStringSubmatch(name); m != nil {
		return m[1] + ".dylib"
	}
	return name
}

// libStem returns a library's name without version and extension:
// libggml-cpu-x64 for libggml-cpu-x64.so; "" when name is no library.
func libStem(name string) string {
	p := plainName(name)
	if s, ok := strings.CutSuffix(p, ".so"); ok {
		return s
	}
	if s, ok := strings.CutSuffix(p, ".dylib"); ok {
		return s
	}
	return ""
}

// isLib reports whether name is a shared library a bundle keeps.
func isLib(name string) bool { return libStem(name) != "" }

func isLibllama(name string) bool {
	p := plainName(name)
	return p == "libllama.so" || p == "libllama.dylib"
}

// isLicense reports whether name looks like a licence or notice file.
func isLicense(name string) bool {
	u := strings.ToUpper(name)
	for _, p := range []string{"LICENSE", "LICENCE", "COPYING", "NOTICE"} {
		if strings.HasPrefix(u, p) {
			return true
		}
	}
	return false
}

// Variant names a bundle by version and backends, "v0.5.0-cpu" or
// "v0.5.0-cpu-cuda": bundles of one llama.cpp version built for different
// hardware live side by side under that name. The RPC backend is left
// out: it is no hardware but a way to reach another host's, and a bundle
// that gains it replaces the one of the same hardware without it.
func Variant(m *Manifest) string {
	hw := slices.DeleteFunc(slices.Clone(m.Backends), func(b string) bool { return b == "rpc" })
	if len(hw) == 0 {
		return m.Version
	}
	return m.Version + "-" + strings.Join(hw, "-")
}
