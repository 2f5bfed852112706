package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/rbee-dev/rbee/bundle"
	"github.com/rbee-dev/rbee/enginefetch"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "getengine: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	// -gpu picks the package before the other flags take its defaults.
	gpu := ""
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "-gpu="); ok {
			gpu = v
		} else if a == "-gpu" && i+1 < len(args) {
			gpu = args[i+1]
		}
	}
	pkg, ok := enginefetch.For(runtime.GOOS, runtime.GOARCH, gpu)
	if !ok {
		return fmt.Errorf("no pinned engine package for %s/%s %q (see enginefetch.Packages)", runtime.GOOS, runtime.GOARCH, gpu)
	}
	flags := flag.NewFlagSet("getengine", flag.ContinueOnError)
	flags.String("gpu", "", "GPU `kind` of the pinned package: \"\" (the CPU build), vulkan, cuda")
	flags.SetOutput(stderr)
	out := flags.String("out", filepath.Join(".rbee-dev", "engine", "llama-cpu"), "bundle `dir`ectory to prepare")
	cacheDir := flags.String("cache", filepath.Join(".rbee-dev", "cache"), "`dir`ectory caching downloads")
	tarball := flags.String("tarball", "", "`url or path` of the engine tarball (default: the pinned package on $RBEE_NPM_REGISTRY, $NPM_CONFIG_REGISTRY or npm's registry)")
	flags.StringVar(&pkg.Integrity, "integrity", pkg.Integrity, "npm `integrity` the tarball must have")
	rpc := flags.String("rpc", "", "`script` that builds llama.cpp's RPC backend and server for the bundle (scripts/rpc.sh), added to it; \"\" leaves them out")
	flags.Usage = func() {
		fmt.Fprintf(stderr, "usage: go run ./internal/cmd/getengine [flags]\n\n"+
			"Fetches a pinned llama.cpp build (the CPU one unless -gpu) and prepares it as an engine bundle.\n\n")
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		return err
	}
	if flags.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flags.Args())
	}
	opt := enginefetch.Options{
		Package: pkg, Dir: *out, CacheDir: *cacheDir, Archive: *tarball,
		Logf: func(format string, args ...any) {
			fmt.Fprintf(stderr, "getengine: "+format+"\n", args...)
		},
	}
	dir, err := enginefetch.Fetch(ctx, opt)
	if err != nil {
		return err
	}
	if *rpc != "" {
		if err := addRPC(ctx, *rpc, dir, *cacheDir, stderr, opt.Logf); err != nil {
			return err
		}
	}
	m, err := bundle.Load(dir)
	if err != nil {
		return err
	}
	return report(stdout, dir, m)
}

// addRPC runs script (scripts/rpc.sh) to build libggml-rpc.so and
// rpc-server for the bundle in dir, which prints the directory holding
// them, and adds them to the bundle; a bundle that has them already stays
// as it is.
func addRPC(ctx context.Context, script, dir, cacheDir string, stderr io.Writer, logf func(string, ...any)) error {
	cmd := exec.CommandContext(ctx, script, dir, cacheDir)
	cmd.Stderr = stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("build rpc backend: %s: %w", script, err)
	}
	built := strings.TrimSpace(string(out))
	m, changed, err := bundle.Add(ctx, dir, filepath.Join(built, "libggml-rpc.so"), filepath.Join(built, bundle.RPCServer))
	if err != nil {
		return err
	}
	if changed {
		logf("added libggml-rpc.so and %s to %s (backends %s)", bundle.RPCServer, dir, strings.Join(m.Backends, ", "))
	} else {
		logf("bundle %s has the rpc backend", dir)
	}
	return nil
}

// report prints the line scripts read: bundle directory, version, backends.
func report(w io.Writer, dir string, m *bundle.Manifest) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s %s %s\n", abs, m.Version, strings.Join(m.Backends, ","))
	return err
}
