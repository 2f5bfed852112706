package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/gpu/gputest"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/internal/testenv"
)

func TestColdThenWarm(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 {
		t.Fatalf("cold infer: exit %d\n%s", r.code, r.stderr)
	}
	if r.stdout != alphabetRest+"\n" {
		t.Errorf("stdout = %q, want exactly the continuation %q", r.stdout, alphabetRest+"\n")
	}
	// The seed's happy flow, in its order.
	inOrder(t, r.stderr,
		"[keeper] queen is asleep, waking queen",
		"[keeper] queen is awake and healthy",
		"[queen] the hive catalog is empty: added this machine as hive localhost",
		"[queen] hive localhost is asleep, waking it",
		"[queen] hive localhost has 1 device(s): cpu",
		"[queen] scheduler picked localhost/cpu",
		"[queen] hive localhost reserved",
		"[hive localhost] starting a worker",
		"[hive localhost] worker w-",
		"done: 4 prompt + 23 generated tokens",
	)
	ws := e.workers()
	if len(ws) != 1 {
		t.Fatalf("workers after cold start = %d, want 1", len(ws))
	}
	// The hive sized the worker to the room on its device (several slots
	// of the alphabet model fit any machine) and reserved for all of them.
	cmdline, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(ws[0].PID), "cmdline"))
	if args := strings.Split(string(cmdline), "\x00"); !slices.Contains(args, "--slots") || args[slices.Index(args, "--slots")+1] == "1" {
		t.Errorf("worker started with %q, want --slots above 1", args)
	}

	r = e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("warm infer: exit %d stdout %q\n%s", r.code, r.stdout, r.stderr)
	}
	inOrder(t, r.stderr, "[keeper] queen is awake (pid", "warm worker "+ws[0].ID, "no spawn", "warm worker")
	for _, cold := range []string{"waking", "starting a worker"} {
		if strings.Contains(r.stderr, cold) {
			t.Errorf("warm run narrates %q:\n%s", cold, r.stderr)
		}
	}
	if ws2 := e.workers(); len(ws2) != 1 || ws2[0].ID != ws[0].ID || ws2[0].PID != ws[0].PID {
		t.Errorf("warm run changed the workers: %+v -> %+v", ws, ws2)
	}
	e.stopQueen() // cascades: the hive it started, and its worker
}

func TestQueenAlreadyRunning(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	q := testenv.Start(t, bins.Rbee, e.vars, "queen", "serve")
	pid, err := waitQueen(e)
	if err != nil {
		t.Fatalf("%v\n%s", err, q.StderrText())
	}
	if pid != q.Cmd.Process.Pid {
		t.Fatalf("health pid %d, want %d", pid, q.Cmd.Process.Pid)
	}
	r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("infer: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stderr, "waking queen") {
		t.Errorf("keeper woke a queen that was running:\n%s", r.stderr)
	}
	if got, err := e.queenHealth(); err != nil || got != pid {
		t.Errorf("after infer the queen is %d (%v), want the same %d still running", got, err, pid)
	}
	q.Stop(30 * time.Second)
	e.waitGone()
}

func waitQueen(e *env) (int, error) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		pid, err := e.queenHealth()
		if err == nil {
			return pid, nil
		}
		if time.Now().After(deadline) {
			return 0, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestJSONLines(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.rbee("infer", "--json", "--model", alphabet, "--temperature", "0", "--ephemeral", "abc")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	types := map[string]int{}
	var text strings.Builder
	for i, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var ev rbee.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("line %d is not a JSON event: %q", i+1, line)
		}
		if ev.Type == "" || ev.Time.IsZero() {
			t.Errorf("line %d lacks type or time: %q", i+1, line)
		}
		types[ev.Type]++
		if ev.Type == rbee.EventToken {
			text.WriteString(ev.Text)
		}
	}
	if text.String() != alphabetRest {
		t.Errorf("tokens = %q, want %q", text.String(), alphabetRest)
	}
	for _, ty := range []string{"job", "narration", "token", "done"} {
		if types[ty] == 0 {
			t.Errorf("no %q event in:\n%s", ty, r.stdout)
		}
	}
	if r.stderr != "" {
		t.Errorf("--json wrote to stderr: %q", r.stderr)
	}
	e.waitGone() // --ephemeral leaves nothing behind
}

