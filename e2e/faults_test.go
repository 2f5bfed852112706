package e2e

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/rbee-dev/rbee"
)

// TestFaultsHungWorker: a worker stopped (SIGSTOP) mid-stream makes no
// progress and does not answer its health probe: the hive fails the job
// naming the worker, kills it, and the next job starts a new one.
func TestFaultsHungWorker(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "RBEE_WORKER_STALL=1s")
	cmd, errb := firstToken(t, e, "hello")
	ws := e.workers()
	if len(ws) != 1 {
		t.Fatalf("workers = %+v", ws)
	}
	signal(t, ws[0].PID, syscall.SIGSTOP)
	t.Cleanup(func() { _ = syscall.Kill(ws[0].PID, syscall.SIGCONT) })
	err := cmd.Wait()
	if code := exitCode(err); code != rbee.ExitWorker {
		t.Fatalf("exit code = %d, want %d\n%s", code, rbee.ExitWorker, errb.String())
	}
	if s := errb.String(); !strings.Contains(s, "rbee: worker "+ws[0].ID) || !strings.Contains(s, "made no progress") {
		t.Errorf("stderr does not say the worker hung:\n%s", s)
	}
	if !dead(ws[0].PID) {
		t.Errorf("the hung worker (pid %d) is still there", ws[0].PID)
	}
	if left := e.workers(); len(left) != 0 {
		t.Errorf("hive still lists %+v", left)
	}
	r := e.rbee("infer", "--model", longModel, "--temperature", "0", "--max-tokens", "5", "hello")
	if r.code != 0 || !strings.Contains(r.stderr, "starting a worker") {
		t.Errorf("next job should start a new worker: exit %d\n%s", r.code, r.stderr)
	}
	e.stopQueen()
}

// dead reports whether pid is gone (or a zombie no one reaped yet).
func dead(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(rest, "Z")
}
