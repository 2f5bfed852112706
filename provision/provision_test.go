package provision

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/rbee-dev/rbee/internal/sshtest"
	"github.com/rbee-dev/rbee/remote"
)

func dial(t *testing.T, h *sshtest.Host) *remote.Conn {
	t.Helper()
	host, port, _ := strings.Cut(h.Addr, ":")
	p, _ := strconv.Atoi(port)
	c, err := remote.Dial(context.Background(), remote.Target{Host: host, User: h.User, Port: p, IdentityFiles: []string{h.ClientKey}},
		remote.Config{KnownHosts: h.KnownHosts, SSHConfig: "none"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestProbe(t *testing.T) {
	if err := sshtest.Available(); err != nil {
		t.Fatalf("SSH hosts cannot run here: %v", err)
	}
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	p, err := ProbeHost(context.Background(), dial(t, h))
	if err != nil {
		t.Fatal(err)
	}
	if p.OS != "linux" || p.Arch == "" || p.Home != h.Home || !p.Libffi || p.FreeBytes == 0 || p.Agent {
		t.Errorf("probe = %+v, want linux, an arch, home %s, libffi, free space, no agent", p, h.Home)
	}
	if runtime.GOARCH == "amd64" && !slices.Contains(p.CPUFlags, "sse2") {
		t.Errorf("cpu flags = %v, want this machine's (sse2 among them)", p.CPUFlags)
	}
	if !strings.Contains(strings.ToLower(p.Libc), "libc") && !strings.Contains(p.Libc, "ldd") {
		t.Errorf("libc = %q", p.Libc)
	}
}

// TestPushModelResumes cuts a push midway, then pushes again: the second
// push continues from the partial copy and the file is verified on the host.
func TestPushModelResumes(t *testing.T) {
	if err := sshtest.Available(); err != nil {
		t.Fatalf("SSH hosts cannot run here: %v", err)
	}
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	c := dial(t, h)
	data := make([]byte, 24<<20)
	rand.Read(data)
	local := filepath.Join(t.TempDir(), "m.gguf")
	if err := os.WriteFile(local, data, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	sha := hex.EncodeToString(sum[:])
	l := Layout{Home: h.Home}

	ctx, cancel := context.WithCancel(context.Background())
	_, err := PushModel(ctx, c, l, local, sha, func(done, total int64, _ float64) {
		cancel() // cut the push after its first chunk
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cut push: %v, want context.Canceled", err)
	}
	st, err := os.Stat(l.ModelPath(sha) + ".partial")
	if err != nil || st.Size() == 0 || st.Size() >= int64(len(data)) {
		t.Fatalf("partial copy after the cut: %v, %d bytes", err, st.Size())
	}
	var first int64 = -1
	p, err := PushModel(context.Background(), c, l, local, sha, func(done, total int64, _ float64) {
		if first < 0 {
			first = done
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if first <= st.Size() {
		t.Errorf("second push reported %d bytes first, want more than the %d already there (resumed)", first, st.Size())
	}
	got, err := os.ReadFile(p)
	if err != nil || sha256.Sum256(got) != sum {
		t.Fatalf("pushed model differs: %v", err)
	}
	if _, err := os.Stat(l.ModelPath(sha) + ".partial"); !os.IsNotExist(err) {
		t.Errorf("partial file left behind: %v", err)
	}
	// A third push finds it and sends nothing.
	sent := false
	if _, err := PushModel(context.Background(), c, l, local, sha, func(int64, int64, float64) { sent = true }); err != nil || sent {
		t.Errorf("third push: err %v, sent %v; want nothing sent", err, sent)
	}
}

// TestPushModelLostConnection: a push whose connection dies midway (a
// stalled link declared dead) cannot remove its partial copy. The error
// says where it stays — it said "the partial copy was removed" while the
// bytes stayed on the host — and the next push to the host, over a new
// connection, removes it.
func TestPushModelLostConnection(t *testing.T) {
	if err := sshtest.Available(); err != nil {
		t.Fatalf("SSH hosts cannot run here: %v", err)
	}
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	c := dial(t, h)
	l := Layout{Home: h.Home}
	model := func(n int) (string, string) {
		data := make([]byte, n)
		rand.Read(data)
		local := filepath.Join(t.TempDir(), "m.gguf")
		if err := os.WriteFile(local, data, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		return local, hex.EncodeToString(sum[:])
	}
	local, sha := model(24 << 20)
	partial := l.ModelPath(sha) + ".partial"
	var once sync.Once
	_, err := PushModel(context.Background(), c, l, local, sha, func(int64, int64, float64) {
		once.Do(func() { c.Close() }) // the link dies after the first chunk
	})
	if err == nil {
		t.Fatal("push over a connection that died: no error")
	}
	if _, serr := os.Stat(partial); serr != nil {
		t.Fatalf("the partial copy is not on the host (%v); the test cannot tell", serr)
	}
	if msg := err.Error(); strings.Contains(msg, "was removed") || !strings.Contains(msg, "stays at") || !strings.Contains(msg, partial) {
		t.Errorf("push over a connection that died: %q, want where the partial copy stays, not that it was removed", msg)
	}

	// The next push, another model over a new connection, removes it.
	other, otherSHA := model(1 << 20)
	if _, err := PushModel(context.Background(), dial(t, h), l, other, otherSHA, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(partial); !os.IsNotExist(err) {
		t.Errorf("the failed push's partial copy is still on the host after the next push: %v", err)
	}
}

func TestPushModelCorruptPartialRefused(t *testing.T) {
	if err := sshtest.Available(); err != nil {
		t.Fatalf("SSH hosts cannot run here: %v", err)
	}
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	c := dial(t, h)
	data := make([]byte, 1<<20)
	rand.Read(data)
	local := filepath.Join(t.TempDir(), "m.gguf")
	os.WriteFile(local, data, 0o644)
	sum := sha256.Sum256(data)
	sha := hex.EncodeToString(sum[:])
	l := Layout{Home: h.Home}
	// A partial copy whose bytes are wrong: the verification must catch it.
	partial := l.ModelPath(sha) + ".partial"
	h.Run(t, "mkdir -p "+filepath.Dir(partial)+" && head -c 1000 /dev/zero > "+partial)
	if _, err := PushModel(context.Background(), c, l, local, sha, nil); err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Fatalf("push over a corrupt partial: %v, want a checksum error", err)
	}
	if _, err := os.Stat(partial); !os.IsNotExist(err) {
		t.Errorf("the corrupt partial copy was kept")
	}
	if _, err := PushModel(context.Background(), c, l, local, sha, nil); err != nil {
		t.Errorf("a fresh push after the refusal: %v", err)
	}
}
