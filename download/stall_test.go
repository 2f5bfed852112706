package download

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// stallOpt cuts stalls fast and retries twice (three attempts).
var stallOpt = Options{Retries: 2, Backoff: time.Millisecond, StallTimeout: 200 * time.Millisecond, MinFree: 1}

// testDeadline bounds a test that would hang on the code it guards: it
// then fails instead of waiting for go test's timeout. It is no claim on
// speed; the stalls it cuts are 200ms.
const testDeadline = 30 * time.Second

// reasons collects the reasons of retries, from Fetch's progress or from
// the hub's OnRetry.
type reasons struct {
	mu  sync.Mutex
	got []string
}

func (r *reasons) add(_ int, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, why)
}

func (r *reasons) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// firstStep runs the first step of a pull (Fetch's, or the queen's
// Estimate) with stallOpt, collecting the reasons it reports.
func firstStep(t *testing.T, entry string, r Ref) ([]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testDeadline)
	defer cancel()
	var why reasons
	h := &Hub{Retries: stallOpt.Retries, Backoff: stallOpt.Backoff, StallTimeout: stallOpt.StallTimeout,
		OnRetry: func(attempt int, err error) { why.add(attempt, reason(err)) }}
	var err error
	switch entry {
	case "Fetch":
		opt := stallOpt
		opt.Progress = func(p Progress) {
			if p.LastError != "" {
				why.add(p.Attempt, p.LastError)
			}
		}
		_, _, err = (&Store{Dir: t.TempDir()}).Fetch(ctx, &Hub{}, r, opt)
	case "Estimate":
		_, _, _, err = h.Estimate(ctx, r)
	case "Head":
		_, err = h.Head(ctx, r)
	}
	return why.list(), err
}

// A server that accepts the connection and never answers the HEAD: each
// HEAD is cut after the stall timeout and retried, each reason reported,
// then a clear error.
func TestFirstRequestNoAnswerIsCutAndRetried(t *testing.T) {
	t.Parallel()
	for _, entry := range []string{"Fetch", "Estimate", "Head"} {
		t.Run(entry, func(t *testing.T) {
			t.Parallel()
			var heads atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				heads.Add(1)
				<-r.Context().Done() // never a word: the client gives up
			}))
			t.Cleanup(srv.Close)
			why, err := firstStep(t, entry, mustRef(t, srv.URL+"/x.gguf"))
			if err == nil {
				t.Fatal("got nil error, want the stall")
			}
			for _, want := range []string{"no answer for 200ms", "giving up after 3 attempts"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("got %q, want it to contain %q", err, want)
				}
			}
			if n := heads.Load(); n != 3 {
				t.Errorf("server got %d requests, want 3 (one try, two retries)", n)
			}
			if want := []string{"no answer for 200ms", "no answer for 200ms"}; !slices.Equal(why, want) {
				t.Errorf("got reasons %q reported, want %q", why, want)
			}
		})
	}
}

// Connection refused on the first step: retried like the body, each
// reason reported, then a clear error.
func TestFirstRequestRefusedIsRetried(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: each dial is refused
	for _, entry := range []string{"Fetch", "Estimate"} {
		t.Run(entry, func(t *testing.T) {
			t.Parallel()
			why, err := firstStep(t, entry, mustRef(t, "http://"+addr+"/x.gguf"))
			if err == nil {
				t.Fatal("got nil error, want connection refused")
			}
			for _, want := range []string{"connection refused", "giving up after 3 attempts", addr} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("got %q, want it to contain %q", err, want)
				}
			}
			if len(why) != 2 || !strings.Contains(why[0], "connection refused") || !strings.Contains(why[1], "connection refused") {
				t.Errorf("got reasons %q reported, want 2 saying connection refused", why)
			}
		})
	}
}

// Headers, then no body: each attempt is cut after the stall timeout, the
// reason is in the error and in the progress reports, and no empty .part
// is left behind.
func TestBodyStallReportedAndNoEmptyPartLeft(t *testing.T) {
	t.Parallel()
	var gets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "80000000")
		w.Header().Set("Accept-Ranges", "bytes")
		w.Header().Set("ETag", `"v1"`)
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodGet {
			return
		}
		gets.Add(1)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(t.Context(), testDeadline)
	defer cancel()
	var mu sync.Mutex
	var reports []Progress
	opt := stallOpt
	opt.Progress = func(p Progress) {
		mu.Lock()
		reports = append(reports, p)
		mu.Unlock()
	}
	s := &Store{Dir: t.TempDir()}
	_, _, err := s.Fetch(ctx, &Hub{}, mustRef(t, srv.URL+"/x.gguf"), opt)
	if err == nil {
		t.Fatal("got nil error, want the stall")
	}
	for _, want := range []string{"no data for 200ms at byte 0", "giving up after 3 attempts"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("got %q, want it to contain %q", err, want)
		}
	}
	if n := gets.Load(); n != 3 {
		t.Errorf("server got %d GETs, want 3", n)
	}
	mu.Lock()
	defer mu.Unlock()
	var retried []int
	for _, p := range reports {
		switch {
		case p.Total < 0:
			// A retry of the HEAD (a slow machine): not what this tests.
		case p.Attempt == 1 && p.LastError != "":
			t.Errorf("got %+v, want no reason on the first attempt", p)
		case p.Attempt > 1 && p.LastError != "no data for 200ms at byte 0":
			t.Errorf("got %+v, want the reason %q", p, "no data for 200ms at byte 0")
		case p.Attempt > 1 && !slices.Contains(retried, p.Attempt):
			retried = append(retried, p.Attempt)
		}
	}
	if !slices.Equal(retried, []int{2, 3}) {
		t.Errorf("got reports of attempts %v with their reasons, want [2 3]", retried)
	}
	if got := dirFiles(t, filepath.Join(s.Dir, "partial")); len(got) != 0 {
		t.Errorf("got partial files %v, want no empty .part left", got)
	}
	if got := dirFiles(t, filepath.Join(s.Dir, "blobs")); len(got) != 0 {
		t.Errorf("got blobs %v, want none", got)
	}
}
