package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/internal/testenv"
	"github.com/rbee-dev/rbee/queenapi"
)

// TestQueenSIGTERMDrains: SIGTERM to the queen lets running jobs finish
// within the grace period, then ends them with an explicit "shutting
// down" error (exit 3), and does not mark the hive offline: shutting down
// is not the hive's fault.
func TestQueenSIGTERMDrains(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "RBEE_QUEEN_GRACE=300ms")
	cmd, errb := firstToken(t, e, "hello") // thousands of tokens: outlasts the grace
	pid, err := e.queenHealth()
	if err != nil {
		t.Fatal(err)
	}
	signal(t, pid, syscall.SIGTERM)
	err = cmd.Wait()
	if code := exitCode(err); code != rbee.ExitQueen || !strings.Contains(errb.String(), "the queen is shutting down") {
		t.Fatalf("exit %d, want %d saying the queen is shutting down:\n%s", code, rbee.ExitQueen, errb.String())
	}
	e.waitGone() // the queen took its local hive and worker with it
	r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("after the restart: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	if h := hiveLs(t, e, "localhost"); h.Status != "online" || strings.Contains(h.Reason, "context canceled") {
		t.Errorf("localhost after a queen shutdown: %s (%s)", h.Status, h.Reason)
	}
	e.stopQueen()
}

// TestQueenKilledThenStopStopsEverything: a queen killed with SIGKILL
// leaves its local hive and worker running; the next queen adopts them,
// and `rbee queen stop` stops them all.
func TestQueenKilledThenStopStopsEverything(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 {
		t.Fatalf("infer: exit %d\n%s", r.code, r.stderr)
	}
	pid, err := e.queenHealth()
	if err != nil {
		t.Fatal(err)
	}
	signal(t, pid, syscall.SIGKILL)
	r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || !strings.Contains(r.stderr, "no spawn") {
		t.Fatalf("infer with a new queen: exit %d, want the running worker reused\n%s", r.code, r.stderr)
	}
	e.stopQueen() // fails when the hive or the worker is left running
}

// TestHiveRmLocalhostThenStop: removing the local hive and then stopping
// the queen ends promptly with nothing left.
func TestHiveRmLocalhostThenStop(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 {
		t.Fatalf("infer: exit %d\n%s", r.code, r.stderr)
	}
	if r := e.rbee("hive", "rm", "localhost"); r.code != 0 {
		t.Fatalf("hive rm localhost: exit %d\n%s", r.code, r.stderr)
	}
	e.stopQueen()
}

var (
	oldOnce  sync.Once
	oldBuilt testenv.Bins
	oldErr   error
)

// oldBins is an "older" rbee (version 0.0.9-old), built once for the
// tests that need one.
func oldBins(t *testing.T) testenv.Bins {
	t.Helper()
	oldOnce.Do(func() { oldBuilt, oldErr = testenv.BuildAllVersion(filepath.Join(tmp, "old-local"), "0.0.9-old") })
	if oldErr != nil {
		t.Fatal(oldErr)
	}
	return oldBuilt
}

// openDoorStream starts a streamed completion of random-3m through the
// front door and returns its body once the first event came.
func openDoorStream(t *testing.T, e *env, maxTokens int) (*bufio.Reader, func()) {
	t.Helper()
	if r := e.rbee("infer", "--model", longModel, "--temperature", "0", "--max-tokens", "1", "hello"); r.code != 0 {
		t.Fatalf("infer: exit %d\n%s", r.code, r.stderr)
	}
	body := fmt.Sprintf(`{"model":"random-3m.gguf","prompt":"hello","max_tokens":%d,"ignore_eos":true,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}`, maxTokens)
	resp, err := http.Post("http://"+e.queen+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("door stream: %d %s", resp.StatusCode, b)
	}
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "data: {") {
		t.Fatalf("first event %q %v", line, err)
	}
	return br, func() { resp.Body.Close() }
}

// health reads the queen's /health.
func (e *env) health(t *testing.T) queenapi.Health {
	t.Helper()
	resp, err := http.Get("http://" + e.queen + "/health")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h queenapi.Health
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	return h
}

