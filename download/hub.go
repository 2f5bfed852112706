package download

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Errors callers test for.
var (
	ErrNotFound = errors.New("not found")
	ErrAuth     = errors.New("not authorized")
	ErrChecksum = errors.New("checksum mismatch")
	ErrNoSpace  = errors.New("not enough disk space")
	// ErrInsecure: a request would go over plain http to another machine
	// (the endpoint, a URL, a redirect); it is refused before any
	// connection.
	ErrInsecure = errors.New("plain http to another machine refused")
)

// authHint is what a 401 or 403 tells the person to do.
const authHint = "set HF_TOKEN (a token with read access; gated models need the license accepted on the hub)"

// maxRedirects bounds the redirects a request follows, as net/http does.
const maxRedirects = 10

// Hub talks to a Hugging Face hub, or to any HTTP server for url refs. The
// zero value is ready: it uses $HF_ENDPOINT (else huggingface.co), $HF_TOKEN
// and a client without an overall timeout (downloads are long; stalls are
// caught by StallTimeout).
//
// Every request, redirects included, goes over https or to this machine:
// plain http to another host is refused (ErrInsecure) before any
// connection, since the token and the model would cross the network
// unencrypted and anyone on the way could swap the model.
type Hub struct {
	Endpoint string // default $HF_ENDPOINT, else DefaultEndpoint
	Token    string // default $HF_TOKEN; sent only to the endpoint's own host
	Client   *http.Client
	// StallTimeout, Retries and Backoff rule the hub's own requests (the
	// listing, Head, the header Estimate reads) as the Options fields of
	// the same names rule a Fetch, with the same defaults; a Fetch takes
	// them where its Options leave them zero.
	StallTimeout time.Duration
	Retries      int
	Backoff      time.Duration
	// OnRetry, when set, hears why a request of the hub's own failed,
	// before attempt number attempt is made (Fetch reports its retries
	// through Options.Progress instead).
	OnRetry func(attempt int, err error)
}

// Remote is what the server says about a file before its body is fetched.
type Remote struct {
	URL          string // final URL, after redirects
	Size         int64  // -1 when the server does not say
	SHA256       string // lowercase hex, when the source states it (the hub's X-Linked-Etag)
	ETag         string // the final server's strong ETag, for If-Range; "" if none or weak
	AcceptRanges bool
}

func (h *Hub) endpoint() string {
	if h != nil && h.Endpoint != "" {
		return strings.TrimRight(h.Endpoint, "/")
	}
	return endpointFromEnv()
}

func (h *Hub) token() string {
	if h != nil && h.Token != "" {
		return h.Token
	}
	return os.Getenv("HF_TOKEN")
}

// options is the hub's own retry and stall policy.
func (h *Hub) options() Options {
	if h == nil {
		return Options{}.withDefaults()
	}
	return Options{Retries: h.Retries, Backoff: h.Backoff, StallTimeout: h.StallTimeout}.withDefaults()
}

func (h *Hub) onRetry() func(int, error) {
	if h == nil {
		return nil
	}
	return h.OnRetry
}

func (h *Hub) client() *http.Client {
	if h != nil && h.Client != nil {
		return h.Client
	}
	return http.DefaultClient
}

// url is the URL of r's file as this hub names it.
func (h *Hub) url(r Ref) string {
	if r.Kind == KindHF {
		return fileURL(h.endpoint(), r)
	}
	return r.URL
}

