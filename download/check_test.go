package download

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/testmodel"
	"github.com/rbee-dev/rbee/modelfile"
)

// twoFaced serves a valid GGUF to ranged requests (the header an estimate
// reads) and other bytes of the same size to a plain GET (the download),
// with a strong ETag, so that a stored result would be in the URL index.
func twoFaced(t *testing.T) *httptest.Server {
	t.Helper()
	var buf bytes.Buffer
	if _, err := testmodel.Random(testmodel.Small).WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	bad := randomBytes(len(good), 13)
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
	return srv
}

func isGGUF(path string) error {
	_, err := modelfile.Inspect(context.Background(), path, modelfile.Options{})
	return err
}

// A download that fails the check leaves nothing in the store: no blob, no
// .part, no URL record; and a blob that fails it (stored without the
// check) is removed with its URL record when it is found.
func TestFetchCheckFailureLeavesNothing(t *testing.T) {
	t.Parallel()
	srv := twoFaced(t)
	ref := mustRef(t, srv.URL+"/x.gguf")
	if _, _, _, err := (&Hub{}).Estimate(t.Context(), ref); err != nil {
		t.Fatalf("Estimate: %v; want the header of the ranged requests to parse", err)
	}
	empty := func(t *testing.T, s *Store) {
		t.Helper()
		for _, d := range []string{"blobs", "partial", "urls", "verified"} {
			if got := dirFiles(t, filepath.Join(s.Dir, d)); len(got) != 0 {
				t.Errorf("got %s/ %v, want nothing there", d, got)
			}
		}
	}
	opt := fast
	opt.Check = isGGUF

	s := &Store{Dir: t.TempDir()}
	_, _, err := s.Fetch(t.Context(), &Hub{}, ref, opt)
	if !errors.Is(err, modelfile.ErrNotGGUF) {
		t.Fatalf("got %v, want ErrNotGGUF", err)
	}
	empty(t, s)

	s = &Store{Dir: t.TempDir()}
	if _, _, err := s.Fetch(t.Context(), &Hub{}, ref, fast); err != nil {
		t.Fatalf("Fetch without the check: %v", err)
	}
	if got := dirFiles(t, filepath.Join(s.Dir, "urls")); len(got) != 1 {
		t.Fatalf("got urls/ %v, want the record of the unchecked blob", got)
	}
	_, _, err = s.Fetch(t.Context(), &Hub{}, ref, opt)
	if !errors.Is(err, modelfile.ErrNotGGUF) {
		t.Fatalf("Fetch with the check over an unchecked blob: got %v, want ErrNotGGUF", err)
	}
	empty(t, s)
}
