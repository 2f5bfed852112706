package enginefetch_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/bundle"
	"github.com/rbee-dev/rbee/enginefetch"
	"github.com/rbee-dev/rbee/enginefetch/npmtest"
)

func TestPackages(t *testing.T) {
	p, ok := enginefetch.For("linux", "amd64", "")
	if !ok || p != enginefetch.LinuxAMD64 {
		t.Fatalf("For(linux, amd64, cpu): got %+v %v", p, ok)
	}
	if got, want := p.TarballPath(), "@node-llama-cpp/linux-x64/-/linux-x64-3.22.1.tgz"; got != want {
		t.Errorf("TarballPath: got %s, want %s", got, want)
	}
	if got, want := p.CacheName(), "node-llama-cpp-linux-x64-3.22.1.tgz"; got != want {
		t.Errorf("CacheName: got %s, want %s", got, want)
	}
	c, ok := enginefetch.For("linux", "amd64", "cuda")
	if !ok || c.TarballPath() != "@node-llama-cpp/linux-x64-cuda/-/linux-x64-cuda-3.22.1.tgz" {
		t.Errorf("For(linux, amd64, cuda): got %+v %v", c, ok)
	}
	if v, ok := enginefetch.For("linux", "amd64", "vulkan"); !ok || v.TarballPath() != "@node-llama-cpp/linux-x64-vulkan/-/linux-x64-vulkan-3.22.1.tgz" {
		t.Errorf("For(linux, amd64, vulkan): got %+v %v", v, ok)
	}
	if a, ok := enginefetch.For("linux", "arm64", ""); !ok || a.TarballPath() != "@node-llama-cpp/linux-arm64/-/linux-arm64-3.22.1.tgz" {
		t.Errorf("For(linux, arm64, cpu): got %+v %v", a, ok)
	}
	if _, ok := enginefetch.For("linux", "arm64", "vulkan"); ok {
		t.Error("For(linux, arm64, vulkan): got a package, want none pinned")
	}
	if _, ok := enginefetch.For("darwin", "arm64", ""); ok {
		t.Error("For(darwin, arm64): got a package, want none pinned")
	}
	t.Setenv("NPM_CONFIG_REGISTRY", "http://npm.example/")
	t.Setenv("RBEE_NPM_REGISTRY", "http://mirror.example/npm/")
	if got, want := p.TarballURL(""), "http://mirror.example/npm/"+p.TarballPath(); got != want {
		t.Errorf("TarballURL with RBEE_NPM_REGISTRY: got %s, want %s", got, want)
	}
}