// authorize adds the token to req when req goes to the hub's own host. The
// hub redirects file downloads to a CDN on another host, which must never
// see the token.
func (h *Hub) authorize(req *http.Request) {
	if tok := h.token(); tok != "" && h.isHub(req.URL) {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
}

// isHub reports whether u is on the hub's own scheme and host (with port).
func (h *Hub) isHub(u *url.URL) bool {
	ep, err := url.Parse(h.endpoint())
	return err == nil && strings.EqualFold(ep.Scheme, u.Scheme) && strings.EqualFold(ep.Host, u.Host)
}

// allowed refuses a request that plain http would carry to another
// machine. from is the URL that redirected to u, "" for the first request.
func (h *Hub) allowed(u *url.URL, from string) error {
	switch strings.ToLower(u.Scheme) {
	case "https":
		return nil
	case "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
	default:
		if from != "" {
			return fmt.Errorf("redirect from %s to %s refused: unsupported scheme %q", redact(from), redact(u.String()), u.Scheme)
		}
		return fmt.Errorf("%s: unsupported scheme %q; want https", redact(u.String()), u.Scheme)
	}
	switch {
	case from != "":
		return fmt.Errorf("redirect from %s to %s: %w; the server must redirect to https://", redact(from), redact(u.String()), ErrInsecure)
	case h.isHub(u):
		what := "the model"
		if h.token() != "" {
			what = "HF_TOKEN and the model"
		}
		return fmt.Errorf("hub endpoint %s: %w (%s would cross the network unencrypted); set HF_ENDPOINT to an https:// URL, or to a mirror on this machine (http://127.0.0.1:PORT)", h.endpoint(), ErrInsecure, what)
	}
	return fmt.Errorf("%s: %w; use https://, or a mirror on this machine (http://127.0.0.1:PORT)", redact(u.String()), ErrInsecure)
}

// do sends a request to u and follows redirects itself, so that each hop
// is checked (allowed) and authorized (or not) on its own, and the caller
// sees every hop's headers through hop. It returns the final response and
// its URL. A network error is retryable; a refused hop is not.
func (h *Hub) do(ctx context.Context, method, u string, hdr http.Header, hop func(*http.Response)) (*http.Response, string, error) {
	c := *h.client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	from := ""
	for range maxRedirects + 1 {
		req, err := http.NewRequestWithContext(ctx, method, u, nil)
		if err != nil {
			return nil, "", err
		}
		if err := h.allowed(req.URL, from); err != nil {
			return nil, "", err
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		h.authorize(req)
		resp, err := c.Do(req)
		if err != nil {
			return nil, "", retryError{err}
		}
		if hop != nil {
			hop(resp)
		}
		loc := resp.Header.Get("Location")
		if !isRedirect(resp.StatusCode) || loc == "" {
			return resp, u, nil
		}
		drain(resp)
		next, err := req.URL.Parse(loc)
		if err != nil {
			return nil, "", fmt.Errorf("redirect from %s: %w", u, err)
		}
		from, u = u, next.String()
	}
	return nil, "", fmt.Errorf("%s: more than %d redirects", u, maxRedirects)
}

func isRedirect(code int) bool {
	switch code {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

// drain reads a little of a body so the connection can be reused, then
// closes it.
func drain(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	resp.Body.Close()
}

// statusError turns a refusing status into an error: 404 wraps ErrNotFound,
// 401 and 403 wrap ErrAuth, both naming what was asked for and where.
func (h *Hub) statusError(r Ref, u string, resp *http.Response) error {
	switch resp.StatusCode {
	case http.StatusNotFound:
		return fmt.Errorf("%s: %w (looked at %s)", r.Raw, ErrNotFound, redact(u))
	case http.StatusUnauthorized, http.StatusForbidden:
		hint := "the server refused access"
		switch {
		case !h.isHub(resp.Request.URL):
		case h.token() == "":
			hint = authHint
		default:
			hint = "check " + strings.TrimPrefix(authHint, "set ")
		}
		return fmt.Errorf("%s: %w (%s from %s); %s", r.Raw, ErrAuth, resp.Status, redact(u), hint)
	}
	return &httpError{ref: r.Raw, url: u, status: resp.Status, code: resp.StatusCode, body: snippet(resp)}
}

// httpError is an unexpected status; 5xx and 429 are worth a retry.
type httpError struct {
	ref, url, status, body string
	code                   int
}

func (e *httpError) Error() string {
	s := fmt.Sprintf("%s: %s from %s", e.ref, e.status, redact(e.url))
	if e.body != "" {
		s += ": " + e.body
	}
	return s
}

func (e *httpError) retryable() bool {
	return e.code >= 500 || e.code == http.StatusTooManyRequests || e.code == http.StatusRequestTimeout
}

// snippet returns a bounded piece of an error body for the message.
func snippet(resp *http.Response) string {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	s := strings.Join(strings.Fields(string(b)), " ")
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return -1
		}
		return r
	}, s)
}

// redact drops the query of a URL for messages: CDN URLs carry signatures.
func redact(u string) string {
	if i := strings.IndexByte(u, '?'); i >= 0 {
		return u[:i] + "?…"
	}
	return u
}

// Head asks the server what r's file is without fetching it. The hub answers
// a HEAD on /resolve/ with a redirect to its CDN and states the LFS file's
// size and sha256 in X-Linked-Size and X-Linked-Etag; those are read from
// the hop that has them, the rest (final URL, ETag, ranges) from the last
// hop. An hf ref without a file is resolved first. A HEAD that fails for a
// reason worth a retry (the network, no answer for StallTimeout, 5xx) is
// retried with the hub's policy.
func (h *Hub) Head(ctx context.Context, r Ref) (Remote, error) {
	opt := h.options()
	r, err := h.resolve(ctx, r, opt, h.onRetry())
	if err != nil {
		return Remote{}, err
	}
	return h.head(ctx, r, opt, h.onRetry())
}

// head is Head of a resolved ref with opt's retries and stall timeout.
func (h *Hub) head(ctx context.Context, r Ref, opt Options, told func(int, error)) (rem Remote, err error) {
	err = retry(ctx, opt, told, func(ctx context.Context) error {
		rem, err = h.headOnce(ctx, r, opt.StallTimeout)
		return err
	})
	if err != nil {
		return Remote{}, err
	}
	return rem, nil
}

// headOnce makes one HEAD, cut when no answer comes for stall.
func (h *Hub) headOnce(ctx context.Context, r Ref, stall time.Duration) (Remote, error) {
	wctx, watch, stop := watchStall(ctx, stall)
	defer stop()
	u := h.url(r)
	rem := Remote{Size: -1}
	linkedSize := int64(-1)
	resp, final, err := h.do(wctx, http.MethodHead, u, nil, func(resp *http.Response) {
		if s := resp.Header.Get("X-Linked-Size"); s != "" && linkedSize < 0 {
			if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 0 {
				linkedSize = n
			}
		}
		if rem.SHA256 == "" {
			rem.SHA256 = sha256FromETag(resp.Header.Get("X-Linked-Etag"))
		}
	})
	if err != nil {
		return Remote{}, fmt.Errorf("head %s: %w", r.Raw, watch.failed(ctx, err, -1))
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		return Remote{}, fmt.Errorf("head %w", h.statusError(r, final, resp))
	}
	rem.URL = final
	rem.Size = resp.ContentLength
	if linkedSize >= 0 {
		rem.Size = linkedSize
	}
	if et := resp.Header.Get("ETag"); et != "" && !strings.HasPrefix(et, "W/") {
		rem.ETag = et
	}
	rem.AcceptRanges = strings.EqualFold(strings.TrimSpace(resp.Header.Get("Accept-Ranges")), "bytes")
	return rem, nil
}

// sha256FromETag returns the hex sha256 in an ETag-style value, or "" when
// it holds something else (a git blob sha1 for files outside LFS).
func sha256FromETag(v string) string {
	v = strings.Trim(strings.TrimPrefix(strings.TrimSpace(v), "W/"), `"`)
	if len(v) != 64 {
		return ""
	}
	for _, c := range v {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return ""
		}
	}
	return strings.ToLower(v)
}

