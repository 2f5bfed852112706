package e2e

import (
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/internal/sshtest"
)

// throttle forwards a local address to addr, sending what the client
// writes at no more than rate bytes a second (set again at any time);
// what the server sends passes freely. It is closed with the test.
func throttle(t *testing.T, addr string, rate *atomic.Int64) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			wg.Add(2)
			go func() {
				defer wg.Done()
				defer up.(*net.TCPConn).CloseWrite()
				buf := make([]byte, 16<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						// A rate limiter paces by the clock: no event to wait on.
						time.Sleep(time.Duration(float64(n) / float64(rate.Load()) * float64(time.Second)))
						if _, werr := up.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
			go func() {
				defer wg.Done()
				io.Copy(c, up)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return l.Addr().String()
}

// TestSSHSlowLinkInstall: bounds on a hive's answer measure silence, not
// work. A job whose host needs the agent uploaded again, over a link of
// 2 MB/s (about 5 s for the agent and worker, gzipped), succeeds with a connect
// bound of 2 s: the bytes flow. (It failed "did not answer within 3s
// (step: the agent …)": the bound covered the upload.) When the link then
// stops carrying anything, the job fails within the bound, naming the hive.
func TestSSHSlowLinkInstall(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	e.vars = append(e.vars, "RBEE_CONNECT_TIMEOUT=2s")
	h := hosts[0]
	var rate atomic.Int64
	rate.Store(1 << 30)
	slow := throttle(t, h.Addr, &rate)
	r := e.rbee("hive", "add", h.User+"@"+slow, "--name", "h1", "--identity", h.ClientKey, "--accept-new-host-key", "--json")
	if r.code != 0 {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	// The upload reports its bytes (a bar on a terminal), up to the whole.
	var last rbee.Event
	for _, l := range lines(r.stdout) {
		var ev rbee.Event
		if json.Unmarshal([]byte(l), &ev) == nil && ev.Type == rbee.EventProgress && ev.Action == "agent_upload" {
			last = ev
		}
	}
	if last.BytesTotal < 5<<20 || last.BytesDone != last.BytesTotal {
		t.Errorf("hive add's upload progress ended at %d of %d bytes, want all of more than 5 MiB\n%s", last.BytesDone, last.BytesTotal, r.stdout)
	}
	t.Logf("hive add sent %.1f MiB", float64(last.BytesTotal)/(1<<20))
	// The next queen connects afresh, to a host whose agent is gone.
	e.stopQueen()
	for _, pid := range hostProcs(h.UID, "rbee-hive") {
		signal(t, pid, syscall.SIGKILL)
	}
	waitFor(t, "the agent is gone", func() bool { return len(hostProcs(h.UID, "rbee-hive")) == 0 })
	if err := os.RemoveAll(filepath.Join(h.Home, ".rbee", "hive", rbee.Version)); err != nil {
		t.Fatal(err)
	}
	rate.Store(2 << 20)
	r = e.rbee("infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("infer over a slow link: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "pushing rbee to hive h1: ") {
		t.Errorf("a job's upload of the agent showed no progress:\n%s", r.stderr)
	}
	if _, err := os.Stat(filepath.Join(h.Home, ".rbee", "hive", rbee.Version, "rbee-hive")); err != nil {
		t.Errorf("the agent was not installed again: %v", err)
	}

	// A link that carries nothing: the job fails within the bound.
	e.stopQueen()
	rate.Store(1)
	start := time.Now()
	r = e.rbee("infer", "--hive", "h1", "--model", alphabet, "abc")
	if r.code != rbee.ExitCodeFor(rbee.CodeHiveDown) || !strings.Contains(r.stderr, "h1") {
		t.Fatalf("infer over a dead link: exit %d, want %d naming h1\n%s", r.code, rbee.ExitCodeFor(rbee.CodeHiveDown), r.stderr)
	}
	t.Logf("a dead link failed after %s", time.Since(start).Round(time.Millisecond))
	e.stopQueen()
}
