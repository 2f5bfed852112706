package main

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/rbee-dev/rbee/bundle"
)

// The pinned engine: node-llama-cpp 3.22.1's linux-x64 package, which holds
// llama.cpp release v0.5.0 built for CPUs. Bump all three together.
const (
	defaultRegistry = "https://registry.npmjs.org/"
	tarballPath     = "@node-llama-cpp/linux-x64/-/linux-x64-3.22.1.tgz"
	pinnedIntegrity = "sha512-5uCCDNqWCNfaAm8aR/Uzxbo4HBpKgNF91kCHPepKhgMgV2OAmatoefbOlMihsqCiH2Od35E/eUHQCFbfRBJuOg=="
)

// maxDownload bounds a download; the pinned tarball is about 11 MB.
const maxDownload = 1 << 30

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

// defaultTarball returns the pinned tarball's URL on the registry npm would
// use.
func defaultTarball() string {
	registry := defaultRegistry
	for _, key := range []string{"NPM_CONFIG_REGISTRY", "npm_config_registry"} {
		if v := os.Getenv(key); v != "" {
			registry = v
			break
		}
	}
	return strings.TrimSuffix(registry, "/") + "/" + tarballPath
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	flags := flag.NewFlagSet("getengine", flag.ContinueOnError)
	flags.SetOutput(stderr)
	out := flags.String("out", filepath.Join(".rbee-dev", "engine", "llama-cpu"), "bundle `dir`ectory to prepare")
	cacheDir := flags.String("cache", filepath.Join(".rbee-dev", "cache"), "`dir`ectory caching downloads")
	tarball := flags.String("tarball", defaultTarball(), "`url or path` of the engine tarball")
	integrity := flags.String("integrity", pinnedIntegrity, "npm `integrity` the tarball must have")
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
	logf := func(format string, args ...any) {
		fmt.Fprintf(stderr, "getengine: "+format+"\n", args...)
	}

	m, err := bundle.Validate(*out)
	switch {
	case err == nil && m.Source == *tarball:
		logf("bundle %s is up to date", *out)
		return report(stdout, *out, m)
	case err == nil:
		logf("bundle %s came from %s, not %s; preparing it again", *out, m.Source, *tarball)
	case !errors.Is(err, bundle.ErrNotBundle):
		logf("%v; preparing it again", err)
	}

	archive, err := fetch(ctx, *tarball, *cacheDir, *integrity, logf)
	if err != nil {
		return err
	}
	logf("preparing bundle %s from %s", *out, archive)
	m, err = bundle.Prepare(ctx, archive, *out, bundle.Options{Source: *tarball})
	if err != nil {
		return err
	}
	logf("prepared llama.cpp %s for %s/%s, %d files", m.Version, m.OS, m.Arch, len(m.Files))
	return report(stdout, *out, m)
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

// fetch returns a local path holding the tarball with the wanted integrity:
// the tarball itself when it is a path, else a cached download.
func fetch(ctx context.Context, tarball, cacheDir, integrity string, logf func(string, ...any)) (string, error) {
	want, err := parseIntegrity(integrity)
	if err != nil {
		return "", err
	}
	u, err := url.Parse(tarball)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		if err := verifyFile(tarball, want); err != nil {
			return "", err
		}
		logf("using %s (integrity ok)", tarball)
		return tarball, nil
	}

	cached := filepath.Join(cacheDir, cacheName(u))
	err = verifyFile(cached, want)
	switch {
	case err == nil:
		logf("using cached %s (integrity ok)", cached)
		return cached, nil
	case !errors.Is(err, fs.ErrNotExist):
		logf("%v; downloading it again", err)
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	logf("downloading %s", tarball)
	n, err := download(ctx, tarball, cached, want)
	if err != nil {
		return "", err
	}
	logf("saved %s (%.1f MB, integrity ok)", cached, float64(n)/1e6)
	return cached, nil
}

// cacheName names the cached copy of an npm tarball after its scope and
// file: node-llama-cpp-linux-x64-3.22.1.tgz.
func cacheName(u *url.URL) string {
	name := path.Base(u.Path)
	for _, seg := range strings.Split(u.Path, "/") {
		if scope, ok := strings.CutPrefix(seg, "@"); ok && scope != "" {
			return scope + "-" + name
		}
	}
	return name
}

// download fetches rawURL into dst by way of a temporary file, keeping it
// only when its sha512 is want.
func download(ctx context.Context, rawURL, dst string, want []byte) (n int64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("download: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("download %s: %s", rawURL, resp.Status)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha512.New()
	n, err = io.Copy(io.MultiWriter(tmp, h), io.LimitReader(resp.Body, maxDownload+1))
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", rawURL, err)
	}
	if n > maxDownload {
		return 0, fmt.Errorf("download %s: more than %d bytes", rawURL, maxDownload)
	}
	if err := checkSum(rawURL, h.Sum(nil), want); err != nil {
		return 0, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return 0, err
	}
	if err := tmp.Sync(); err != nil {
		return 0, err
	}
	if err := tmp.Close(); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return 0, err
	}
	return n, nil
}

// verifyFile checks that name's sha512 is want.
func verifyFile(name string, want []byte) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha512.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("verify %s: %w", name, err)
	}
	return checkSum(name, h.Sum(nil), want)
}

func checkSum(name string, got, want []byte) error {
	if bytes.Equal(got, want) {
		return nil
	}
	return fmt.Errorf("%s: integrity mismatch: got %s, want %s; it is not the pinned engine tarball "+
		"(a changed mirror or a damaged download) — check -tarball and NPM_CONFIG_REGISTRY",
		name, formatIntegrity(got), formatIntegrity(want))
}

// parseIntegrity decodes an npm integrity string, "sha512-<base64>".
func parseIntegrity(s string) ([]byte, error) {
	b64, ok := strings.CutPrefix(s, "sha512-")
	if !ok {
		return nil, fmt.Errorf("integrity %q: want sha512-<base64>", s)
	}
	sum, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(sum) != sha512.Size {
		return nil, fmt.Errorf("integrity %q: want sha512-<base64 of 64 bytes>", s)
	}
	return sum, nil
}

func formatIntegrity(sum []byte) string {
	return "sha512-" + base64.StdEncoding.EncodeToString(sum)
}
