// Package npmtest is a stand-in npm registry for tests: it serves engine
// tarballs at their registry paths (a small fake one, or a real cached
// one), so that fetching an engine needs no network.
package npmtest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha512"
	"debug/elf"
	"encoding/binary"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/enginefetch"
)

// Tarball returns a small tarball laid out like node-llama-cpp's linux-x64
// package (a libllama with a real ELF header, ggml and a CPU backend) that
// bundle.Prepare accepts: a llama.cpp v0.5.0 bundle for linux/amd64 with
// the cpu backend. It loads nothing.
func Tarball(t testing.TB) []byte {
	t.Helper()
	var elfHdr bytes.Buffer
	hdr := elf.Header64{Type: uint16(elf.ET_DYN), Machine: uint16(elf.EM_X86_64), Version: 1, Ehsize: 64}
	copy(hdr.Ident[:], []byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), 1})
	if err := binary.Write(&elfHdr, binary.LittleEndian, hdr); err != nil {
		t.Fatal(err)
	}
	files := []struct{ name, body string }{
		{"package/LICENSE", "MIT"},
		{"package/bins/linux-x64/_nlcBuildMetadata.json", `{"buildOptions":{"llamaCpp":{"release":"v0.5.0"}}}`},
		{"package/bins/linux-x64/libllama.v0.5.0.so", elfHdr.String()},
		{"package/bins/linux-x64/libggml.v0.5.0.so", "ggml"},
		{"package/bins/linux-x64/libggml-base.so", "base"},
		{"package/bins/linux-x64/libggml-cpu-x64.so", "cpu"},
	}
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(f.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Integrity is npm's integrity string of b.
func Integrity(b []byte) string {
	sum := sha512.Sum512(b)
	return enginefetch.FormatIntegrity(sum[:])
}

// Registry is a running stand-in registry.
type Registry struct {
	URL  string // give it as RBEE_NPM_REGISTRY or Options.Registry
	hits atomic.Int64
}

// Hits is the number of tarball requests served so far (404s included).
func (r *Registry) Hits() int64 { return r.hits.Load() }

// Reset sets Hits back to zero.
func (r *Registry) Reset() { r.hits.Store(0) }

// NewRegistry serves each package's tarball at its TarballPath until the
// test ends; anything else is 404.
func NewRegistry(t testing.TB, tarballs map[enginefetch.Package][]byte) *Registry {
	t.Helper()
	r := &Registry{}
	byPath := map[string][]byte{}
	for p, b := range tarballs {
		byPath["/"+p.TarballPath()] = b
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.hits.Add(1)
		b, ok := byPath[req.URL.Path]
		if !ok {
			http.NotFound(w, req)
			return
		}
		http.ServeContent(w, req, "", time.Time{}, bytes.NewReader(b))
	}))
	t.Cleanup(srv.Close)
	r.URL = srv.URL + "/"
	return r
}