func TestFetch(t *testing.T) {
	tgz := npmtest.Tarball(t)
	pkg := enginefetch.LinuxAMD64
	pkg.Integrity = npmtest.Integrity(tgz)
	reg := npmtest.NewRegistry(t, map[enginefetch.Package][]byte{pkg: tgz})
	t.Setenv("RBEE_NPM_REGISTRY", reg.URL)

	dir := t.TempDir()
	out := filepath.Join(dir, "engines", "llama-cpu")
	cache := filepath.Join(dir, "cache")
	cached := filepath.Join(cache, pkg.CacheName())
	base := enginefetch.Options{Package: pkg, Dir: out, CacheDir: cache}
	wrong := base
	wrong.Package = enginefetch.LinuxAMD64 // the real integrity: not the fake tarball's
	wrong.Dir, wrong.CacheDir = filepath.Join(dir, "other"), filepath.Join(dir, "cache2")
	missing := base
	missing.Dir, missing.Archive, missing.CacheDir = filepath.Join(dir, "other"), reg.URL+"nope.tgz", filepath.Join(dir, "cache3")
	local := base
	local.Dir, local.Archive, local.CacheDir = filepath.Join(dir, "local"), cached, ""

	tests := []struct {
		name     string
		opt      enginefetch.Options
		before   func(t *testing.T)
		wantHits int64
		wantLog  string
		wantErr  error
		errText  string
	}{
		{name: "first", opt: base, wantHits: 1, wantLog: "downloading " + reg.URL + pkg.TarballPath()},
		{name: "again", opt: base, wantHits: 0, wantLog: "is up to date"},
		{name: "bundle gone", opt: base, before: func(t *testing.T) { os.RemoveAll(out) }, wantLog: "using cached " + cached},
		{
			name:     "cache damaged",
			opt:      base,
			before:   func(t *testing.T) { os.RemoveAll(out); os.WriteFile(cached, []byte("junk"), 0o644) },
			wantHits: 1,
			wantLog:  "integrity mismatch",
		},
		{name: "wrong integrity", opt: wrong, wantHits: 1, wantErr: enginefetch.ErrIntegrity,
			errText: "got " + pkg.Integrity + ", want " + enginefetch.LinuxAMD64.Integrity},
		{name: "not found", opt: missing, wantHits: 1, errText: "404 Not Found"},
		{name: "local archive", opt: local, wantLog: "using " + cached + " (integrity ok)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.before != nil {
				tt.before(t)
			}
			reg.Reset()
			var log strings.Builder
			var last [2]int64
			calls := 0
			opt := tt.opt
			opt.Logf = func(format string, args ...any) { fmt.Fprintf(&log, format+"\n", args...) }
			opt.Progress = func(done, total int64) { calls++; last = [2]int64{done, total} }
			got, err := enginefetch.Fetch(t.Context(), opt)
			t.Logf("log:\n%s", log.String())
			if tt.wantErr != nil || tt.errText != "" {
				if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) || !strings.Contains(err.Error(), tt.errText) {
					t.Fatalf("Fetch: got %v, want an error (%v) containing %q", err, tt.wantErr, tt.errText)
				}
				if _, err := os.Stat(opt.Dir); err == nil {
					t.Errorf("bundle prepared despite the error")
				}
			} else if err != nil {
				t.Fatalf("Fetch: %v", err)
			} else {
				if got != opt.Dir {
					t.Errorf("dir: got %s, want %s", got, opt.Dir)
				}
				m, err := bundle.Validate(got)
				if err != nil {
					t.Fatal(err)
				}
				if m.Source != pkg.Source() || m.Version != "v0.5.0" {
					t.Errorf("manifest: got source %q version %q, want %q v0.5.0", m.Source, m.Version, pkg.Source())
				}
			}
			if got := reg.Hits(); got != tt.wantHits {
				t.Errorf("downloads: got %d, want %d", got, tt.wantHits)
			}
			if !strings.Contains(log.String(), tt.wantLog) {
				t.Errorf("log: got %q, want it to contain %q", log.String(), tt.wantLog)
			}
			if tt.wantHits > 0 && tt.wantErr == nil && tt.errText == "" {
				if size := int64(len(tgz)); calls == 0 || last != [2]int64{size, size} {
					t.Errorf("progress: %d calls, last %v, want the last at %d of %d", calls, last, size, size)
				}
			}
			assertNoTemp(t, dir)
		})
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "cache2")); len(entries) != 0 {
		t.Errorf("cache after a mismatch: got %d entries, want none", len(entries))
	}
}

// assertNoTemp fails when a temporary file or directory was left behind.
func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), ".tmp-") {
			t.Errorf("left behind: %s", p)
		}
		return nil
	})
}

func TestFetchFaults(t *testing.T) {
	tgz := npmtest.Tarball(t)
	pkg := enginefetch.LinuxAMD64
	pkg.Integrity = npmtest.Integrity(tgz)
	tests := []struct {
		name    string
		handler http.HandlerFunc
		max     int64
		errText string
	}{
		{name: "too big", max: 100, handler: func(w http.ResponseWriter, r *http.Request) { w.Write(tgz) }, errText: "more than"},
		{name: "cut short", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", fmt.Sprint(len(tgz)))
			w.Write(tgz[:len(tgz)/2])
		}, errText: "unexpected EOF"},
		{name: "server error", handler: func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) }, errText: "500"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			defer srv.Close()
			dir := t.TempDir()
			_, err := enginefetch.Fetch(t.Context(), enginefetch.Options{Package: pkg, Dir: filepath.Join(dir, "b"),
				CacheDir: filepath.Join(dir, "cache"), Registry: srv.URL, MaxBytes: tt.max})
			if err == nil || !strings.Contains(err.Error(), tt.errText) {
				t.Fatalf("got %v, want an error containing %q", err, tt.errText)
			}
			if entries, _ := os.ReadDir(filepath.Join(dir, "cache")); len(entries) != 0 {
				t.Errorf("cache: got %d entries, want none", len(entries))
			}
			assertNoTemp(t, dir)
		})
	}
	t.Run("cancelled", func(t *testing.T) {
		started := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", fmt.Sprint(len(tgz)))
			w.Write(tgz[:10])
			w.(http.Flusher).Flush()
			close(started)
			<-r.Context().Done()
		}))
		defer srv.Close()
		dir := t.TempDir()
		ctx, cancel := context.WithCancel(t.Context())
		go func() { <-started; cancel() }()
		_, err := enginefetch.Fetch(ctx, enginefetch.Options{Package: pkg, Dir: filepath.Join(dir, "b"), CacheDir: dir, Registry: srv.URL})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		assertNoTemp(t, dir)
	})
}
