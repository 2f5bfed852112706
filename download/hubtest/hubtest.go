// Package hubtest is a fake Hugging Face hub for tests: an httptest server
// that lists repos, answers /resolve/ with a redirect to a CDN path and the
// X-Linked-Size and X-Linked-Etag headers the hub sends for LFS files,
// serves bodies with Range support, injects faults on demand and logs every
// request, so that tests can check what a client asked for.
//
// Routes:
//
//	GET      /api/models/ORG/REPO/tree/REV[?recursive=1]   JSON listing
//	HEAD|GET /ORG/REPO/resolve/REV/PATH    .gguf: 302 to /cdn/SHA256 with X-Linked-*;
//	                                       other files: served directly (no sha256 stated)
//	HEAD|GET /cdn/SHA256                   the body, with Range and If-Range
//	HEAD|GET /plain/ORG/REPO/PATH          the body with an ETag but no sha256 headers
package hubtest

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Commit is the X-Repo-Commit the fake hub states for every revision.
const Commit = "0123456789abcdef0123456789abcdef01234567"

// Request is one request the fake served, as the log records it.
type Request struct {
	Server  string // "hub" or "cdn"
	Method  string
	Path    string
	File    string // the file key ("org/repo/path") the request was for, if any
	Range   string // the Range header, "" if none
	IfRange string
	Auth    string // the Authorization header, "" if none
	Status  int
	Bytes   int64 // body bytes written
	Body    bool  // whether it served the file's content (200 or 206 to a GET)
}

// Hub is a fake hub. Its methods are safe for concurrent use.
type Hub struct {
	sparse map[string]int64 // virtual sizes (Sparse)
	// URL is the hub's endpoint: give it to download.Hub.Endpoint or
	// HF_ENDPOINT.
	URL string

	t   testing.TB
	srv *httptest.Server
	cdn *httptest.Server // nil: the CDN paths are on srv

	mu       sync.Mutex
	files    map[string][]byte // "org/repo/path" → content
	bySHA    map[string]string // sha256 → file key
	sums     map[string]string // file key → sha256
	log      []Request
	cuts     map[string]int   // file → percent, once
	stalls   map[string]stall // file → stall, once
	fails    []*fail
	gates    map[string]string // repo → token
	corrupt  map[string]bool
	noRanges bool
	pageSize int
}

type stall struct {
	after int64
	d     time.Duration
}

type fail struct {
	target string
	status int
	left   int // < 0: forever
}

// New starts a fake hub serving files, keyed "org/repo/path/in/repo". It is
// closed when the test ends.
func New(t testing.TB, files map[string][]byte) *Hub {
	t.Helper()
	h := &Hub{
		t:       t,
		files:   map[string][]byte{},
		bySHA:   map[string]string{},
		sums:    map[string]string{},
		cuts:    map[string]int{},
		stalls:  map[string]stall{},
		gates:   map[string]string{},
		corrupt: map[string]bool{},
	}
	for k, v := range files {
		h.Add(k, v)
	}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.serve("hub", w, r) }))
	t.Cleanup(h.srv.Close)
	h.URL = h.srv.URL
	return h
}

// SeparateCDN moves the CDN paths to a second server on another port (so
// another host as far as credentials go), as the real hub does.
func (h *Hub) SeparateCDN() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cdn == nil {
		h.cdn = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.serve("cdn", w, r) }))
		h.t.Cleanup(h.cdn.Close)
	}
}

// CDNURL is the base URL the resolve redirects point at.
func (h *Hub) CDNURL() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cdn != nil {
		return h.cdn.URL
	}
	return h.URL
}

// Add adds or replaces a file.
func (h *Hub) Add(file string, data []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	sum := SHA256(data)
	h.files[file] = data
	h.bySHA[sum] = file
	h.sums[file] = sum
}

// Sparse makes a file as big as size: its bytes past the data it was added
// with are zeros, served on demand. Such a file's sha256 is not the real
// one, so it suits header reads (fit-before-fetch tests), not downloads.
func (h *Hub) Sparse(file string, size int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sparse == nil {
		h.sparse = map[string]int64{}
	}
	h.sparse[file] = size
}

func (h *Hub) sizeOf(file string, data []byte) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sizeLocked(file, data)
}

func (h *Hub) sizeLocked(file string, data []byte) int64 {
	if n, ok := h.sparse[file]; ok {
		return n
	}
	return int64(len(data))
}

// window returns data[from:to], reading zeros past its end.
func window(data []byte, from, to int64) []byte {
	if to <= int64(len(data)) {
		return data[from:to]
	}
	out := make([]byte, to-from)
	if from < int64(len(data)) {
		copy(out, data[from:])
	}
	return out
}