// TestDoorStreamAcrossQueenStop: a front-door stream is a running request
// like a keeper's job: the queen's health counts it, `rbee queen stop`
// gives it the grace period (a stream that ends within it ends whole), and
// one that outlasts it ends with an error event saying the queen is
// shutting down — not a worker crash, and not before the grace.
func TestDoorStreamAcrossQueenStop(t *testing.T) {
	t.Parallel()
	t.Run("outlasts the grace", func(t *testing.T) {
		t.Parallel()
		const grace = 500 * time.Millisecond
		e := newEnv(t, "RBEE_QUEEN_GRACE="+grace.String())
		br, done := openDoorStream(t, e, 1_000_000)
		defer done()
		if h := e.health(t); h.Requests != 1 {
			t.Errorf("health while streaming: %d front-door requests, want 1", h.Requests)
		}
		stopped := make(chan result, 1)
		t0 := time.Now()
		go func() { stopped <- e.rbee("queen", "stop") }()
		rest, err := io.ReadAll(br)
		elapsed := time.Since(t0)
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		last := lastEvent(string(rest))
		if strings.Contains(string(rest), rbee.CodeWorkerCrashed) {
			t.Errorf("the stream ended with a worker crash: %q", last)
		}
		switch {
		case strings.Contains(string(rest), "data: [DONE]") && !strings.Contains(string(rest), `"error"`):
			// A fast machine: the whole answer (the model's context) came
			// within the grace. The door's unit test (TestDoorDrain) covers
			// the cut deterministically.
			t.Logf("the stream ended whole within the grace (%s)", elapsed.Round(time.Millisecond))
		case !strings.Contains(last, "the queen is shutting down") || !strings.Contains(last, `"code":"`+rbee.CodeQueenDown+`"`):
			t.Errorf("the stream ended with %q, want the queen shutting down", last)
		case elapsed < grace-200*time.Millisecond:
			t.Errorf("the stream was cut %s after the stop, before the %s grace", elapsed.Round(time.Millisecond), grace)
		}
		if r := <-stopped; r.code != 0 {
			t.Fatalf("queen stop: exit %d\n%s", r.code, r.stderr)
		}
		e.waitGone()
	})
	t.Run("ends within the grace", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, "RBEE_QUEEN_GRACE=2m")
		// Short enough to end within the grace with every core busy
		// (1,500 tokens took over two minutes so), long enough to be
		// running when the stop comes.
		const n = 300
		br, done := openDoorStream(t, e, n)
		defer done()
		stopped := make(chan result, 1)
		go func() { stopped <- e.rbee("queen", "stop") }()
		rest, err := io.ReadAll(br)
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		s := string(rest)
		if !strings.Contains(s, "data: [DONE]") || !strings.Contains(s, fmt.Sprintf(`"completion_tokens":%d`, n)) || strings.Contains(s, `"error"`) {
			t.Errorf("the stream did not end whole: it ends %q", lastEvent(s))
		}
		if r := <-stopped; r.code != 0 || !strings.Contains(r.stdout, "remote hives keep their agents") {
			t.Fatalf("queen stop: exit %d %q\n%s", r.code, r.stdout, r.stderr)
		}
		e.waitGone()
	})
	t.Run("version skew", func(t *testing.T) {
		t.Parallel()
		// A newer rbee does not restart an older queen that serves a
		// stream: it uses it (the same protocol) and says why.
		old := oldBins(t)
		e := newEnv(t)
		e.bin = old.Rbee
		br, done := openDoorStream(t, e, 1500)
		defer done()
		e.bin = ""
		// The stream is unread but fits the sockets' buffers, so on a fast
		// machine it may end before the newer rbee looks (then a restart is
		// right). What must not happen is a restart that cuts it: the
		// stream must end whole either way. The keeper's choice itself is
		// TestReplaceOldQueenBusy, without processes.
		r := e.rbee("infer", "--model", longModel, "--temperature", "0", "--max-tokens", "3", "hello")
		if r.code != 0 {
			t.Errorf("infer beside a stream: exit %d\n%s", r.code, r.stderr)
		}
		t.Logf("the newer rbee: %s", map[bool]string{true: "used the busy queen", false: "restarted the queen (the stream had ended)"}[strings.Contains(r.stderr, "front-door request(s)")])
		rest, err := io.ReadAll(br)
		if err != nil || !strings.Contains(string(rest), "data: [DONE]") || strings.Contains(string(rest), `"error"`) {
			t.Errorf("the stream did not end whole (%v): it ends %q", err, lastEvent(string(rest)))
		}
		e.stopQueen()
	})
}

