package enginefetch

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rbee-dev/rbee/bundle"
)

// DefaultMaxBytes bounds a download when Options.MaxBytes is zero; the CUDA
// tarball is about 143 MB.
const DefaultMaxBytes = 1 << 30

// ErrIntegrity reports a tarball whose sha512 is not the pinned one.
var ErrIntegrity = errors.New("integrity mismatch")

// Options say what to fetch and where to put it.
type Options struct {
	Package Package // what to fetch; its Integrity is required
	Dir     string  // the bundle directory to prepare (required)
	// CacheDir keeps downloaded tarballs (required unless Archive is a
	// local path).
	CacheDir string
	// Registry is the npm registry to fetch from; "" is Registry().
	Registry string
	// Archive, when set, is a local tarball path or an http(s) URL to use
	// instead of the registry; it must still have the pinned integrity.
	Archive string
	// Progress, when set, is called as the tarball arrives, at most about
	// ten times a second and once at the end; total is -1 when the
	// server states no size. It runs on Fetch's goroutine.
	Progress func(done, total int64)
	// Logf, when set, is told each step in a line.
	Logf func(format string, args ...any)
	// Client makes the requests; nil is http.DefaultClient.
	Client *http.Client
	// MaxBytes bounds the download; zero is DefaultMaxBytes.
	MaxBytes int64
}

// Fetch makes opt.Dir a bundle of opt.Package and returns its directory. A
// bundle already there from the same package and integrity is kept as it
// is; otherwise the tarball comes from opt.Archive, the cache, or the
// registry (downloaded beside the cache by way of a temporary file that is
// renamed only once its sha512 matches), and bundle.Prepare replaces
// opt.Dir in one rename. On error nothing partial remains. ctx bounds the
// whole call.
func Fetch(ctx context.Context, opt Options) (dir string, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("fetch engine %s@%s: %w", opt.Package.Name, opt.Package.Version, err)
		}
	}()
	if opt.Dir == "" {
		return "", errors.New("no bundle directory")
	}
	if opt.Logf == nil {
		opt.Logf = func(string, ...any) {}
	}
	want, err := parseIntegrity(opt.Package.Integrity)
	if err != nil {
		return "", err
	}
	source := opt.Package.Source()
	m, err := bundle.Validate(opt.Dir)
	switch {
	// A bundle the older getengine made records the registry URL it
	// checked against the same pinned integrity.
	case err == nil && (m.Source == source || m.Source == opt.Package.TarballURL(opt.Registry)):
		opt.Logf("bundle %s is up to date", opt.Dir)
		return opt.Dir, nil
	case err == nil:
		opt.Logf("bundle %s came from %s, not %s; preparing it again", opt.Dir, m.Source, source)
	case !errors.Is(err, bundle.ErrNotBundle):
		opt.Logf("%v; preparing it again", err)
	}
	archive, err := tarball(ctx, opt, want)
	if err != nil {
		return "", err
	}
	opt.Logf("preparing bundle %s from %s", opt.Dir, archive)
	m, err = bundle.Prepare(ctx, archive, opt.Dir, bundle.Options{Source: source})
	if err != nil {
		return "", err
	}
	opt.Logf("prepared llama.cpp %s for %s/%s, %d files", m.Version, m.OS, m.Arch, len(m.Files))
	return opt.Dir, nil
}

// tarball returns a local path holding the tarball with the wanted
// integrity: Archive itself when it is a path, else a cached download.
func tarball(ctx context.Context, opt Options, want []byte) (string, error) {
	src := opt.Archive
	if src == "" {
		src = opt.Package.TarballURL(opt.Registry)
	}
	u, err := url.Parse(src)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		if err := verifyFile(src, want); err != nil {
			return "", err
		}
		opt.Logf("using %s (integrity ok)", src)
		return src, nil
	}
	if opt.CacheDir == "" {
		return "", errors.New("no cache directory to download into")
	}
	cached := filepath.Join(opt.CacheDir, opt.Package.CacheName())
	err = verifyFile(cached, want)
	switch {
	case err == nil:
		opt.Logf("using cached %s (integrity ok)", cached)
		return cached, nil
	case !errors.Is(err, fs.ErrNotExist):
		opt.Logf("%v; downloading it again", err)
	}
	if err := os.MkdirAll(opt.CacheDir, 0o755); err != nil {
		return "", err
	}
	opt.Logf("downloading %s", src)
	n, err := download(ctx, opt, src, cached, want)
	if err != nil {
		return "", err
	}
	opt.Logf("saved %s (%.1f MB, integrity ok)", cached, float64(n)/1e6)
	return cached, nil
}

// download fetches rawURL into dst by way of a temporary file beside it,
// kept only when its sha512 is want.
func download(ctx context.Context, opt Options, rawURL, dst string, want []byte) (n int64, err error) {
	client := opt.Client
	if client == nil {
		client = http.DefaultClient
	}
	limit := opt.MaxBytes
	if limit <= 0 {
		limit = DefaultMaxBytes
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("download: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("download %s: %s", rawURL, resp.Status)
	}
	if resp.ContentLength > limit {
		return 0, fmt.Errorf("download %s: %d bytes, more than the %d allowed", rawURL, resp.ContentLength, limit)
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
	body := &progressReader{r: io.LimitReader(resp.Body, limit+1), total: resp.ContentLength, fn: opt.Progress}
	n, err = io.Copy(io.MultiWriter(tmp, h), body)
	body.report(true)
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", rawURL, err)
	}
	if n > limit {
		return 0, fmt.Errorf("download %s: more than %d bytes", rawURL, limit)
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

// progressReader reports the bytes read through it.
type progressReader struct {
	r     io.Reader
	fn    func(done, total int64)
	done  int64
	total int64
	last  time.Time
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	p.report(false)
	return n, err
}

func (p *progressReader) report(final bool) {
	if p.fn == nil {
		return
	}
	if now := time.Now(); final || now.Sub(p.last) >= 100*time.Millisecond {
		p.last = now
		p.fn(p.done, p.total)
	}
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
	return fmt.Errorf("%s: %w: got %s, want %s; it is not the pinned engine tarball "+
		"(a changed mirror or a damaged download): check the archive, RBEE_NPM_REGISTRY and NPM_CONFIG_REGISTRY",
		name, ErrIntegrity, FormatIntegrity(got), FormatIntegrity(want))
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

// FormatIntegrity writes a sha512 sum as npm does: "sha512-<base64>".
func FormatIntegrity(sum []byte) string {
	return "sha512-" + base64.StdEncoding.EncodeToString(sum)
}
