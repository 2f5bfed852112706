package download

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rbee-dev/rbee"
)

// Store is a content-addressed file store:
//
//	Dir/blobs/sha256-<hex>   verified files, named by their sha256
//	Dir/partial/<key>.part   downloads in progress, kept for resume
//	Dir/urls/<key>.json      for sources that state no sha256: the ETag,
//	                         size and sha256 a URL had, so that a second
//	                         Fetch of an unchanged URL is not a download
//
// A file enters blobs/ only by rename after its size and sha256 were
// verified, so every blob is whole.
type Store struct {
	Dir string
}

// Blob is a verified file in a Store.
type Blob struct {
	SHA256, Path string
	Size         int64
}

// Progress is a download's state, reported at most about five times a
// second and once at the end.
type Progress struct {
	Done, Total int64         // Total is -1 when the server states no size
	Rate        float64       // bytes per second over this Fetch, resumed bytes not counted
	ETA         time.Duration // 0 when unknown
	Attempt     int           // 1 for the first attempt, counting every retry
	// LastError is why the attempt before Attempt failed, short, for
	// people ("no data for 30s at byte 0", "503 Service Unavailable"); ""
	// on the first attempt. A retry of the first request (before the
	// size is known: Total -1) is reported with it too.
	LastError string
}

// Options tune Fetch. The zero value takes the defaults.
type Options struct {
	// Retries is how many times an attempt that failed for a reason worth
	// retrying (network error, stall, 5xx, 429) is retried in a row; an
	// attempt that made progress resets the count. Default 5; negative: none.
	Retries int
	// Backoff is the wait before the first retry; it doubles per retry up
	// to 5s (or Backoff, if larger). Default 200ms.
	Backoff time.Duration
	// StallTimeout aborts an attempt that received no answer or no byte
	// for this long, the first request (HEAD) included; the retry resumes
	// where it stopped. Default 30s.
	StallTimeout time.Duration
	// Progress, when set, is called from the downloading goroutine; it
	// should return quickly.
	Progress func(Progress)
	// MinFree is the space to leave free beyond the file. Default 256 MiB.
	MinFree uint64
	// Check, when set, inspects the whole file, its size and sha256
	// verified, before it enters blobs/ (and a blob found in the store
	// before it is returned): an error deletes the file, so that no blob
	// and no URL record is left of it, and is returned wrapped. Pulls of
	// models check that the file is a GGUF here.
	Check func(path string) error
	// Stated, when set, hears whether the file that was just downloaded
	// was checked against a sha256 its source stated (true), or only
	// against the size the server announced (false): what a "verified"
	// may claim.
	Stated func(sha256 bool)
}

const (
	defaultRetries = 5
	defaultBackoff = 200 * time.Millisecond
	maxBackoff     = 5 * time.Second
	defaultStall   = 30 * time.Second
	defaultMinFree = 256 << 20
	progressEvery  = 200 * time.Millisecond
	copyBuffer     = 1 << 20
	hashBuffers    = 4
)

func (o Options) withDefaults() Options {
	switch {
	case o.Retries == 0:
		o.Retries = defaultRetries
	case o.Retries < 0:
		o.Retries = 0
	}
	if o.Backoff <= 0 {
		o.Backoff = defaultBackoff
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = defaultStall
	}
	if o.MinFree == 0 {
		o.MinFree = defaultMinFree
	}
	return o
}

