package download

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/download/hubtest"
)

const modelFile = "org/repo/model-Q4_K_M.gguf"

func TestFetch(t *testing.T) {
	t.Parallel()
	data := randomBytes(3<<20+17, 1)
	f := newFixture(t, map[string][]byte{modelFile: data})
	var reports []Progress
	opt := fast
	opt.Progress = func(p Progress) { reports = append(reports, p) }

	path, sum, err := f.store.Fetch(t.Context(), f.hub, mustRef(t, "hf:"+modelFile), opt)
	if err != nil {
		t.Fatal(err)
	}
	if want := hubtest.SHA256(data); sum != want {
		t.Errorf("got sum %s, want %s", sum, want)
	}
	if want := filepath.Join(f.store.Dir, "blobs", "sha256-"+sum); path != want {
		t.Errorf("got path %s, want %s", path, want)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Errorf("stored file differs from the served one")
	}
	if got := dirFiles(t, filepath.Join(f.store.Dir, "partial")); len(got) != 0 {
		t.Errorf("got partial files %v, want none", got)
	}
	if len(reports) < 2 {
		t.Fatalf("got %d progress reports, want at least a first and a last", len(reports))
	}
	last := reports[len(reports)-1]
	if last.Done != int64(len(data)) || last.Total != int64(len(data)) || last.Attempt != 1 {
		t.Errorf("got last progress %+v, want Done = Total = %d, Attempt 1", last, len(data))
	}

	// Already in the store: no body is fetched again, from a URL ref either.
	for _, ref := range []string{"hf:" + modelFile, f.fake.ResolveURL(modelFile, "main")} {
		p2, s2, err := f.store.Fetch(t.Context(), f.hub, mustRef(t, ref), fast)
		if err != nil || p2 != path || s2 != sum {
			t.Errorf("second Fetch(%s) = %s, %s, %v; want %s, %s", ref, p2, s2, err, path, sum)
		}
	}
	if got := f.fake.BodyGETs(modelFile); got != 1 {
		t.Errorf("got %d GETs of the body, want 1", got)
	}

	blobs, err := f.store.List()
	if err != nil {
		t.Fatal(err)
	}
	if want := []Blob{{SHA256: sum, Path: path, Size: int64(len(data))}}; !slices.Equal(blobs, want) {
		t.Errorf("List() = %+v, want %+v", blobs, want)
	}
	if err := f.store.Remove(sum); err != nil {
		t.Fatal(err)
	}
	if blobs, _ := f.store.List(); len(blobs) != 0 {
		t.Errorf("after Remove, List() = %+v, want none", blobs)
	}

	if err := f.store.Remove(sum); !errors.Is(err, ErrNotFound) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Remove of a removed blob: got %v, want ErrNotFound", err)
	}
	if err := f.store.Remove("../../etc/passwd"); err == nil {
		t.Errorf("Remove of a non-sha: got nil, want an error")
	}
}

func TestFetchResumesAfterCut(t *testing.T) {
	t.Parallel()
	data := randomBytes(4<<20, 2)
	f := newFixture(t, map[string][]byte{modelFile: data})
	f.fake.CutOnce(modelFile, 40)

	var attempts []int
	opt := fast
	opt.Progress = func(p Progress) { attempts = append(attempts, p.Attempt) }
	_, sum, err := f.store.Fetch(t.Context(), f.hub, mustRef(t, "hf:"+modelFile), opt)
	if err != nil {
		t.Fatal(err)
	}
	if sum != hubtest.SHA256(data) {
		t.Errorf("got sum %s, want %s", sum, hubtest.SHA256(data))
	}
	want := []string{"", fmt.Sprintf("bytes=%d-", f.fake.CutOffset(modelFile, 40))}
	if got := f.fake.Ranges(modelFile); !slices.Equal(got, want) {
		t.Errorf("got Range headers %q, want %q", got, want)
	}
	if got := f.fake.BytesServed(modelFile); got != int64(len(data)) {
		t.Errorf("server sent %d bytes, want %d (each byte once)", got, len(data))
	}
	if slices.Max(attempts) != 2 {
		t.Errorf("got attempts %v in progress, want up to 2", attempts)
	}
	// The resume carried the CDN's ETag, so a changed file would restart.
	for _, r := range f.fake.Requests() {
		if r.Range != "" && r.IfRange != `"`+sum+`"` {
			t.Errorf("resume request %s %s had If-Range %q, want the ETag", r.Method, r.Path, r.IfRange)
		}
	}
}

