package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha512"
	"debug/elf"
	"encoding/binary"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// fakeTarball returns a small npm-style engine tarball.
func fakeTarball(t *testing.T) []byte {
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

func TestRun(t *testing.T) {
	tgz := fakeTarball(t)
	sum := sha512.Sum512(tgz)
	integrity := formatIntegrity(sum[:])
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path != "/@node-llama-cpp/linux-x64/-/linux-x64-3.22.1.tgz" {
			http.NotFound(w, r)
			return
		}
		w.Write(tgz)
	}))
	t.Cleanup(srv.Close)
	t.Setenv("NPM_CONFIG_REGISTRY", srv.URL+"/")
	tarball := defaultTarball()
	if want := srv.URL + "/" + tarballPath; tarball != want {
		t.Fatalf("defaultTarball: got %s, want %s", tarball, want)
	}

	dir := t.TempDir()
	out := filepath.Join(dir, "engine")
	cache := filepath.Join(dir, "cache")
	cached := filepath.Join(cache, "node-llama-cpp-linux-x64-3.22.1.tgz")
	args := []string{"-out", out, "-cache", cache, "-integrity", integrity}
	wantOut := out + " v0.5.0 cpu\n"

	tests := []struct {
		name       string
		args       []string
		before     func(t *testing.T)
		wantHits   int64
		wantLog    string
		wantErr    string
		wantStdout string
	}{
		{name: "first", args: args, wantHits: 1, wantLog: "downloading " + tarball, wantStdout: wantOut},
		{name: "again", args: args, wantHits: 0, wantLog: "is up to date", wantStdout: wantOut},
		{
			name:       "bundle gone",
			args:       args,
			before:     func(t *testing.T) { os.RemoveAll(out) },
			wantHits:   0,
			wantLog:    "using cached " + cached,
			wantStdout: wantOut,
		},
		{
			name:       "cache damaged",
			args:       args,
			before:     func(t *testing.T) { os.RemoveAll(out); os.WriteFile(cached, []byte("junk"), 0o644) },
			wantHits:   1,
			wantLog:    "integrity mismatch",
			wantStdout: wantOut,
		},
		{
			name:     "wrong integrity",
			args:     []string{"-out", filepath.Join(dir, "other"), "-cache", filepath.Join(dir, "cache2")},
			wantHits: 1,
			wantErr:  "integrity mismatch: got " + integrity + ", want " + pinnedIntegrity,
		},
		{
			name:     "not found",
			args:     []string{"-out", filepath.Join(dir, "other"), "-cache", cache, "-tarball", srv.URL + "/nope.tgz"},
			wantHits: 1,
			wantErr:  "404 Not Found",
		},
		{
			name:       "local path",
			args:       []string{"-out", filepath.Join(dir, "local"), "-tarball", cached, "-integrity", integrity},
			wantHits:   0,
			wantLog:    "using " + cached + " (integrity ok)",
			wantStdout: filepath.Join(dir, "local") + " v0.5.0 cpu\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.before != nil {
				tt.before(t)
			}
			hits.Store(0)
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), tt.args, &stdout, &stderr)
			t.Logf("stderr:\n%s", stderr.String())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("run: got %v, want an error containing %q", err, tt.wantErr)
				}
				if _, err := os.Stat(filepath.Join(dir, "other")); err == nil {
					t.Errorf("bundle prepared despite the error")
				}
			} else if err != nil {
				t.Fatalf("run: %v", err)
			}
			if got := hits.Load(); got != tt.wantHits {
				t.Errorf("downloads: got %d, want %d", got, tt.wantHits)
			}
			if !strings.Contains(stderr.String(), tt.wantLog) {
				t.Errorf("stderr: got %q, want it to contain %q", stderr.String(), tt.wantLog)
			}
			if got := stdout.String(); got != tt.wantStdout {
				t.Errorf("stdout: got %q, want %q", got, tt.wantStdout)
			}
		})
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "cache2")); len(entries) != 0 {
		t.Errorf("cache after a mismatch: got %d entries, want none", len(entries))
	}
}