// lastEvent is the last data line of an SSE body other than [DONE].
func lastEvent(s string) string {
	last := ""
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "data: ") && l != "data: [DONE]" {
			last = l
		}
	}
	return last
}

// TestLocalUpgradeKeepsWorker: upgrading rbee keeps this machine's
// workers loaded, as it does a remote host's. A newer rbee restarts an
// idle older queen as a handover (its agent leaves the workers to the
// next one, which adopts them); an older agent that outlived its queen is
// replaced the same way. rbee ps still shows what the worker served and
// holds.
func TestLocalUpgradeKeepsWorker(t *testing.T) {
	t.Parallel()
	old := oldBins(t)
	e := newEnv(t)
	infer := func(bin string) result {
		t.Helper()
		r := e.run(bin, "infer", "--model", alphabet, "--temperature", "0", "abc")
		if r.code != 0 || r.stdout != alphabetRest+"\n" {
			t.Fatalf("%s infer: exit %d %q\n%s", bin, r.code, r.stdout, r.stderr)
		}
		return r
	}
	one := func() rbee.WorkerInfo {
		t.Helper()
		ws := e.workers()
		if len(ws) != 1 {
			t.Fatalf("workers: %+v, want one", ws)
		}
		return ws[0]
	}

	infer(old.Rbee)
	before := one()
	r := infer(bins.Rbee)
	inOrder(t, r.stderr, "the running queen is rbee 0.0.9-old", "restarting it", "hive localhost is asleep", "no spawn")
	if after := one(); after.ID != before.ID || after.PID != before.PID {
		t.Errorf("after the queen's upgrade: worker %s pid %d, want the same %s pid %d", after.ID, after.PID, before.ID, before.PID)
	}
	var ps queenapi.Processes
	if r := e.rbee("ps", "--json"); r.code != 0 || json.Unmarshal([]byte(r.stdout), &ps) != nil || len(ps.Processes) != 1 {
		t.Fatalf("ps: exit %d %s", r.code, r.stdout)
	}
	if p := ps.Processes[0]; p.Served < 2 || p.MemoryBytes == 0 {
		t.Errorf("ps after the upgrade: served %d, memory %d; want both requests counted and its memory", p.Served, p.MemoryBytes)
	}
	e.stopQueen()

	// An older agent whose queen was killed: the next queen replaces it.
	infer(old.Rbee)
	before = one()
	pid, err := e.queenHealth()
	if err != nil {
		t.Fatal(err)
	}
	signal(t, pid, syscall.SIGKILL)
	r = infer(bins.Rbee)
	inOrder(t, r.stderr, "replacing rbee-hive 0.0.9-old", "its workers stay", "hive localhost is awake", "no spawn")
	if after := one(); after.ID != before.ID || after.PID != before.PID {
		t.Errorf("after the agent's upgrade: worker %s pid %d, want the same %s pid %d", after.ID, after.PID, before.ID, before.PID)
	}
	e.stopQueen()
}

// TestAgentKilledWorkersAdopted: workers orphaned by a killed agent (kill
// -9, an OOM kill) are adopted by the next agent, not left running unowned
// or loaded twice.
func TestAgentKilledWorkersAdopted(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 {
		t.Fatalf("infer: exit %d\n%s", r.code, r.stderr)
	}
	ws := e.workers()
	if len(ws) != 1 {
		t.Fatalf("workers: %+v", ws)
	}
	for _, pid := range e.procs() {
		if comm(pid) == "rbee-hive" {
			signal(t, pid, syscall.SIGKILL)
		}
	}
	r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || !strings.Contains(r.stderr, "no spawn") {
		t.Fatalf("infer after the agent was killed: exit %d, want the orphaned worker adopted\n%s", r.code, r.stderr)
	}
	if after := e.workers(); len(after) != 1 || after[0].PID != ws[0].PID {
		t.Errorf("workers after: %+v, want the same pid %d", after, ws[0].PID)
	}
	e.stopQueen()
}