// treeEntry is one element of the hub's tree listing.
type treeEntry struct {
	Type string `json:"type"`
	Path string `json:"path"`
	Size int64  `json:"size"`
	LFS  *struct {
		Oid  string `json:"oid"`
		Size int64  `json:"size"`
	} `json:"lfs"`
}

func (e treeEntry) size() int64 {
	if e.LFS != nil && e.LFS.Size > 0 {
		return e.LFS.Size
	}
	return e.Size
}

// PreferredQuants is the order in which Resolve picks a quantization when
// the ref gives no hint: a good size/quality balance first, then bigger and
// better ones; if none is there, the smallest .gguf.
var PreferredQuants = []string{"Q4_K_M", "Q4_K_S", "Q5_K_M", "Q8_0"}

var splitPart = regexp.MustCompile(`(?i)-(\d{5})-of-(\d{5})\.gguf$`)

// Resolve picks the file of an "hf:ORG/REPO" ref; refs that name a file,
// and url refs, come back as they are. It lists the repo at the ref's
// revision and picks a .gguf:
//
//   - with a quantization hint ("hf:ORG/REPO:Q5_K_M"), a file whose name
//     contains it (case-insensitive; a whole-token match wins over a longer
//     quant that starts with it, then the smaller file);
//   - otherwise the first of PreferredQuants that a file name contains, and
//     failing that the smallest .gguf.
//
// Parts of split models after the first (-00002-of-00003.gguf…) and
// multimodal projectors (mmproj) are never picked. When nothing matches, the
// error lists the files the repo has.
func (h *Hub) Resolve(ctx context.Context, r Ref) (Ref, error) {
	return h.resolve(ctx, r, h.options(), h.onRetry())
}

