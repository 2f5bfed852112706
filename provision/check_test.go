package provision

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/bundle"
)

// Up and PlanUp refuse a host for the same reasons, with the same words:
// both go through checkHost and checkRoom.
func TestCheckHost(t *testing.T) {
	t.Parallel()
	const plat = "linux/amd64"
	builds := Artifacts{Agents: map[Platform]string{plat: "/b/rbee-hive"}, Workers: map[Platform]string{plat: "/b/rbee-worker"}}
	withEngine := builds
	withEngine.Engines = map[Platform]string{plat: "/b/engine"}
	fetcher := builds
	fetcher.Engine = func(context.Context, Platform, string) (string, error) { return "/cache/engine", nil }
	linux := Probe{OS: "linux", Arch: "amd64", Machine: "x86_64", Libffi: true}
	tests := []struct {
		name   string
		probe  Probe
		a      Artifacts
		engine bool
		want   string // "" = accepted
	}{
		{"ok", linux, withEngine, true, ""},
		{"engine fetched", linux, fetcher, true, ""},
		{"no engine, planning", linux, builds, false, ""},
		{"no engine, installing", linux, builds, true, "no rbee build for linux/amd64"},
		{"mac", Probe{OS: "darwin", Arch: "arm64", Machine: "arm64", Libffi: true}, withEngine, true, "host runs darwin/arm64"},
		{"arm64 without builds", Probe{OS: "linux", Arch: "arm64", Libffi: true}, withEngine, true, "no rbee build for linux/arm64 (have linux/amd64)"},
		{"no libffi", Probe{OS: "linux", Arch: "amd64"}, withEngine, true, "libffi8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			agent, worker, err := checkHost(tt.probe, tt.a, tt.engine)
			switch {
			case tt.want == "" && (err != nil || agent != "/b/rbee-hive" || worker != "/b/rbee-worker"):
				t.Errorf("got %q %q %v, want the builds", agent, worker, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %v, want an error saying %q", err, tt.want)
			}
		})
	}
}

func TestCheckRoom(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	tests := []struct {
		name string
		free uint64
		need uint64
		ok   bool
	}{
		{"room", 200 * mib, 100 * mib, true},
		{"exactly with the spare", 164 * mib, 100 * mib, true},
		{"no spare", 150 * mib, 100 * mib, false},
		{"unknown", 0, 100 * mib, true},
	}
	for _, tt := range tests {
		err := checkRoom(Probe{FreeBytes: tt.free, Home: "/home/u"}, tt.need)
		if (err == nil) != tt.ok {
			t.Errorf("%s: got %v, want ok=%v", tt.name, err, tt.ok)
		} else if err != nil && !strings.Contains(err.Error(), "rbee needs about 164.0 MiB") {
			t.Errorf("%s: %v, want the need with the spare", tt.name, err)
		}
	}
}

// TestBundleRelation: a host's engine directory is completed when it holds
// this bundle or a part of it, kept when it holds all of it and more (the
// RPC build beside the plain one), and never overwritten by a different
// bundle, which gets a directory of its own.
func TestBundleRelation(t *testing.T) {
	t.Parallel()
	f := func(name, sum string) bundle.File { return bundle.File{Name: name, SHA256: sum} }
	plain := &bundle.Manifest{Version: "v0.5.0", Files: []bundle.File{f("libllama.so", "a"), f("libggml.so", "b"), f("libggml-cpu-haswell.so", "c")}}
	partial := &bundle.Manifest{Version: "v0.5.0", Files: []bundle.File{f("libllama.so", "a"), f("libggml.so", "b")}, Omitted: []bundle.File{f("libggml-cpu-haswell.so", "c")}}
	rpc := &bundle.Manifest{Version: "v0.5.0", Files: append(slices.Clone(plain.Files), f("libggml-rpc.so", "d"), f("rpc-server", "e"))}
	other := &bundle.Manifest{Version: "v0.5.0", Files: []bundle.File{f("libllama.so", "X"), f("libggml.so", "b"), f("libggml-cpu-haswell.so", "c")}}
	odd := &bundle.Manifest{Version: "v0.5.0", Files: []bundle.File{f("libllama.so", "a"), f("libggml-vulkan.so", "v")}}
	tests := []struct {
		name     string
		m, there *bundle.Manifest
		want     relation
	}{
		{"the same", plain, plain, sameOrLess},
		{"a host's cut of it", plain, partial, sameOrLess},
		{"the RPC build over the plain one", rpc, plain, sameOrLess},
		{"the plain one over the RPC build", plain, rpc, superset},
		{"a file differs", plain, other, different},
		{"each lacks some of the other", plain, odd, different},
	}
	for _, tt := range tests {
		if got := bundleRelation(tt.m, tt.there); got != tt.want {
			t.Errorf("%s: got %d, want %d", tt.name, got, tt.want)
		}
	}
	if bundleDigest(plain) == bundleDigest(other) || bundleDigest(plain) != bundleDigest(partial) || len(bundleDigest(plain)) != 8 {
		t.Errorf("digests: plain %s other %s partial %s: want the files' identity, 8 digits", bundleDigest(plain), bundleDigest(other), bundleDigest(partial))
	}
}
