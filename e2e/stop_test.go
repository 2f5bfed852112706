package e2e

import (
	"strings"
	"syscall"
	"testing"

	"github.com/rbee-dev/rbee"
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