// resolve is Resolve with opt's retries and stall timeout for the listing.
func (h *Hub) resolve(ctx context.Context, r Ref, opt Options, told func(int, error)) (Ref, error) {
	if r.Kind != KindHF || r.File != "" {
		if r.Kind == KindHF {
			r.URL = h.url(r)
		}
		return r, nil
	}
	entries, err := h.tree(ctx, r, opt, told)
	if err != nil {
		return Ref{}, fmt.Errorf("resolve %w", err)
	}
	var ggufs []treeEntry
	var names []string
	for _, e := range entries {
		if e.Type != "file" {
			continue
		}
		names = append(names, e.Path)
		base := strings.ToLower(path.Base(e.Path))
		if !strings.HasSuffix(base, ".gguf") || strings.Contains(base, "mmproj") {
			continue
		}
		if m := splitPart.FindStringSubmatch(base); m != nil && m[1] != "00001" {
			continue
		}
		ggufs = append(ggufs, e)
	}
	pick, ok := pickGGUF(ggufs, r.Quant)
	if !ok {
		what := "no .gguf model file"
		if r.Quant != "" {
			what = fmt.Sprintf("no .gguf file matches %q", r.Quant)
		}
		return Ref{}, fmt.Errorf("resolve %s: %s; %s@%s has: %s", r.Raw, what, r.Repo, r.Revision, listNames(names))
	}
	r.File = pick.Path
	r.URL = h.url(r)
	return r, nil
}

func pickGGUF(files []treeEntry, hint string) (treeEntry, bool) {
	smallest := func(c []treeEntry) treeEntry {
		return slices.MinFunc(c, func(a, b treeEntry) int {
			if a.size() != b.size() {
				return compareInt(a.size(), b.size())
			}
			return strings.Compare(a.Path, b.Path)
		})
	}
	if hint != "" {
		var exact, loose []treeEntry
		for _, f := range files {
			switch quantMatch(path.Base(f.Path), hint) {
			case 2:
				exact = append(exact, f)
			case 1:
				loose = append(loose, f)
			}
		}
		if len(exact) > 0 {
			return smallest(exact), true
		}
		if len(loose) > 0 {
			return smallest(loose), true
		}
		return treeEntry{}, false
	}
	for _, q := range PreferredQuants {
		var c []treeEntry
		for _, f := range files {
			if quantMatch(path.Base(f.Path), q) == 2 {
				c = append(c, f)
			}
		}
		if len(c) > 0 {
			return smallest(c), true
		}
	}
	if len(files) == 0 {
		return treeEntry{}, false
	}
	return smallest(files), true
}