// SHA256 returns the hex sha256 of data.
func SHA256(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// ResolveURL is the hub URL of file at revision rev.
func (h *Hub) ResolveURL(file, rev string) string {
	org, repo, path := splitKey(file)
	return h.URL + "/" + org + "/" + repo + "/resolve/" + rev + "/" + path
}

// PlainURL is a URL that serves file with an ETag but no sha256.
func (h *Hub) PlainURL(file string) string { return h.URL + "/plain/" + file }

// CutOnce makes the next GET that serves file's content close the
// connection once percent of the file (counted from its first byte) has
// been sent.
func (h *Hub) CutOnce(file string, percent int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cuts[file] = percent
}

// CutOffset is the byte at which CutOnce(file, percent) cuts.
func (h *Hub) CutOffset(file string, percent int) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return int64(len(h.files[file])) * int64(percent) / 100
}

// StallOnce makes the next GET that serves file's content stop for d once
// the file's byte at offset after is reached (or at its start, if the
// response starts beyond it).
func (h *Hub) StallOnce(file string, after int64, d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stalls[file] = stall{after, d}
}

// Fail makes requests for target answer status, times times (0: always).
// A target starting with "/" is a URL path; otherwise it is a file key and
// every request for that file (resolve, CDN, plain) fails.
func (h *Hub) Fail(target string, status, times int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if times <= 0 {
		times = -1
	}
	h.fails = append(h.fails, &fail{target, status, times})
}

// Gate makes repo ("org/repo") gated: its listing and resolve requests
// need "Authorization: Bearer token" (no header: 401, another token: 403).
// The CDN, like the real one, takes signed URLs and no token.
func (h *Hub) Gate(repo, token string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gates[repo] = token
}

// Corrupt makes file's content arrive with one byte changed, while the
// headers still state the true size and sha256.
func (h *Hub) Corrupt(file string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.corrupt[file] = true
}

// NoRanges makes the server ignore Range headers (always 200, whole file).
func (h *Hub) NoRanges() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.noRanges = true
}

// PageSize makes listings paginate with a Link header, n entries a page.
func (h *Hub) PageSize(n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pageSize = n
}

// Requests returns the log of served requests, in order of completion.
func (h *Hub) Requests() []Request {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.log)
}

// Ranges returns the Range header ("" for none) of each GET that served
// file's content.
func (h *Hub) Ranges(file string) []string {
	var rs []string
	for _, r := range h.Requests() {
		if r.File == file && r.Method == http.MethodGet && r.Body {
			rs = append(rs, r.Range)
		}
	}
	return rs
}

// BodyGETs counts the GETs that served (some of) file's content.
func (h *Hub) BodyGETs(file string) int { return len(h.Ranges(file)) }

// BytesServed sums the body bytes sent for file.
func (h *Hub) BytesServed(file string) int64 {
	var n int64
	for _, r := range h.Requests() {
		if r.File == file {
			n += r.Bytes
		}
	}
	return n
}

func splitKey(file string) (org, repo, path string) {
	parts := strings.SplitN(file, "/", 3)
	for len(parts) < 3 {
		parts = append(parts, "")
	}
	return parts[0], parts[1], parts[2]
}

// countingWriter counts body bytes.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func (h *Hub) serve(server string, w http.ResponseWriter, r *http.Request) {
	rec := Request{Server: server, Method: r.Method, Path: r.URL.Path, Range: r.Header.Get("Range"),
		IfRange: r.Header.Get("If-Range"), Auth: r.Header.Get("Authorization")}
	cw := &countingWriter{ResponseWriter: w}
	defer func() {
		rec.Bytes = cw.n
		h.mu.Lock()
		h.log = append(h.log, rec)
		h.mu.Unlock()
	}()
	h.route(server, cw, r, &rec)
}