func TestFetchStallRetriesAndResumes(t *testing.T) {
	t.Parallel()
	data := randomBytes(2<<20, 3)
	f := newFixture(t, map[string][]byte{modelFile: data})
	f.fake.StallOnce(modelFile, 1<<20, 10*time.Second)
	opt := fast
	opt.StallTimeout = 300 * time.Millisecond
	start := time.Now()
	_, sum, err := f.store.Fetch(t.Context(), f.hub, mustRef(t, "hf:"+modelFile), opt)
	if err != nil {
		t.Fatal(err)
	}
	if sum != hubtest.SHA256(data) {
		t.Errorf("got sum %s, want %s", sum, hubtest.SHA256(data))
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("took %s; the stall timeout did not cut the 10s stall", el)
	}
	want := []string{"", fmt.Sprintf("bytes=%d-", 1<<20)}
	if got := f.fake.Ranges(modelFile); !slices.Equal(got, want) {
		t.Errorf("got Range headers %q, want %q", got, want)
	}
}

func TestFetchRestartsWhenRangesIgnored(t *testing.T) {
	t.Parallel()
	data := randomBytes(1<<20, 4)
	f := newFixture(t, map[string][]byte{modelFile: data})
	f.fake.NoRanges()
	f.fake.CutOnce(modelFile, 50)
	_, sum, err := f.store.Fetch(t.Context(), f.hub, mustRef(t, "hf:"+modelFile), fast)
	if err != nil {
		t.Fatal(err)
	}
	if sum != hubtest.SHA256(data) {
		t.Errorf("got sum %s, want %s (a 200 to a Range request must restart from 0)", sum, hubtest.SHA256(data))
	}
	if got := f.fake.BodyGETs(modelFile); got != 2 {
		t.Errorf("got %d GETs, want 2", got)
	}
}

func TestFetchErrors(t *testing.T) {
	t.Parallel()
	data := randomBytes(64<<10, 5)
	tests := []struct {
		name    string
		ref     string
		token   string
		setup   func(*hubtest.Hub)
		is      error
		wantErr []string
		gets    int // GETs of the body the server should see
	}{
		{name: "404 names the ref and where it looked", ref: "hf:org/repo/missing.gguf", is: ErrNotFound,
			wantErr: []string{"hf:org/repo/missing.gguf", "/org/repo/resolve/main/missing.gguf", "not found"}},
		{name: "404 from a URL", ref: "/plain/org/repo/nope.gguf", is: ErrNotFound,
			wantErr: []string{"/plain/org/repo/nope.gguf", "not found"}},
		{name: "401 says to set HF_TOKEN", ref: "hf:" + modelFile, setup: func(h *hubtest.Hub) { h.Gate("org/repo", "secret") },
			is: ErrAuth, wantErr: []string{"hf:" + modelFile, "401", "set HF_TOKEN", "read access", "license"}},
		{name: "403 says to set HF_TOKEN", ref: "hf:" + modelFile, token: "wrong", setup: func(h *hubtest.Hub) { h.Gate("org/repo", "secret") },
			is: ErrAuth, wantErr: []string{"403", "check HF_TOKEN"}},
		{name: "403 from the CDN is not retried", ref: "hf:" + modelFile,
			setup: func(h *hubtest.Hub) { h.SeparateCDN(); h.Fail("/cdn/"+hubtest.SHA256(data), http.StatusForbidden, 0) },
			is:    ErrAuth, wantErr: []string{"403", "/cdn/", "refused access"}},
		{name: "500 is retried, then given up", ref: "hf:" + modelFile,
			setup:   func(h *hubtest.Hub) { h.Fail(modelFile, http.StatusInternalServerError, 0) },
			wantErr: []string{"500", "giving up after 4 attempts"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, map[string][]byte{modelFile: data})
			f.hub.Token = tt.token
			if tt.setup != nil {
				tt.setup(f.fake)
			}
			ref := tt.ref
			if strings.HasPrefix(ref, "/") {
				ref = f.fake.URL + ref
			}
			_, _, err := f.store.Fetch(t.Context(), f.hub, mustRef(t, ref), fast)
			if err == nil {
				t.Fatal("got nil error")
			}
			t.Logf("error: %v", err)
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("got %v, want it to wrap %v", err, tt.is)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("got error %q, want it to contain %q", err, s)
				}
			}
			if blobs, _ := f.store.List(); len(blobs) != 0 {
				t.Errorf("got blobs %v, want none", blobs)
			}
		})
	}
}