// Fetch makes r's file present in the store and returns its path and
// sha256. It resolves r if needed and asks the server for the file's size
// and sha256 first; a file already in the store is returned without
// fetching a byte. Otherwise it checks the free space, then downloads into
// partial/ with resume (Range, If-Range), a stall timeout and retries with
// backoff, and verifies size and sha256 before the file enters blobs/.
//
// Concurrent Fetches of the same file in one process share one download
// (and its progress). ctx bounds this caller's wait: when it ends, Fetch
// returns ctx.Err() and, if no other caller waits, the download stops and
// its partial file is kept for a later Fetch to resume.
//
// A checksum or size mismatch returns an error wrapping ErrChecksum; too
// little space before or during the download one wrapping ErrNoSpace. Both
// delete the partial file, as does a failed opt.Check, and a download that
// gives up with nothing written.
func (s *Store) Fetch(ctx context.Context, h *Hub, r Ref, opt Options) (path, sum string, err error) {
	if s.Dir == "" {
		return "", "", errors.New("fetch: store has no directory")
	}
	if h == nil {
		h = &Hub{}
	}
	if opt.Retries == 0 {
		opt.Retries = h.Retries
	}
	if opt.Backoff == 0 {
		opt.Backoff = h.Backoff
	}
	if opt.StallTimeout == 0 {
		opt.StallTimeout = h.StallTimeout
	}
	opt = opt.withDefaults()
	// The first requests are retried like the body, and each retry is
	// reported: a pull must not sit silent while it waits on a server.
	told := func(attempt int, err error) {
		if opt.Progress != nil {
			opt.Progress(Progress{Total: -1, Attempt: attempt, LastError: reason(err)})
		}
	}
	r, err = h.resolve(ctx, r, opt, told)
	if err != nil {
		return "", "", fmt.Errorf("fetch: %w", err)
	}
	rem, err := h.head(ctx, r, opt, told)
	if err != nil {
		return "", "", fmt.Errorf("fetch: %w", err)
	}
	if path, sum, ok := s.found(h.url(r), rem, opt); ok {
		return path, sum, nil
	}
	key := rem.SHA256
	if key == "" {
		key = hashString(h.url(r) + "\n" + rem.ETag)
	}
	dir, err := filepath.Abs(s.Dir)
	if err != nil {
		return "", "", fmt.Errorf("fetch: %w", err)
	}
	return flights.do(ctx, dir+"\x00"+key, opt.Progress, func(ctx context.Context, report func(Progress)) (string, string, error) {
		if path, sum, ok := s.found(h.url(r), rem, opt); ok {
			return path, sum, nil // the flight before this one stored it
		}
		opt.Progress = report
		return s.download(ctx, h, r, rem, key, opt)
	})
}