func (h *Hub) route(server string, w *countingWriter, r *http.Request, rec *Request) {
	reply := func(code int, msg string) {
		rec.Status = code
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Error-Message", msg)
		w.WriteHeader(code)
		if r.Method != http.MethodHead {
			fmt.Fprintln(w, msg)
		}
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		reply(http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	p := r.URL.Path
	segs := strings.Split(strings.TrimPrefix(p, "/"), "/")

	var repo, file string // what the request is about
	switch {
	case server == "hub" && len(segs) >= 6 && segs[0] == "api" && segs[1] == "models" && segs[4] == "tree":
		repo = segs[2] + "/" + segs[3]
	case len(segs) == 2 && segs[0] == "cdn":
		h.mu.Lock()
		file = h.bySHA[segs[1]]
		h.mu.Unlock()
	case server == "hub" && len(segs) >= 4 && segs[0] == "plain":
		file = strings.Join(segs[1:], "/")
	case server == "hub" && len(segs) >= 5 && segs[2] == "resolve":
		repo = segs[0] + "/" + segs[1]
		file = repo + "/" + strings.Join(segs[4:], "/")
	}
	rec.File = file

	if code, ok := h.fault(p, file); ok {
		reply(code, http.StatusText(code)+" (injected)")
		return
	}
	if repo != "" {
		h.mu.Lock()
		tok, gated := h.gates[repo]
		h.mu.Unlock()
		switch auth := r.Header.Get("Authorization"); {
		case !gated:
		case auth == "":
			reply(http.StatusUnauthorized, "Access to model "+repo+" is restricted. You must have access to it and be authenticated to access it.")
			return
		case auth != "Bearer "+tok:
			reply(http.StatusForbidden, "Access to model "+repo+" is restricted and you are not in the authorized list.")
			return
		}
	}

	switch {
	case server == "hub" && len(segs) >= 6 && segs[0] == "api" && segs[4] == "tree":
		h.tree(w, r, rec, repo, segs[6:])
	case len(segs) == 2 && segs[0] == "cdn":
		if file == "" {
			reply(http.StatusNotFound, "no such object")
			return
		}
		h.body(w, r, rec, file, `"`+segs[1]+`"`)
	case server == "hub" && len(segs) >= 4 && segs[0] == "plain":
		data, ok := h.file(file)
		if !ok {
			reply(http.StatusNotFound, "Entry not found")
			return
		}
		h.body(w, r, rec, file, `"`+gitSHA1(data)+`"`)
	case server == "hub" && len(segs) >= 5 && segs[2] == "resolve":
		data, ok := h.file(file)
		if !ok {
			w.Header().Set("X-Error-Code", "EntryNotFound")
			reply(http.StatusNotFound, "Entry not found")
			return
		}
		w.Header().Set("X-Repo-Commit", Commit)
		if !strings.HasSuffix(strings.ToLower(file), ".gguf") {
			h.body(w, r, rec, file, `"`+gitSHA1(data)+`"`) // a file outside LFS
			return
		}
		h.mu.Lock()
		sum := h.sums[file]
		h.mu.Unlock()
		w.Header().Set("X-Linked-Size", strconv.FormatInt(h.sizeOf(file, data), 10))
		w.Header().Set("X-Linked-Etag", `"`+sum+`"`)
		w.Header().Set("ETag", `"`+sum+`"`)
		w.Header().Set("Location", h.CDNURL()+"/cdn/"+sum)
		rec.Status = http.StatusFound
		w.WriteHeader(http.StatusFound)
	default:
		reply(http.StatusNotFound, "Repository not found")
	}
}

func (h *Hub) file(key string) ([]byte, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.files[key]
	return d, ok
}

// fault returns the status of an injected failure for this request.
func (h *Hub) fault(path, file string) (int, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, f := range h.fails {
		if f.left == 0 || (f.target != path && (file == "" || f.target != file)) {
			continue
		}
		if f.left > 0 {
			f.left--
		}
		return f.status, true
	}
	return 0, false
}

func gitSHA1(data []byte) string {
	s := sha1.New()
	fmt.Fprintf(s, "blob %d\x00", len(data))
	s.Write(data)
	return hex.EncodeToString(s.Sum(nil))
}

type treeEntry struct {
	Type string   `json:"type"`
	Oid  string   `json:"oid"`
	Size int64    `json:"size"`
	Path string   `json:"path"`
	LFS  *lfsInfo `json:"lfs,omitempty"`
}

type lfsInfo struct {
	Oid         string `json:"oid"`
	Size        int64  `json:"size"`
	PointerSize int    `json:"pointerSize"`
}

// tree answers the listing API; sub is the path after the revision.
func (h *Hub) tree(w *countingWriter, r *http.Request, rec *Request, repo string, sub []string) {
	prefix := repo + "/"
	if dir := strings.Trim(strings.Join(sub, "/"), "/"); dir != "" {
		prefix += dir + "/"
	}
	recursive := r.URL.Query().Get("recursive")
	deep := recursive == "1" || strings.EqualFold(recursive, "true")
	h.mu.Lock()
	var entries []treeEntry
	dirs := map[string]bool{}
	found := false
	for key, data := range h.files {
		if strings.HasPrefix(key, repo+"/") {
			found = true
		}
		rel, ok := strings.CutPrefix(key, prefix)
		if !ok {
			continue
		}
		dir := strings.TrimPrefix(prefix, repo+"/") // the listed directory, "" or "sub/"
		parts := strings.Split(rel, "/")
		for j := 1; j < len(parts) && (deep || j == 1); j++ {
			dirs[dir+strings.Join(parts[:j], "/")] = true
		}
		if len(parts) > 1 && !deep {
			continue
		}
		e := treeEntry{Type: "file", Oid: gitSHA1(data), Size: h.sizeLocked(key, data), Path: dir + rel}
		if strings.HasSuffix(strings.ToLower(key), ".gguf") {
			e.LFS = &lfsInfo{Oid: h.sums[key], Size: h.sizeLocked(key, data), PointerSize: 135}
		}
		entries = append(entries, e)
	}
	pageSize := h.pageSize
	h.mu.Unlock()
	if !found {
		rec.Status = http.StatusNotFound
		w.Header().Set("X-Error-Code", "RepoNotFound")
		http.Error(w, `{"error":"Repository not found"}`, http.StatusNotFound)
		return
	}
	for d := range dirs {
		entries = append(entries, treeEntry{Type: "directory", Oid: gitSHA1([]byte(d)), Path: d})
	}
	slices.SortFunc(entries, func(a, b treeEntry) int { return strings.Compare(a.Path, b.Path) })
	if pageSize > 0 {
		start, _ := strconv.Atoi(r.URL.Query().Get("cursor"))
		start = min(max(start, 0), len(entries))
		end := min(start+pageSize, len(entries))
		if end < len(entries) {
			q := r.URL.Query()
			q.Set("cursor", strconv.Itoa(end))
			w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, q.Encode()))
		}
		entries = entries[start:end]
	}
	if entries == nil {
		entries = []treeEntry{}
	}
	w.Header().Set("Content-Type", "application/json")
	rec.Status = http.StatusOK
	if r.Method == http.MethodGet {
		_ = json.NewEncoder(w).Encode(entries)
	}
}