func TestFetchRetriesServerErrors(t *testing.T) {
	t.Parallel()
	data := randomBytes(64<<10, 6)
	f := newFixture(t, map[string][]byte{modelFile: data})
	f.fake.Fail(modelFile, http.StatusServiceUnavailable, 3) // the HEAD, then GETs
	_, sum, err := f.store.Fetch(t.Context(), f.hub, mustRef(t, "hf:"+modelFile), Options{Retries: 5, Backoff: time.Millisecond, MinFree: 1})
	if err != nil || sum != hubtest.SHA256(data) {
		t.Fatalf("got %s, %v; want the file after retries", sum, err)
	}
	var fails int
	for _, r := range f.fake.Requests() {
		if r.Status == http.StatusServiceUnavailable {
			fails++
		}
	}
	if fails != 3 {
		t.Errorf("got %d 503s, want 3", fails)
	}
}

func TestFetchGatedWithToken(t *testing.T) {
	t.Parallel()
	data := randomBytes(256<<10, 7)
	f := newFixture(t, map[string][]byte{modelFile: data})
	f.fake.Gate("org/repo", "secret")
	f.fake.SeparateCDN()
	f.fake.CutOnce(modelFile, 50) // so that a resume goes through the redirect again
	f.hub.Token = "secret"
	_, sum, err := f.store.Fetch(t.Context(), f.hub, mustRef(t, "hf:org/repo"), fast)
	if err != nil {
		t.Fatal(err)
	}
	if sum != hubtest.SHA256(data) {
		t.Errorf("got sum %s, want %s", sum, hubtest.SHA256(data))
	}
	var hub, cdn int
	for _, r := range f.fake.Requests() {
		switch {
		case r.Server == "hub" && r.Auth != "Bearer secret":
			t.Errorf("hub request %s %s had Authorization %q, want the token", r.Method, r.Path, r.Auth)
		case r.Server == "cdn" && r.Auth != "":
			t.Errorf("CDN request %s %s had Authorization %q, want none", r.Method, r.Path, r.Auth)
		}
		if r.Server == "hub" {
			hub++
		} else {
			cdn++
		}
	}
	if hub == 0 || cdn < 3 { // HEAD, GET, resumed GET
		t.Errorf("got %d hub and %d CDN requests, want both hosts used", hub, cdn)
	}
}

func TestFetchWrongChecksum(t *testing.T) {
	t.Parallel()
	data := randomBytes(1<<20, 8)
	f := newFixture(t, map[string][]byte{modelFile: data})
	f.fake.Corrupt(modelFile)
	_, _, err := f.store.Fetch(t.Context(), f.hub, mustRef(t, "hf:"+modelFile), fast)
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("got %v, want ErrChecksum", err)
	}
	if !strings.Contains(err.Error(), hubtest.SHA256(data)) {
		t.Errorf("got %q, want the expected sha256 in it", err)
	}
	if got := dirFiles(t, filepath.Join(f.store.Dir, "partial")); len(got) != 0 {
		t.Errorf("got partial files %v, want the corrupt download removed", got)
	}
	if got := dirFiles(t, filepath.Join(f.store.Dir, "blobs")); len(got) != 0 {
		t.Errorf("got blobs %v, want none", got)
	}
	if got := f.fake.BodyGETs(modelFile); got != 1 {
		t.Errorf("got %d GETs, want 1 (a checksum mismatch is not retried)", got)
	}
}

func TestFetchConcurrentSharesOneDownload(t *testing.T) {
	t.Parallel()
	data := randomBytes(2<<20, 9)
	f := newFixture(t, map[string][]byte{modelFile: data})
	f.fake.StallOnce(modelFile, 1<<20, 300*time.Millisecond) // keep the download in flight
	const n = 4
	type result struct {
		path, sum string
		err       error
	}
	results := make([]result, n)
	var progressed [n]bool
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			opt := fast
			opt.Progress = func(Progress) {
				mu.Lock()
				progressed[i] = true
				mu.Unlock()
			}
			// Different Store values on the same directory share too.
			s := &Store{Dir: f.store.Dir}
			p, sum, err := s.Fetch(t.Context(), f.hub, mustRef(t, "hf:"+modelFile), opt)
			results[i] = result{p, sum, err}
		})
	}
	wg.Wait()
	for i, r := range results {
		if r.err != nil || r.path != results[0].path || r.sum != hubtest.SHA256(data) {
			t.Errorf("Fetch %d = %+v, want %s", i, r, results[0].path)
		}
	}
	if got := f.fake.BodyGETs(modelFile); got != 1 {
		t.Errorf("the server saw %d GETs of the body, want 1", got)
	}
	if !progressed[0] && !progressed[1] {
		t.Errorf("no caller got progress")
	}
}