// backoff is the wait before retry number failures (from 1).
func backoff(opt Options, failures int) time.Duration {
	limit := max(maxBackoff, opt.Backoff)
	if failures > 20 {
		return limit
	}
	return min(opt.Backoff<<(failures-1), limit)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (s *Store) blobPath(sum string) string {
	return filepath.Join(s.Dir, "blobs", "sha256-"+sum)
}

// lookup finds rem's file in the store: by the sha256 the server states,
// or else by what the URL index recorded for this URL and ETag.
func (s *Store) lookup(u string, rem Remote) (path, sum string, ok bool) {
	sum = rem.SHA256
	if sum == "" {
		if rem.ETag == "" {
			return "", "", false
		}
		e, err := s.urlRecord(u)
		if err != nil || e.URL != u || e.ETag != rem.ETag || e.Size != rem.Size {
			return "", "", false
		}
		sum = sha256FromETag(e.SHA256)
		if sum == "" {
			return "", "", false
		}
	}
	path = s.blobPath(sum)
	st, err := os.Stat(path)
	if err != nil || !st.Mode().IsRegular() || (rem.Size >= 0 && st.Size() != rem.Size) {
		return "", "", false
	}
	return path, sum, true
}

// found is lookup with opt.Check: a blob that fails it (stored before the
// check existed, or by a caller without it) is removed with its records,
// so that it is fetched again.
func (s *Store) found(u string, rem Remote, opt Options) (path, sum string, ok bool) {
	path, sum, ok = s.lookup(u, rem)
	if !ok || opt.Check == nil || opt.Check(path) == nil {
		return path, sum, ok
	}
	os.Remove(path)
	os.Remove(s.verifiedPath(path))
	if e, err := s.urlRecord(u); err == nil && sha256FromETag(e.SHA256) == sum {
		os.Remove(s.urlPath(u))
	}
	return "", "", false
}

func (s *Store) urlPath(u string) string {
	return filepath.Join(s.Dir, "urls", hashString(u)+".json")
}

func (s *Store) urlRecord(u string) (urlEntry, error) {
	var e urlEntry
	b, err := os.ReadFile(s.urlPath(u))
	if err == nil {
		err = json.Unmarshal(b, &e)
	}
	return e, err
}

// urlEntry is a record of the URL index.
type urlEntry struct {
	URL    string `json:"url"`
	ETag   string `json:"etag"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

func hashString(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// download fetches rem into partial/<key>.part and moves it into blobs/.
func (s *Store) download(ctx context.Context, h *Hub, r Ref, rem Remote, key string, opt Options) (path, sum string, err error) {
	partDir, blobDir := filepath.Join(s.Dir, "partial"), filepath.Join(s.Dir, "blobs")
	for _, d := range []string{partDir, blobDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", "", fmt.Errorf("fetch %s: %w", r.Raw, err)
		}
	}
	part := filepath.Join(partDir, key+".part")
	var off int64
	if st, err := os.Stat(part); err == nil {
		off = st.Size()
	}
	// Without a sha256 or an ETag nothing ties an old partial to this
	// version of the file: start over.
	if (rem.Size >= 0 && off > rem.Size) || (rem.SHA256 == "" && rem.ETag == "") {
		off = 0
	}
	if err := s.checkSpace(r, rem.Size, off, opt.MinFree); err != nil {
		return "", "", err
	}
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", "", fmt.Errorf("fetch %s: %w", r.Raw, err)
	}
	t := &transfer{h: h, r: r, rem: rem, f: f, hash: sha256.New(), opt: opt}
	t.async = newAsyncHash(t.hash, hashBuffers, copyBuffer)
	defer t.async.close()
	closed := false
	discard := false // the partial is worth nothing: remove it
	defer func() {
		if !closed {
			f.Close()
		}
		if err == nil {
			return
		}
		// An empty partial holds nothing to resume (a server that
		// never sent a byte): it would only be litter.
		if st, serr := os.Stat(part); discard || errors.Is(err, ErrChecksum) || errors.Is(err, ErrNoSpace) || serr == nil && st.Size() == 0 {
			os.Remove(part)
		}
	}()
	t.writeback = newWriteback(f)
	writebackRunning := true
	defer func() { // before f is closed
		if writebackRunning {
			t.writeback.stop()
		}
		t.writeback.wait()
	}()
	if err := t.resumeFrom(off); err != nil {
		return "", "", err
	}
	t.prog = progress{fn: opt.Progress, total: rem.Size, start: time.Now(), startDone: t.off}
	if err := t.run(ctx); err != nil {
		return "", "", err
	}

	t.async.sync()
	sum = hex.EncodeToString(t.hash.Sum(nil))
	if rem.Size >= 0 && t.off != rem.Size {
		return "", "", fmt.Errorf("fetch %s: %w: got %d bytes, the server stated %d; the download was deleted", r.Raw, ErrChecksum, t.off, rem.Size)
	}
	if rem.SHA256 != "" && sum != rem.SHA256 {
		return "", "", fmt.Errorf("fetch %s: %w: got sha256 %s, the source states %s; the download was deleted", r.Raw, ErrChecksum, sum, rem.SHA256)
	}
	if opt.Stated != nil {
		opt.Stated(rem.SHA256 != "")
	}
	writebackRunning = false
	t.writeback.stop()
	syncErr := f.Sync()
	t.writeback.wait()
	if syncErr != nil {
		return "", "", fmt.Errorf("fetch %s: %w", r.Raw, diskError(syncErr))
	}
	closed = true
	if err := f.Close(); err != nil {
		return "", "", fmt.Errorf("fetch %s: %w", r.Raw, diskError(err))
	}
	// Checked before it enters blobs/: a file that fails is never a blob,
	// nor in the URL index.
	if opt.Check != nil {
		if err := opt.Check(part); err != nil {
			discard = true
			return "", "", fmt.Errorf("fetch %s: %w; the download was deleted", r.Raw, err)
		}
	}
	path = s.blobPath(sum)
	if err := os.Rename(part, path); err != nil {
		return "", "", fmt.Errorf("fetch %s: %w", r.Raw, err)
	}
	syncDir(blobDir)
	s.Verified(path, sum) // hashed on the way in: the first job need not hash it again
	if rem.SHA256 == "" && rem.ETag != "" {
		s.index(h.url(r), rem, sum)
	}
	return path, sum, nil
}

// index records what an unchecksummed URL held; losing the record only
// costs a download, so errors are ignored.
func (s *Store) index(u string, rem Remote, sum string) {
	b, err := json.Marshal(urlEntry{URL: u, ETag: rem.ETag, Size: rem.Size, SHA256: sum})
	if err != nil {
		return
	}
	dir := filepath.Join(s.Dir, "urls")
	if os.MkdirAll(dir, 0o755) != nil {
		return
	}
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return
	}
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil && cerr == nil {
		err = os.Rename(tmp.Name(), s.urlPath(u))
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// checkSpace refuses a download that would leave less than minFree on the
// store's filesystem.
func (s *Store) checkSpace(r Ref, size, off int64, minFree uint64) error {
	free, known, err := freeBytes(s.Dir)
	if err != nil {
		return fmt.Errorf("fetch %s: check free space: %w", r.Raw, err)
	}
	if !known {
		return nil
	}
	var need uint64
	if size > off {
		need = uint64(size - off)
	}
	if free < satAdd(need, minFree) {
		return fmt.Errorf("fetch %s: %w in %s: need %s for the file and %s to keep free, %s free",
			r.Raw, ErrNoSpace, s.Dir, rbee.Bytes(need), rbee.Bytes(minFree), rbee.Bytes(free))
	}
	return nil
}

// diskError marks a full disk (or quota) as ErrNoSpace.
func diskError(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return err
}

// transfer is one file's download across attempts.
type transfer struct {
	h     *Hub
	r     Ref
	rem   Remote
	f     *os.File
	hash  hash.Hash // read or reset only after async.sync()
	async *asyncHash
	off   int64 // bytes in f, all of them given to async
	// writeback flushes f to disk behind the download.
	writeback *writeback
	opt       Options
	prog      progress
}

// resumeFrom keeps the first off bytes of the partial file, hashing them,
// and drops the rest.
func (t *transfer) resumeFrom(off int64) error {
	t.async.sync()
	t.hash.Reset()
	t.off = 0
	if err := t.f.Truncate(off); err != nil {
		return fmt.Errorf("fetch %s: %w", t.r.Raw, err)
	}
	if off > 0 {
		buf := t.async.buffer()
		n, err := io.CopyBuffer(t.hash, io.NewSectionReader(t.f, 0, off), buf)
		t.async.release(buf)
		if err != nil || n != off {
			return t.resumeFrom(0)
		}
	}
	if _, err := t.f.Seek(off, io.SeekStart); err != nil {
		return fmt.Errorf("fetch %s: %w", t.r.Raw, err)
	}
	t.off = off
	if t.prog.startDone > off {
		t.prog.startDone, t.prog.start = off, time.Now()
	}
	return nil
}

// run makes attempts until the file is whole or it is time to give up.
func (t *transfer) run(ctx context.Context) error {
	failures := 0
	for attempt := 1; ; attempt++ {
		t.prog.attempt = attempt
		t.prog.report(t.off, true)
		before := t.off
		err := t.attempt(ctx)
		if err == nil {
			t.prog.report(t.off, true)
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("fetch %s: %w", t.r.Raw, ctx.Err())
		}
		if !retryable(err) {
			return err
		}
		if t.off > before {
			failures = 0
		}
		failures++
		if failures > t.opt.Retries {
			return fmt.Errorf("fetch %s: giving up after %d attempts: %w", t.r.Raw, attempt, err)
		}
		t.prog.lastErr = reason(err)
		if err := sleep(ctx, backoff(t.opt, failures)); err != nil {
			return fmt.Errorf("fetch %s: %w", t.r.Raw, err)
		}
	}
}

// retryError marks an error worth another attempt.
type retryError struct{ err error }

func (e retryError) Error() string { return e.err.Error() }
func (e retryError) Unwrap() error { return e.err }

func retryable(err error) bool {
	var re retryError
	var he *httpError
	return errors.As(err, &re) || errors.As(err, &he) && he.retryable()
}

// attempt makes one request and copies its body to the partial file. The
// request is cancelled when no byte arrives for StallTimeout.
func (t *transfer) attempt(ctx context.Context) error {
	if t.rem.Size >= 0 && t.off == t.rem.Size {
		return nil // a previous run got it all but did not verify
	}
	actx, watch, stop := watchStall(ctx, t.opt.StallTimeout)
	defer stop()
	failed := func(err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("fetch %s: %w", t.r.Raw, watch.failed(ctx, err, t.off))
	}

	hdr := http.Header{}
	if t.off > 0 {
		hdr.Set("Range", "bytes="+strconv.FormatInt(t.off, 10)+"-")
		if t.rem.ETag != "" {
			hdr.Set("If-Range", t.rem.ETag)
		}
	}
	resp, final, err := t.h.do(actx, http.MethodGet, t.h.url(t.r), hdr, nil)
	if err != nil {
		return failed(err)
	}
	defer resp.Body.Close()
	watch.kick()
	switch resp.StatusCode {
	case http.StatusPartialContent:
		if start, ok := contentRangeStart(resp.Header.Get("Content-Range")); !ok || start != t.off {
			if err := t.resumeFrom(0); err != nil {
				return err
			}
			return retryError{fmt.Errorf("fetch %s: asked for bytes from %d, got Content-Range %q", t.r.Raw, t.off, resp.Header.Get("Content-Range"))}
		}
	case http.StatusOK:
		if t.off > 0 { // no ranges here, or the file changed (If-Range): start over
			if err := t.resumeFrom(0); err != nil {
				return err
			}
		}
	case http.StatusRequestedRangeNotSatisfiable:
		if err := t.resumeFrom(0); err != nil {
			return err
		}
		return retryError{fmt.Errorf("fetch %s: server refused the range to resume from; starting over", t.r.Raw)}
	default:
		return fmt.Errorf("fetch %w", t.h.statusError(t.r, final, resp))
	}

	for {
		// Fill the buffer before writing: fewer, larger writes matter where
		// syscalls are dear (VMs, gVisor) and cost nothing elsewhere.
		buf := t.async.buffer()
		n, rerr := 0, error(nil)
		for n < len(buf) && rerr == nil {
			var m int
			m, rerr = resp.Body.Read(buf[n:])
			if m > 0 {
				watch.kick()
				n += m
			}
		}
		if n == 0 {
			t.async.release(buf)
		} else {
			if t.rem.Size >= 0 && t.off+int64(n) > t.rem.Size {
				t.async.release(buf)
				return fmt.Errorf("fetch %s: %w: the server sent more than the %d bytes it stated; the download was deleted", t.r.Raw, ErrChecksum, t.rem.Size)
			}
			w, werr := t.f.Write(buf[:n])
			t.async.hash(buf[:w])
			t.off += int64(w)
			t.writeback.wrote(t.off)
			if werr != nil {
				if err := diskError(werr); errors.Is(err, ErrNoSpace) {
					return fmt.Errorf("fetch %s: disk filled at byte %d%s; the download was deleted: %w", t.r.Raw, t.off, t.room(), err)
				}
				return fmt.Errorf("fetch %s: %w", t.r.Raw, werr)
			}
			t.prog.report(t.off, false)
		}
		switch {
		case rerr == io.EOF:
			if t.rem.Size >= 0 && t.off < t.rem.Size {
				return retryError{fmt.Errorf("fetch %s: body ended at byte %d of %d", t.r.Raw, t.off, t.rem.Size)}
			}
			return nil
		case rerr != nil:
			return failed(retryError{rerr})
		}
	}
}

// room says, for a disk that filled, what the file needs and what is free
// once its partial download is deleted.
func (t *transfer) room() string {
	free, known, err := freeBytes(filepath.Dir(t.f.Name()))
	if err != nil || !known || t.rem.Size < 0 {
		return ""
	}
	free = satAdd(free, uint64(t.off)) // the partial goes
	return fmt.Sprintf(" of %s: it needs %s and %s kept free, %s are free there; free space and pull again",
		rbee.Bytes(uint64(t.rem.Size)), rbee.Bytes(uint64(t.rem.Size)), rbee.Bytes(t.opt.MinFree), rbee.Bytes(free))
}

// contentRangeStart parses the first byte of "bytes START-END/SIZE".
func contentRangeStart(v string) (int64, bool) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	if !ok {
		return 0, false
	}
	start, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(start), 10, 64)
	return n, err == nil && n >= 0
}

// progress rate-limits and computes Progress reports.
type progress struct {
	fn        func(Progress)
	total     int64
	start     time.Time
	startDone int64
	last      time.Time
	attempt   int
	lastErr   string // why the attempt before this one failed
}

func (p *progress) report(done int64, force bool) {
	if p.fn == nil {
		return
	}
	now := time.Now()
	if !force && now.Sub(p.last) < progressEvery {
		return
	}
	p.last = now
	pr := Progress{Done: done, Total: p.total, Attempt: p.attempt, LastError: p.lastErr}
	if el := now.Sub(p.start).Seconds(); el > 0 && done > p.startDone {
		pr.Rate = float64(done-p.startDone) / el
	}
	if pr.Rate > 0 && p.total >= done {
		pr.ETA = time.Duration(float64(p.total-done) / pr.Rate * float64(time.Second))
	}
	p.fn(pr)
}

// Remove deletes the blob with sha256 sha, and the URL records that point
// at it (a later pull of the URL must download again, not find a record of
// a blob that is gone). A blob that is not there yields an error wrapping
// ErrNotFound and fs.ErrNotExist.
func (s *Store) Remove(sha string) error {
	sum := sha256FromETag(sha)
	if sum == "" || len(sha) != len(sum) {
		return fmt.Errorf("remove blob %q: not a sha256", sha)
	}
	if ents, err := os.ReadDir(filepath.Join(s.Dir, "urls")); err == nil {
		for _, e := range ents {
			p := filepath.Join(s.Dir, "urls", e.Name())
			var u urlEntry
			if b, err := os.ReadFile(p); err == nil && json.Unmarshal(b, &u) == nil && sha256FromETag(u.SHA256) == sum {
				os.Remove(p)
			}
		}
	}
	err := os.Remove(s.blobPath(sum))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove blob %s: %w: %w", sum, ErrNotFound, err)
	}
	if err != nil {
		return fmt.Errorf("remove blob %s: %w", sum, err)
	}
	return nil
}
