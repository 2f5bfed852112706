package agent

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/internal/testmodel"
)

// A server that gives a valid GGUF header to ranged requests and other
// bytes to the download: the pull fails as not GGUF, nothing is
// catalogued, and the store keeps no blob and no partial of it.
func TestPullOfNonGGUFLeavesNothing(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	if _, err := testmodel.Random(testmodel.Small).WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	bad := make([]byte, len(good))
	rand.NewChaCha8([32]byte{13}).Read(bad)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Accept-Ranges", "bytes")
		if r.Header.Get("Range") != "" {
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(good))
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(bad)))
		if r.Method == http.MethodGet {
			w.Write(bad)
		}
	}))
	t.Cleanup(srv.Close)
	a := newTestAgent(t, nil)
	ref, err := download.ParseRef(srv.URL + "/x.gguf")
	if err != nil {
		t.Fatal(err)
	}
	var ev events
	_, err = a.Pull(t.Context(), &download.Hub{}, ref, "", ev.send)
	if got := rbee.CodeOf(err); got != rbee.CodeNotGGUF {
		t.Errorf("got %v (code %q), want code %q", err, got, rbee.CodeNotGGUF)
	}
	if m, err := a.db.Model(t.Context(), ref.Raw); err == nil {
		t.Errorf("got %+v catalogued, want nothing", m)
	}
	for _, d := range []string{"blobs", "partial", "urls"} {
		dir := filepath.Join(a.store().Dir, d)
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("got %d entries in %s (first %s), want none", len(entries), dir, entries[0].Name())
		}
	}
}

// Headers, then no body: the progress lines say why each retry came
// ("no data for …"), not only "0 B/s".
func TestPullStallSaysWhy(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "80000000")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}
	}))
	t.Cleanup(srv.Close)
	a := newTestAgent(t, nil)
	ref, err := download.ParseRef(srv.URL + "/x.gguf")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second) // fails rather than hangs
	defer cancel()
	var ev events
	hub := &download.Hub{StallTimeout: 200 * time.Millisecond, Retries: 1, Backoff: time.Millisecond}
	_, err = a.Pull(ctx, hub, ref, "", ev.send)
	if got := rbee.CodeOf(err); got != rbee.CodeDownload || !strings.Contains(err.Error(), "no data for 200ms") {
		t.Errorf("got %v (code %q), want code %q saying no data for 200ms", err, got, rbee.CodeDownload)
	}
	want := "(attempt 2, retrying after: no data for 200ms at byte 0)"
	ev.mu.Lock()
	defer ev.mu.Unlock()
	for _, e := range ev.ev {
		if e.Type == rbee.EventProgress && strings.Contains(e.Message, want) {
			return
		}
	}
	var msgs []string
	for _, e := range ev.ev {
		msgs = append(msgs, e.Message)
	}
	t.Errorf("got events %q, want a progress line with %q", msgs, want)
}

// A pull from a server that states no checksum says what was checked —
// the size — and does not claim a verification it did not make.
func TestPullSaysWhatWasChecked(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	if _, err := testmodel.Random(testmodel.Small).WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`) // an ETag that is no sha256
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(srv.Close)
	a := newTestAgent(t, nil)
	ref, err := download.ParseRef(srv.URL + "/m.gguf")
	if err != nil {
		t.Fatal(err)
	}
	var ev events
	if _, err := a.Pull(t.Context(), &download.Hub{}, ref, "", ev.send); err != nil {
		t.Fatal(err)
	}
	var said string
	ev.mu.Lock()
	defer ev.mu.Unlock()
	for _, e := range ev.ev {
		if e.Action == "model_ready" {
			said = e.Message
		}
	}
	if !strings.Contains(said, "its size matches (the source states no checksum)") || strings.Contains(said, "verified") {
		t.Errorf("model_ready said %q, want the size checked and no claim of a verification", said)
	}
}