// body serves a file's content with Range and If-Range, applying the
// armed cut, stall and corruption.
func (h *Hub) body(w *countingWriter, r *http.Request, rec *Request, file, etag string) {
	data, _ := h.file(file)
	size := h.sizeOf(file, data)
	h.mu.Lock()
	noRanges, corrupt := h.noRanges, h.corrupt[file]
	h.mu.Unlock()
	w.Header().Set("ETag", etag)
	w.Header().Set("Content-Type", "application/octet-stream")
	if !noRanges {
		w.Header().Set("Accept-Ranges", "bytes")
	}
	start, end := int64(0), size // end exclusive
	status := http.StatusOK
	if rg := r.Header.Get("Range"); rg != "" && !noRanges {
		if ir := r.Header.Get("If-Range"); ir == "" || ir == etag {
			s, e, ok := parseRange(rg, size)
			if !ok {
				w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
				rec.Status = http.StatusRequestedRangeNotSatisfiable
				w.WriteHeader(rec.Status)
				return
			}
			start, end, status = s, e, http.StatusPartialContent
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", s, e-1, size))
		}
	}
	w.Header().Set("Content-Length", strconv.FormatInt(end-start, 10))
	rec.Status = status
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	rec.Body = true
	if corrupt {
		data = slices.Clone(data)
		if len(data) > 0 {
			data[len(data)/2] ^= 0xff
		}
	}

	h.mu.Lock()
	cutPct, cut := h.cuts[file]
	cutAt := int64(-1)
	if cut && size*int64(cutPct)/100 >= start && size*int64(cutPct)/100 < end {
		cutAt = size * int64(cutPct) / 100 // armed until a response covers it
		delete(h.cuts, file)
	}
	st, stalls := h.stalls[file]
	if stalls {
		delete(h.stalls, file)
	}
	h.mu.Unlock()
	rc := http.NewResponseController(w)
	const chunk = 32 << 10
	for pos := start; pos < end; {
		next := min(pos+chunk, end)
		if stalls && st.after >= pos && st.after < next {
			next = st.after
		}
		if cutAt >= pos && cutAt < next {
			next = cutAt
		}
		if next > pos {
			if _, err := w.Write(window(data, pos, next)); err != nil {
				return
			}
			pos = next
		}
		if stalls && pos >= st.after {
			stalls = false
			_ = rc.Flush()
			select {
			case <-time.After(st.d):
			case <-r.Context().Done():
				return
			}
		}
		if cutAt >= 0 && pos >= cutAt {
			_ = rc.Flush()
			panic(http.ErrAbortHandler) // closes the connection mid-body
		}
	}
}

// parseRange parses a single "bytes=a-b", "bytes=a-" or "bytes=-n" range
// and returns [start, end).
func parseRange(v string, size int64) (int64, int64, bool) {
	spec, ok := strings.CutPrefix(v, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, 0, false
	}
	a, b, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, 0, false
	}
	if a == "" {
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 {
			return 0, 0, false
		}
		return max(size-n, 0), size, size > 0
	}
	s, err := strconv.ParseInt(a, 10, 64)
	if err != nil || s < 0 || s >= size {
		return 0, 0, false
	}
	e := size
	if b != "" {
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n < s {
			return 0, 0, false
		}
		e = min(n+1, size)
	}
	return s, e, true
}
