package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/gpu/gputest"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/internal/testenv"
	"github.com/rbee-dev/rbee/internal/testmodel"
	"github.com/rbee-dev/rbee/queenapi"
)

var (
	bins      testenv.Bins
	engineDir string
	alphabet  string // the alphabet model
	longModel string // random-3m: thousands of tokens before it stops
	fakeNVML  string // libnvidia-ml.so.1 built from gputest
	tmp       string
)

const alphabetRest = "defghijklmnopqrstuvwxyz"

func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		code = 1
	}
	os.RemoveAll(tmp)
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	var err error
	if engineDir, err = testenv.EngineDir(); err != nil {
		return 1, err
	}
	if tmp, err = os.MkdirTemp("", "rbee-e2e-"); err != nil {
		return 1, err
	}
	if bins, err = testenv.BuildAll(tmp); err != nil {
		return 1, err
	}
	if alphabet, err = testenv.WriteModel(tmp, "alphabet.gguf", testmodel.Alphabet()); err != nil {
		return 1, err
	}
	if longModel, err = testenv.WriteModel(tmp, "random-3m.gguf", testmodel.Random(testmodel.Small)); err != nil {
		return 1, err
	}
	if fakeNVML, err = gputest.BuildFakeNVML(tmp); err != nil {
		return 1, err
	}
	return m.Run(), nil
}

// env is one test's world: its own home, queen port and processes.
type env struct {
	t     testing.TB
	bin   string // the rbee binary; "" = the one built for this test run
	home  string
	queen string
	vars  []string
	// rbeeHome is RBEE_HOME when it is not home/.rbee.
	rbeeHome string
}

func newEnv(t testing.TB, extra ...string) *env {
	t.Helper()
	home := t.TempDir()
	addr, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, home: home, queen: addr}
	e.vars = append([]string{
		"HOME=" + home, "RBEE_HOME=" + filepath.Join(home, ".rbee"), "RBEE_QUEEN=" + addr,
		"RBEE_ENGINE=" + engineDir, "RBEE_NVML_LIBRARY=" + filepath.Join(home, "no-nvml.so"),
		// Gzipped copies of what hosts get, made once for every test.
		"RBEE_PUSH_CACHE=" + filepath.Join(tmp, "push-cache"),
	}, extra...)
	t.Cleanup(func() {
		// Everything this test started carries its RBEE_HOME.
		if left := e.procs(); len(left) > 0 {
			testenv.KillAll(left, 10*time.Second)
		}
	})
	return e
}

// procs lists the processes of this env still alive.
func (e *env) procs() []int {
	home := e.rbeeHome
	if home == "" {
		home = filepath.Join(e.home, ".rbee")
	}
	return testenv.ProcsWithEnv("RBEE_HOME=" + home)
}

// result is a finished rbee command.
type result struct {
	code           int
	stdout, stderr string
}

// rbee runs the keeper to completion.
func (e *env) rbee(args ...string) result {
	e.t.Helper()
	bin := e.bin
	if bin == "" {
		bin = bins.Rbee
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), e.vars...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			e.t.Fatalf("run rbee: %v", err)
		}
		code = ee.ExitCode()
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// start starts the keeper and returns it with a reader on its stdout.
func (e *env) start(args ...string) (*exec.Cmd, *bufio.Reader, *bytes.Buffer) {
	e.t.Helper()
	cmd := exec.Command(bins.Rbee, args...)
	cmd.Env = append(os.Environ(), e.vars...)
	var errb bytes.Buffer
	cmd.Stderr = &syncBuffer{b: &errb}
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd, bufio.NewReader(out), &errb
}

type syncBuffer struct {
	mu sync.Mutex
	b  *bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// hive returns a client for this env's local hive agent.
func (e *env) hive() *hiveapi.Client {
	return hiveapi.NewClient("localhost", hiveapi.UnixDialer(filepath.Join(e.home, ".rbee", "run", "hive.sock")))
}

func (e *env) workers() []rbee.WorkerInfo {
	e.t.Helper()
	c := e.hive()
	defer c.Close()
	ws, err := c.Workers(context.Background())
	if err != nil {
		e.t.Fatalf("hive workers: %v", err)
	}
	return ws
}

func (e *env) queenHealth() (int, error) {
	resp, err := http.Get("http://" + e.queen + "/health")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var h struct {
		PID int `json:"pid"`
	}
	err = json.NewDecoder(resp.Body).Decode(&h)
	return h.PID, err
}

// queenClient reaches this env's queen on its control socket.
func (e *env) queenClient() *queenapi.Client {
	return queenapi.Unix(filepath.Join(e.home, ".rbee", "run", "queen.sock"))
}

// stopQueen runs `rbee queen stop` and checks that nothing of the env is
// left running.
func (e *env) stopQueen() {
	e.t.Helper()
	r := e.rbee("queen", "stop")
	if r.code != 0 {
		e.t.Fatalf("rbee queen stop: %d %s", r.code, r.stderr)
	}
	e.waitGone()
}

// waitGone waits (bounded) until no process of the env is alive.
func (e *env) waitGone() {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		left := e.procs()
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("processes left running: %v", describe(left))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func describe(pids []int) []string {
	var out []string
	for _, pid := range pids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		out = append(out, fmt.Sprintf("%d %s", pid, strings.ReplaceAll(string(b), "\x00", " ")))
	}
	return out
}

// inOrder checks that each needle appears in s after the previous one.
func inOrder(t *testing.T, s string, needles ...string) {
	t.Helper()
	rest := s
	for _, n := range needles {
		i := strings.Index(rest, n)
		if i < 0 {
			t.Fatalf("%q missing (or out of order) in:\n%s", n, s)
		}
		rest = rest[i+len(n):]
	}
}

func signal(t *testing.T, pid int, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatalf("kill %d: %v", pid, err)
	}
}
