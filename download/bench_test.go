package download

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// BenchmarkFetch measures download throughput from the fake hub on
// loopback (redirect, then a 64 MB body, sha256 and fsync included), next
// to curl fetching the same file from the same server in the same run.
func BenchmarkFetch(b *testing.B) {
	const size = 64 << 20
	data := randomBytes(size, 99)
	f := newFixture(b, map[string][]byte{modelFile: data})
	ref := mustRef(b, "hf:"+modelFile)

	b.Run("rbee", func(b *testing.B) {
		s := &Store{Dir: b.TempDir()}
		b.SetBytes(size)
		for b.Loop() {
			if _, _, err := s.Fetch(b.Context(), f.hub, ref, Options{MinFree: 1}); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			// Like curl's output below, each file is gone before the next
			// run, so that neither pays for the other's writeback.
			if err := os.RemoveAll(s.Dir); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	b.Run("curl", func(b *testing.B) {
		curl, err := exec.LookPath("curl")
		if err != nil {
			b.Skip("skipped: no curl to compare with")
		}
		out := filepath.Join(b.TempDir(), "out")
		b.SetBytes(size)
		for b.Loop() {
			cmd := exec.Command(curl, "-sSfL", "-o", out, f.fake.ResolveURL(modelFile, "main"))
			if msg, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("curl: %v: %s", err, msg)
			}
			b.StopTimer()
			os.Remove(out)
			b.StartTimer()
		}
	})
}
