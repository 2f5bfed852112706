package download

import (
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/download/hubtest"
)

func TestMain(m *testing.M) {
	// The tests name their endpoint and token; the person's must not leak in.
	os.Unsetenv("HF_TOKEN")
	os.Unsetenv("HF_ENDPOINT")
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(); leaked != "" {
			os.Stderr.WriteString("goroutines of package download still running after the tests:\n" + leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// leakedGoroutines waits a little for the package's goroutines to end and
// returns the stacks of those that did not.
func leakedGoroutines() string {
	http.DefaultClient.CloseIdleConnections()
	var leaked []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		leaked = leaked[:0]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "rbee/download.") && !strings.Contains(g, "download.TestMain") && !strings.Contains(g, "download.leakedGoroutines") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return ""
		}
	}
	return strings.Join(leaked, "\n\n")
}

// randomBytes returns n deterministic pseudo-random bytes.
func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	r.Read(b)
	return b
}

// fixture is a fake hub with one repo and a client pointed at it.
type fixture struct {
	fake  *hubtest.Hub
	hub   *Hub
	store *Store
}

func newFixture(t testing.TB, files map[string][]byte) fixture {
	t.Helper()
	fake := hubtest.New(t, files)
	return fixture{fake: fake, hub: &Hub{Endpoint: fake.URL}, store: &Store{Dir: t.TempDir()}}
}

func mustRef(t testing.TB, s string) Ref {
	t.Helper()
	r, err := ParseRef(s)
	if err != nil {
		t.Fatalf("ParseRef(%q): %v", s, err)
	}
	return r
}

// fast keeps retries quick in tests.
var fast = Options{Retries: 3, Backoff: 10 * time.Millisecond, MinFree: 1}

// dirFiles lists the names in dir ("" for a missing dir).
func dirFiles(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}
