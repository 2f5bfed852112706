package download

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/download/hubtest"
)

const benchSize = 64 << 20

// BenchmarkFetch measures download throughput from the fake hub on
// loopback (redirect, then a 64 MB body, sha256 and fsync included), next
// to curl fetching the same file from the same server in the same run.
// The hub runs in a process of its own (this test binary again, see
// TestBenchHub), as a real server would: in this process it would take its
// CPU from rbee's GOMAXPROCS but not from curl's.
func BenchmarkFetch(b *testing.B) {
	hubURL := startBenchHub(b)
	hub := &Hub{Endpoint: hubURL}
	ref := mustRef(b, "hf:"+modelFile)

	b.Run("rbee", func(b *testing.B) {
		s := &Store{Dir: b.TempDir()}
		b.SetBytes(benchSize)
		for b.Loop() {
			if _, _, err := s.Fetch(b.Context(), hub, ref, Options{MinFree: 1}); err != nil {
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
	org, repo, path := splitBenchFile(modelFile)
	u := hubURL + "/" + org + "/" + repo + "/resolve/main/" + path
	b.Run("curl", func(b *testing.B) { benchCurl(b, u, false) })
	// curl, then fsync of its file (coreutils sync FILE): the same
	// durability as rbee's, which fsyncs before the file enters blobs/.
	b.Run("curl-fsync", func(b *testing.B) { benchCurl(b, u, true) })
}

func benchCurl(b *testing.B, u string, fsync bool) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		b.Skip("skipped: no curl to compare with")
	}
	out := filepath.Join(b.TempDir(), "out")
	b.SetBytes(benchSize)
	for b.Loop() {
		cmd := exec.Command(curl, "-sSfL", "-o", out, u)
		if msg, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("curl: %v: %s", err, msg)
		}
		if fsync {
			if msg, err := exec.Command("sync", out).CombinedOutput(); err != nil {
				b.Fatalf("sync: %v: %s", err, msg)
			}
		}
		b.StopTimer()
		os.Remove(out)
		b.StartTimer()
	}
}

func splitBenchFile(file string) (org, repo, path string) {
	parts := strings.SplitN(file, "/", 3)
	return parts[0], parts[1], parts[2]
}

// startBenchHub runs TestBenchHub in a child process and returns its URL;
// the child ends when the benchmark does (its stdin closes).
func startBenchHub(b *testing.B) string {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestBenchHub$")
	cmd.Env = append(os.Environ(), "RBEE_BENCH_HUB=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if u, ok := strings.CutPrefix(sc.Text(), "hub "); ok {
			return u // the child's closing "PASS" fits in the pipe unread
		}
	}
	b.Fatalf("bench hub: no URL (%v)", sc.Err())
	return ""
}

// TestBenchHub is not a test: it is BenchmarkFetch's hub process. It
// serves the benchmark's file until its stdin closes.
func TestBenchHub(t *testing.T) {
	if os.Getenv("RBEE_BENCH_HUB") != "1" {
		t.Skip("the hub process of BenchmarkFetch")
	}
	fake := hubtest.New(t, map[string][]byte{modelFile: randomBytes(benchSize, 99)})
	fmt.Printf("hub %s\n", fake.URL)
	io.Copy(io.Discard, os.Stdin)
}
