package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
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
	pkg, ok := enginefetch.For(runtime.GOOS, runtime.GOARCH, "")
	if !ok {
		return fmt.Errorf("no pinned engine package for %s/%s (see enginefetch.Packages)", runtime.GOOS, runtime.GOARCH)
	}
	flags := flag.NewFlagSet("getengine", flag.ContinueOnError)
	flags.SetOutput(stderr)
	out := flags.String("out", filepath.Join(".rbee-dev", "engine", "llama-cpu"), "bundle `dir`ectory to prepare")
	cacheDir := flags.String("cache", filepath.Join(".rbee-dev", "cache"), "`dir`ectory caching downloads")
	tarball := flags.String("tarball", "", "`url or path` of the engine tarball (default: the pinned package on $RBEE_NPM_REGISTRY, $NPM_CONFIG_REGISTRY or npm's registry)")
	flags.StringVar(&pkg.Integrity, "integrity", pkg.Integrity, "npm `integrity` the tarball must have")
	flags.Usage = func() {
		fmt.Fprintf(stderr, "usage: go run ./internal/cmd/getengine [flags]\n\n"+
			"Fetches the pinned llama.cpp CPU build and prepares it as an engine bundle.\n\n")
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
	m, err := bundle.Load(dir)
	if err != nil {
		return err
	}
	return report(stdout, dir, m)
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
