package download

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/rbee-dev/rbee/download/hubtest"
)

// tmpfs mounts a tmpfs of the given size ("8m") on a fresh directory for
// the test, or skips the test where mounting is not permitted.
func tmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: mounting a small tmpfs to fill needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("skipped: mount tmpfs on %s not permitted here: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func TestFetchRefusesWhenNoSpace(t *testing.T) {
	t.Parallel()
	dir := tmpfs(t, "8m")
	data := randomBytes(12<<20, 20)
	f := newFixture(t, map[string][]byte{modelFile: data})
	f.store.Dir = dir
	_, _, err := f.store.Fetch(t.Context(), f.hub, mustRef(t, "hf:"+modelFile), fast)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("got %v, want ErrNoSpace", err)
	}
	for _, s := range []string{"need 12.0 MiB", "8.0 MiB free", dir} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("got %q, want it to contain %q", err, s)
		}
	}
	if got := f.fake.BodyGETs(modelFile); got != 0 {
		t.Errorf("got %d GETs of the body, want none", got)
	}
	if got := dirFiles(t, filepath.Join(dir, "partial")); len(got) != 0 {
		t.Errorf("got partial files %v, want none", got)
	}

	// The default reserve of 256 MiB refuses even a small file here.
	small := randomBytes(1<<20, 21)
	f.fake.Add("org/repo/small.gguf", small)
	_, _, err = f.store.Fetch(t.Context(), f.hub, mustRef(t, "hf:org/repo/small.gguf"), Options{})
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "256.0 MiB to keep free") {
		t.Errorf("with the default MinFree: got %v, want ErrNoSpace naming the reserve", err)
	}
}

func TestFetchDiskFillsMidDownload(t *testing.T) {
	t.Parallel()
	dir := tmpfs(t, "8m")
	data := randomBytes(6<<20, 22)
	f := newFixture(t, map[string][]byte{modelFile: data})
	f.store.Dir = dir

	// Something else fills the disk once the download has begun, leaving
	// it 1 MiB.
	filled := false
	opt := fast
	opt.Progress = func(Progress) {
		if filled {
			return
		}
		filled = true
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			t.Error(err)
			return
		}
		free := int64(st.Bavail) * int64(st.Bsize)
		if err := os.WriteFile(filepath.Join(dir, "filler"), make([]byte, free-1<<20), 0o644); err != nil {
			t.Errorf("fill the disk: %v", err)
		}
	}
	_, _, err := f.store.Fetch(t.Context(), f.hub, mustRef(t, "hf:"+modelFile), opt)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("got %v, want ErrNoSpace", err)
	}
	t.Logf("error: %v", err)
	if got := dirFiles(t, filepath.Join(dir, "partial")); len(got) != 0 {
		t.Errorf("got partial files %v, want the partial deleted", got)
	}
	if got := dirFiles(t, filepath.Join(dir, "blobs")); len(got) != 0 {
		t.Errorf("got blobs %v, want none", got)
	}
	if !strings.Contains(err.Error(), "disk filled at byte ") || strings.Contains(err.Error(), "at byte 0;") {
		t.Errorf("got %q, want the disk to fill after some bytes were written", err)
	}
	if !strings.Contains(err.Error(), "of 6.0 MiB: it needs 6.0 MiB and") || !strings.Contains(err.Error(), "are free there") {
		t.Errorf("got %q, want what the file needs and what is free", err)
	}
	// With the space back, the same Fetch succeeds.
	if err := os.Remove(filepath.Join(dir, "filler")); err != nil {
		t.Fatal(err)
	}
	if _, sum, err := f.store.Fetch(t.Context(), f.hub, mustRef(t, "hf:"+modelFile), fast); err != nil || sum != hubtest.SHA256(data) {
		t.Errorf("Fetch after freeing space = %s, %v; want the file", sum, err)
	}
}