func TestFetchCancelKeepsPartialForResume(t *testing.T) {
	t.Parallel()
	data := randomBytes(2<<20, 10)
	f := newFixture(t, map[string][]byte{modelFile: data})
	f.fake.StallOnce(modelFile, 1<<20, 10*time.Second)
	part := filepath.Join(f.store.Dir, "partial", hubtest.SHA256(data)+".part")

	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		defer cancel()
		for ctx.Err() == nil {
			if st, err := os.Stat(part); err == nil && st.Size() == 1<<20 {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	_, _, err := f.store.Fetch(ctx, f.hub, mustRef(t, "hf:"+modelFile), fast)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if st, err := os.Stat(part); err != nil || st.Size() != 1<<20 {
		t.Fatalf("partial after cancel: %v, %v; want 1 MiB kept", st, err)
	}

	// A later Fetch (after a crash, say) resumes from the partial.
	_, sum, err := f.store.Fetch(t.Context(), f.hub, mustRef(t, "hf:"+modelFile), fast)
	if err != nil || sum != hubtest.SHA256(data) {
		t.Fatalf("resumed Fetch = %s, %v; want the file", sum, err)
	}
	want := []string{"", fmt.Sprintf("bytes=%d-", 1<<20)}
	if got := f.fake.Ranges(modelFile); !slices.Equal(got, want) {
		t.Errorf("got Range headers %q, want %q", got, want)
	}
}

func TestFetchURLWithoutChecksum(t *testing.T) {
	t.Parallel()
	data := randomBytes(512<<10, 11)
	f := newFixture(t, map[string][]byte{modelFile: data})
	f.fake.CutOnce(modelFile, 30)
	ref := mustRef(t, f.fake.PlainURL(modelFile))
	rem, err := f.hub.Head(t.Context(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if rem.SHA256 != "" || rem.ETag == "" || rem.Size != int64(len(data)) {
		t.Fatalf("Head = %+v, want no sha256, an ETag and the size", rem)
	}
	path, sum, err := f.store.Fetch(t.Context(), f.hub, ref, fast)
	if err != nil || sum != hubtest.SHA256(data) {
		t.Fatalf("Fetch = %s, %v; want sum %s", sum, err, hubtest.SHA256(data))
	}
	// The URL index answers the second Fetch without a download.
	p2, s2, err := f.store.Fetch(t.Context(), f.hub, ref, fast)
	if err != nil || p2 != path || s2 != sum {
		t.Errorf("second Fetch = %s, %s, %v; want %s", p2, s2, err, path)
	}
	if got := f.fake.BodyGETs(modelFile); got != 2 { // the cut one and its resume
		t.Errorf("got %d GETs of the body, want 2", got)
	}
}

func TestHead(t *testing.T) {
	t.Parallel()
	data := randomBytes(100, 12)
	f := newFixture(t, map[string][]byte{modelFile: data, "org/repo/config.json": []byte(`{}`)})
	f.fake.SeparateCDN()
	sum := hubtest.SHA256(data)
	tests := []struct {
		ref  string
		want Remote
	}{
		{"hf:" + modelFile, Remote{URL: f.fake.CDNURL() + "/cdn/" + sum, Size: 100, SHA256: sum, ETag: `"` + sum + `"`, AcceptRanges: true}},
		{"hf:org/repo", Remote{URL: f.fake.CDNURL() + "/cdn/" + sum, Size: 100, SHA256: sum, ETag: `"` + sum + `"`, AcceptRanges: true}},
	}
	for _, tt := range tests {
		got, err := f.hub.Head(t.Context(), mustRef(t, tt.ref))
		if err != nil || got != tt.want {
			t.Errorf("Head(%s) = %+v, %v\nwant %+v", tt.ref, got, err, tt.want)
		}
	}
}

// Removing a blob removes the URL records that point at it: a model pulled
// from a plain URL (an ETag, no stated sha256) and then removed leaves no
// record of a blob that is gone (rbee model rm left them).
func TestRemoveForgetsURLs(t *testing.T) {
	t.Parallel()
	data := randomBytes(1<<20, 7)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(srv.Close)
	s := &Store{Dir: t.TempDir()}
	_, sum, err := s.Fetch(t.Context(), &Hub{}, mustRef(t, srv.URL+"/m.gguf"), fast)
	if err != nil {
		t.Fatal(err)
	}
	if urls, _ := os.ReadDir(filepath.Join(s.Dir, "urls")); len(urls) != 1 {
		t.Fatalf("%d URL records after the fetch, want 1", len(urls))
	}
	if err := s.Remove(sum); err != nil {
		t.Fatal(err)
	}
	if urls, _ := os.ReadDir(filepath.Join(s.Dir, "urls")); len(urls) != 0 {
		t.Errorf("after Remove, %d URL records are left", len(urls))
	}
}
