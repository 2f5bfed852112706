package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/enginefetch"
	"github.com/rbee-dev/rbee/enginefetch/npmtest"
)

// The command as `make engine` runs it; enginefetch's tests cover the
// fetch itself.
func TestRun(t *testing.T) {
	tgz := npmtest.Tarball(t)
	integrity := npmtest.Integrity(tgz)
	pkg := enginefetch.LinuxAMD64
	pkg.Integrity = integrity
	reg := npmtest.NewRegistry(t, map[enginefetch.Package][]byte{pkg: tgz})
	t.Setenv("RBEE_NPM_REGISTRY", "")
	t.Setenv("NPM_CONFIG_REGISTRY", reg.URL) // npm's own setting, as before

	dir := t.TempDir()
	out := filepath.Join(dir, "engine")
	cache := filepath.Join(dir, "cache")
	cached := filepath.Join(cache, "node-llama-cpp-linux-x64-3.22.1.tgz")
	args := []string{"-out", out, "-cache", cache, "-integrity", integrity}
	tests := []struct {
		name       string
		args       []string
		wantHits   int64
		wantLog    string
		wantErr    string
		wantStdout string
	}{
		{name: "first", args: args, wantHits: 1, wantLog: "getengine: downloading " + reg.URL + pkg.TarballPath(), wantStdout: out + " v0.5.0 cpu\n"},
		{name: "again", args: args, wantLog: "is up to date", wantStdout: out + " v0.5.0 cpu\n"},
		{name: "local path", args: []string{"-out", filepath.Join(dir, "local"), "-tarball", cached, "-integrity", integrity},
			wantLog: "using " + cached + " (integrity ok)", wantStdout: filepath.Join(dir, "local") + " v0.5.0 cpu\n"},
		{name: "pinned integrity", args: []string{"-out", filepath.Join(dir, "other"), "-cache", filepath.Join(dir, "cache2")}, wantHits: 1,
			wantErr: "integrity mismatch: got " + integrity + ", want " + enginefetch.LinuxAMD64.Integrity},
		{name: "stray argument", args: []string{"x"}, wantErr: "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg.Reset()
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), tt.args, &stdout, &stderr)
			t.Logf("stderr:\n%s", stderr.String())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("run: got %v, want an error containing %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("run: %v", err)
			}
			if got := reg.Hits(); got != tt.wantHits {
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
}