func TestEphemeralCascade(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.rbee("infer", "--ephemeral", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	inOrder(t, r.stderr, "ephemeral queen", "hive localhost is asleep", "starting a worker", "done:", "ephemeral queen stopped")
	if _, err := e.queenHealth(); err == nil {
		t.Error("a queen answers at the default address after --ephemeral")
	}
	e.waitGone()
}

// firstToken starts a long generation and returns once text is on stdout.
func firstToken(t *testing.T, e *env, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd, out, errb := e.start(append([]string{"infer", "--model", longModel, "--temperature", "0"}, args...)...)
	if _, err := out.ReadByte(); err != nil {
		t.Fatalf("no token on stdout: %v\n%s", err, errb.String())
	}
	go func() { _, _ = io.Copy(io.Discard, out) }() // keep the pipe drained; ends with the process
	return cmd, errb
}

func TestCtrlCMidStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cmd, errb := firstToken(t, e, "hello")
	ws := e.workers()
	if len(ws) != 1 {
		t.Fatalf("workers = %+v", ws)
	}
	signal(t, cmd.Process.Pid, syscall.SIGINT)
	err := cmd.Wait()
	if code := exitCode(err); code != rbee.ExitInterrupted {
		t.Fatalf("exit code = %d, want 130\n%s", code, errb.String())
	}
	// The worker saw the cancellation and stopped generating: its log says
	// so, and its slot is free for the next request at once.
	logPath := filepath.Join(e.home, ".rbee", "logs", ws[0].ID+".log")
	waitFor(t, "the worker logs the cancelled request", func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "finish=cancelled")
	})
	b, _ := os.ReadFile(logPath)
	if strings.Contains(string(b), "completion_tokens=4090") {
		t.Errorf("the worker generated to the end:\n%s", b)
	}
	r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Errorf("next job: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	e.stopQueen()
}

func TestWorkerKilledMidStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cmd, errb := firstToken(t, e, "hello")
	ws := e.workers()
	if len(ws) != 1 {
		t.Fatalf("workers = %+v", ws)
	}
	signal(t, ws[0].PID, syscall.SIGKILL)
	err := cmd.Wait()
	if code := exitCode(err); code != rbee.ExitWorker {
		t.Fatalf("exit code = %d, want %d\n%s", code, rbee.ExitWorker, errb.String())
	}
	if s := errb.String(); !strings.Contains(s, "rbee: worker "+ws[0].ID) || !strings.Contains(s, "killed") {
		t.Errorf("stderr does not say the worker was killed:\n%s", s)
	}
	if left := e.workers(); len(left) != 0 {
		t.Errorf("hive registry still lists %+v", left)
	}
	if got := queenWorkers(t, e); len(got) != 0 {
		t.Errorf("queen registry still lists %+v", got)
	}
	r := e.rbee("infer", "--model", longModel, "--temperature", "0", "--max-tokens", "5", "hello")
	if r.code != 0 || !strings.Contains(r.stderr, "starting a worker") {
		t.Errorf("next job should start a new worker: exit %d\n%s", r.code, r.stderr)
	}
	e.stopQueen()
}

func queenWorkers(t *testing.T, e *env) []rbee.WorkerInfo {
	t.Helper()
	c := e.queenClient()
	defer c.Close()
	ws, err := c.Workers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ws
}

func TestKeepAliveUnloads(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "RBEE_KEEP_ALIVE=200ms")
	r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	waitFor(t, "the idle worker is unloaded", func() bool { return len(e.workers()) == 0 })
	e.stopQueen()
}