// quantMatch says how name contains quant, case-insensitively: 2 as a whole
// token (followed by ".", "-" or the end; Q4_K matches "x-Q4_K.gguf"), 1 as
// a prefix of a longer quant (Q4_K in "x-Q4_K_M.gguf"), 0 not at all.
func quantMatch(name, quant string) int {
	name, quant = strings.ToLower(name), strings.ToLower(quant)
	best := 0
	for i := 0; ; {
		j := strings.Index(name[i:], quant)
		if j < 0 {
			return best
		}
		end := i + j + len(quant)
		if end == len(name) || name[end] == '.' || name[end] == '-' {
			return 2
		}
		best = 1
		i += j + 1
	}
}

func compareInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// listNames joins file names for an error message, at most 30 of them.
func listNames(names []string) string {
	if len(names) == 0 {
		return "no files"
	}
	const max = 30
	if len(names) > max {
		return strings.Join(names[:max], ", ") + fmt.Sprintf(" and %d more", len(names)-max)
	}
	return strings.Join(names, ", ")
}

// tree lists the files of r's repo at r's revision, following the hub's
// Link pagination; each page is retried on its own.
func (h *Hub) tree(ctx context.Context, r Ref, opt Options, told func(int, error)) ([]treeEntry, error) {
	u := h.endpoint() + "/api/models/" + r.Repo + "/tree/" + url.PathEscape(r.Revision) + "?recursive=1"
	var all []treeEntry
	for page := 0; u != ""; page++ {
		if page > 1000 {
			return nil, fmt.Errorf("%s: listing has more than 1000 pages", r.Raw)
		}
		var entries []treeEntry
		var next string
		err := retry(ctx, opt, told, func(ctx context.Context) (err error) {
			entries, next, err = h.treePage(ctx, r, u, opt.StallTimeout)
			return err
		})
		if err != nil {
			return nil, err
		}
		all = append(all, entries...)
		u = next
	}
	return all, nil
}

// treePage fetches one page of the listing at u, cut when no answer or no
// byte of it comes for stall, and returns its entries and the next page's
// URL.
func (h *Hub) treePage(ctx context.Context, r Ref, u string, stall time.Duration) ([]treeEntry, string, error) {
	wctx, watch, stop := watchStall(ctx, stall)
	defer stop()
	resp, final, err := h.do(wctx, http.MethodGet, u, http.Header{"Accept": {"application/json"}}, nil)
	if err != nil {
		return nil, "", fmt.Errorf("%s: list files: %w", r.Raw, watch.failed(ctx, err, -1))
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		return nil, "", h.statusError(r, final, resp)
	}
	watch.kick()
	var entries []treeEntry
	if err := json.NewDecoder(io.LimitReader(watch.reader(resp.Body), 64<<20)).Decode(&entries); err != nil {
		return nil, "", fmt.Errorf("%s: list files at %s: %w", r.Raw, redact(final), watch.failed(ctx, err, 0))
	}
	return entries, nextLink(resp.Header.Get("Link"), resp.Request.URL), nil
}

// nextLink returns the rel="next" target of a Link header, or "".
func nextLink(h string, base *url.URL) string {
	for _, l := range strings.Split(h, ",") {
		target, params, ok := strings.Cut(strings.TrimSpace(l), ";")
		if !ok || !strings.Contains(strings.ReplaceAll(params, " ", ""), `rel="next"`) {
			continue
		}
		next, err := base.Parse(strings.Trim(strings.TrimSpace(target), "<>"))
		if err != nil {
			return ""
		}
		return next.String()
	}
	return ""
}