func TestFakeGPUs(t *testing.T) {
	t.Parallel()
	gpus := gputest.GPUsEnv(
		gputest.FakeGPU{Name: "NVIDIA GeForce RTX 3060", TotalMiB: 12288, FreeMiB: 11000, ComputeCap: "8.6"},
		gputest.FakeGPU{Name: "NVIDIA GeForce RTX 3090", TotalMiB: 24576, FreeMiB: 20000, ComputeCap: "8.6", Reports: true, UtilPercent: 37, TempC: 61},
		gputest.FakeGPU{Name: "NVIDIA GeForce GT 1030", TotalMiB: 2048, FreeMiB: 40, ComputeCap: "6.1"},
	)
	e := newEnv(t, gputest.EnvGPUs+"="+gpus)
	e.vars = append(e.vars, "RBEE_NVML_LIBRARY="+fakeNVML) // later entries win

	t.Run("stronger GPU picked", func(t *testing.T) {
		r := e.rbee("infer", "--explain", "--model", alphabet, "--temperature", "0", "abc")
		if r.code != 0 || r.stdout != alphabetRest+"\n" {
			t.Fatalf("exit %d %q\n%s", r.code, r.stdout, r.stderr)
		}
		inOrder(t, r.stderr,
			"hive localhost has 4 device(s): gpu0 NVIDIA GeForce RTX 3060", "gpu1 NVIDIA GeForce RTX 3090", "gpu2 NVIDIA GeForce GT 1030", "cpu ",
			"candidates:",
			"DEVICE          NAME                     VERDICT",
			"localhost/gpu1  NVIDIA GeForce RTX 3090  picked: NVIDIA GeForce RTX 3090 with 24.0 GiB",
			"localhost/gpu0  NVIDIA GeForce RTX 3060  fallback #2",
			"localhost/gpu2  NVIDIA GeForce GT 1030   needs",
			"scheduler picked localhost/gpu1",
			"reserved", "on gpu1",
			"the engine bundle has no GPU backend",
		)
	})

	t.Run("refused with 409 then the next, then CPU", func(t *testing.T) {
		// Another job holds most of both big GPUs: the VRAM checker refuses.
		c := e.hive()
		defer c.Close()
		for _, dev := range []string{"gpu1", "gpu0"} {
			d := devByID(t, c, dev)
			if _, err := c.Reserve(context.Background(), hiveapi.ReserveRequest{Device: dev, Bytes: d.RoomBytes - 1<<20, Purpose: "test"}); err != nil {
				t.Fatalf("reserve %s: %v", dev, err)
			}
		}
		r := e.rbee("infer", "--model", longModel, "--temperature", "0", "--max-tokens", "3", "hi")
		if r.code != 0 {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
		inOrder(t, r.stderr,
			"scheduler picked localhost/gpu1",
			"hive localhost refused gpu1: gpu1 (NVIDIA GeForce RTX 3090) has 1.0 MiB free",
			"trying the next candidate localhost/gpu0",
			"hive localhost refused gpu0",
			"trying the next candidate localhost/cpu",
			"reserved", "on cpu",
			"starting a worker", "on cpu",
		)
	})

	t.Run("pinned device that does not fit", func(t *testing.T) {
		r := e.rbee("infer", "--device", "gpu2", "--model", alphabet, "--temperature", "0", "abc")
		if r.code != rbee.ExitNoRoom || !strings.Contains(r.stderr, "no device has room") {
			t.Errorf("exit %d, want %d with 'no device has room':\n%s", r.code, rbee.ExitNoRoom, r.stderr)
		}
	})

	t.Run("top shows what the driver tells", func(t *testing.T) {
		r := e.rbee("top", "--once")
		if r.code != 0 {
			t.Fatalf("top --once: exit %d\n%s", r.code, r.stderr)
		}
		for _, re := range []string{`(?m)^localhost/gpu1 +NVIDIA GeForce RTX 3090 .* 37% +61°C$`, `(?m)^localhost/gpu0 +NVIDIA GeForce RTX 3060 .* - +-$`} {
			if !regexp.MustCompile(re).MatchString(r.stdout) {
				t.Errorf("top --once has no line matching %s:\n%s", re, r.stdout)
			}
		}
	})
	e.stopQueen()
}

func devByID(t *testing.T, c *hiveapi.Client, id string) rbee.Device {
	t.Helper()
	ds, err := c.Devices(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds.Devices {
		if d.ID == id {
			return d
		}
	}
	t.Fatalf("no device %s in %+v", id, ds)
	return rbee.Device{}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	text := filepath.Join(dir, "notes.gguf")
	os.WriteFile(text, []byte("not a model"), 0o644)
	tests := []struct {
		name       string
		args       []string
		code       int
		want       string
		wakesQueen bool
	}{
		{"missing model", []string{"infer", "--model", filepath.Join(dir, "nope.gguf"), "abc"}, rbee.ExitNotFound, "does not exist", false},
		{"not gguf", []string{"infer", "--model", text, "abc"}, rbee.ExitNotFound, "is not a GGUF file", false},
		{"model is a directory", []string{"infer", "--model", dir, "abc"}, rbee.ExitNotFound, "is a directory", false},
		{"no model flag", []string{"infer", "abc"}, rbee.ExitUsage, "--model", false},
		{"chat and raw", []string{"infer", "--chat", "--raw", "--model", alphabet, "abc"}, rbee.ExitUsage, "contradict", false},
		{"json and quiet", []string{"infer", "--json", "-q", "--model", alphabet, "abc"}, rbee.ExitUsage, "contradict", false},
		{"temperature", []string{"infer", "--temperature", "7", "--model", alphabet, "abc"}, rbee.ExitUsage, "out of range", false},
		{"ephemeral and queen", []string{"--queen", "127.0.0.1:1", "infer", "--ephemeral", "--model", alphabet, "abc"}, rbee.ExitUsage, "contradicts", false},
		{"empty prompt", []string{"infer", "--model", alphabet, " "}, rbee.ExitUsage, "prompt is empty", false},
		{"unknown hive", []string{"infer", "--hive", "gpu-box", "--model", alphabet, "abc"}, rbee.ExitNotFound, `no hive named "gpu-box"`, true},
		{"unknown device", []string{"infer", "--device", "gpu7", "--model", alphabet, "abc"}, rbee.ExitNotFound, `no device "gpu7"`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			r := e.rbee(tt.args...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("exit %d, want %d; stderr should contain %q:\n%s", r.code, tt.code, tt.want, r.stderr)
			}
			if !strings.HasPrefix(r.stderr, "rbee: ") && !strings.Contains(r.stderr, "\nrbee: ") {
				t.Errorf("stderr lacks the 'rbee: ' error line:\n%s", r.stderr)
			}
			if tt.wakesQueen {
				if strings.Contains(r.stderr, "hive localhost is asleep") && tt.name == "unknown hive" {
					t.Errorf("a hive was woken for an unknown hive name")
				}
				e.stopQueen()
				return
			}
			if left := e.procs(); len(left) != 0 {
				t.Errorf("bad input left processes running: %v", describe(left))
			}
		})
	}
}

func TestQueenPortTaken(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// Something that is not a queen holds the port.
	ln, err := net.Listen("tcp", e.queen)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.NotFoundHandler()}
	go srv.Serve(ln)
	defer srv.Close()

	r := e.rbee("infer", "--model", alphabet, "abc")
	if r.code != rbee.ExitQueen || !strings.Contains(r.stderr, "queen cannot listen on "+e.queen) {
		t.Errorf("infer: exit %d, want %d:\n%s", r.code, rbee.ExitQueen, r.stderr)
	}
	r = e.rbee("queen", "serve")
	if r.code != rbee.ExitQueen || !strings.Contains(r.stderr, "queen cannot listen on "+e.queen) {
		t.Errorf("queen serve: exit %d, want %d:\n%s", r.code, rbee.ExitQueen, r.stderr)
	}
	if left := e.procs(); len(left) != 0 {
		t.Errorf("processes left: %v", describe(left))
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// waitFor polls cond (bounded) where no signal exists to wait on.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitForOr(t, what, cond, func() string { return "" })
}

// waitForOr is waitFor that says what it saw last when it times out.
func waitForOr(t *testing.T, what string, cond func() bool, seen func() string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s\n%s", what, seen())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHiveHandoverKeepsWorker is the upgrade path: the agent leaves its
// workers to the next agent, which adopts them; the next job uses the same
// worker process, warm.
func TestHiveHandoverKeepsWorker(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	before := e.workers()
	c := e.hive()
	hs, err := c.Handshake(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Shutdown(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	c.Close()
	waitFor(t, "the old agent exits", func() bool { return !pidAlive(hs.PID) })
	if !pidAlive(before[0].PID) {
		t.Fatalf("worker %d died with the agent", before[0].PID)
	}
	r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	inOrder(t, r.stderr, "hive localhost is asleep", "hive localhost is awake", "warm worker "+before[0].ID, "no spawn")
	after := e.workers()
	if len(after) != 1 || after[0].PID != before[0].PID {
		t.Errorf("workers after handover = %+v, want the adopted %+v", after, before)
	}
	e.stopQueen() // the new agent stops the adopted worker too
}

func pidAlive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", fmt.Sprint(pid), "stat"))
	return err == nil && !strings.Contains(string(b), ") Z ")
}

// TestExternalWorkerType declares an OpenAI-speaking engine by a launch
// template — rbee-worker itself, on a loopback port — and runs jobs on it.
func TestExternalWorkerType(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.rbee("worker", "add-type", "oai", "--command", bins.Worker, "--health", "/health",
		"--arg=--model", "--arg={model}", "--arg=--engine", "--arg="+engineDir, "--arg=--listen", "--arg=127.0.0.1:{port}", "--arg=--threads", "--arg=1")
	if r.code != 0 {
		t.Fatalf("add-type: exit %d\n%s", r.code, r.stderr)
	}
	r = e.rbee("infer", "--worker-type", "oai", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" || !strings.Contains(r.stderr, "engine external oai") {
		t.Fatalf("infer on the external type: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	ws := e.workers()
	if len(ws) != 1 || ws[0].Type != "oai" {
		t.Fatalf("workers = %+v, want one of type oai", ws)
	}
	// Warm for the same type; a plain job gets its own rbee-worker.
	r = e.rbee("infer", "--worker-type", "oai", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || !strings.Contains(r.stderr, "no spawn") {
		t.Errorf("second job on the type should be warm: exit %d\n%s", r.code, r.stderr)
	}
	r = e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || !strings.Contains(r.stderr, "starting a worker") {
		t.Errorf("a job without the type must not use the external worker: exit %d\n%s", r.code, r.stderr)
	}
	for _, bad := range [][]string{
		{"worker", "add-type", "Bad Name", "--command", bins.Worker, "--arg={model}", "--arg={port}"},
		{"worker", "add-type", "x", "--command", "relative/path", "--arg={model}", "--arg={port}"},
		{"worker", "add-type", "x", "--command", bins.Worker, "--arg={model}"},
	} {
		if r := e.rbee(bad...); r.code == 0 {
			t.Errorf("%v accepted", bad)
		}
	}
	if r := e.rbee("infer", "--worker-type", "nope", "--model", alphabet, "abc"); r.code != rbee.ExitWorker || !strings.Contains(r.stderr, "no worker type") {
		t.Errorf("unknown type: exit %d\n%s", r.code, r.stderr)
	}
	e.stopQueen()
}

// TestQueenToken: beyond loopback the queen needs a bearer token from a
// 0600 file; requests without it are refused, keepers with it are served.
func TestQueenToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tok := filepath.Join(e.home, "token")
	if err := os.WriteFile(tok, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	loose := filepath.Join(e.home, "loose")
	os.WriteFile(loose, []byte("0123456789abcdef0123456789abcdef\n"), 0o644)
	_, port, _ := strings.Cut(e.queen, ":")
	wide := []string{"--queen", "0.0.0.0:" + port}

	if r := e.rbee(append(wide, "queen", "serve")...); r.code != rbee.ExitUsage || !strings.Contains(r.stderr, "needs a bearer token") {
		t.Errorf("non-loopback without a token: exit %d\n%s", r.code, r.stderr)
	}
	if r := e.rbee(append(wide, "--token-file", loose, "queen", "serve")...); r.code != rbee.ExitUsage || !strings.Contains(r.stderr, "chmod 600") {
		t.Errorf("token file others can read: exit %d\n%s", r.code, r.stderr)
	}
	q := testenv.Start(t, bins.Rbee, e.vars, append(wide, "--token-file", tok, "queen", "serve")...)
	if _, err := waitQueen(e); err != nil {
		t.Fatalf("%v\n%s", err, q.StderrText())
	}
	// Over TCP the control routes need the token; /health does not.
	for path, want := range map[string]int{"/v1/workers": http.StatusUnauthorized, "/v1/hives": http.StatusUnauthorized, "/health": http.StatusOK} {
		resp, err := http.Get("http://" + e.queen + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s over TCP without the token: %d, want %d", path, resp.StatusCode, want)
		}
	}
	// The owner's keeper goes through the control socket.
	if r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Errorf("the owner's keeper on the socket: exit %d\n%s", r.code, r.stderr)
	}
	r := e.rbee("--token-file", tok, "infer", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("keeper with the token: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(q.StderrText(), "0123456789abcdef") {
		t.Error("the queen logged its token")
	}
	q.Stop(30 * time.Second)
	e.waitGone()
}
