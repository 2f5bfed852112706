package e2e

import (
	"encoding/json"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/rbee-dev/rbee/queenapi"
)

// TestTopOnce: rbee top --once prints one plain frame of what the queen
// knows — the hive, its device with a memory bar, a running worker with
// its slots busy — and counts a job in flight and the tokens it generated.
func TestTopOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cmd, errb := firstToken(t, e, "--max-tokens", "2000", "hello")
	r := e.rbee("top", "--once")
	if r.code != 0 {
		t.Fatalf("top --once: exit %d\n%s", r.code, r.stderr)
	}
	t.Logf("rbee top --once:\n%s", r.stdout)
	for _, re := range []string{
		`(?m)^localhost +online +(now|\d+s ago) +1 +1`,            // the hive: status, last seen, devices, workers
		`(?m)^localhost/cpu +.+ +\[#*\.*\] +.+ of .+`,             // its device, with a bar
		`(?m)^localhost/w-\S+ +random-3m\S* +cpu +ready +1/\d+ +`, // the worker, one slot busy
	} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("top --once has no line matching %s", re)
		}
	}
	signal(t, cmd.Process.Pid, syscall.SIGINT)
	if err := cmd.Wait(); exitCode(err) != 130 {
		t.Errorf("the long job, interrupted: %v\n%s", err, errb.String())
	}

	if r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 {
		t.Fatalf("infer: exit %d\n%s", r.code, r.stderr)
	}
	r = e.rbee("top", "--once", "--json")
	var top queenapi.Top
	if err := json.Unmarshal([]byte(r.stdout), &top); err != nil {
		t.Fatalf("top --once --json: %v\n%s", err, r.stdout)
	}
	var gen int64
	for _, w := range top.Workers {
		if w.InFlight != 0 {
			t.Errorf("worker %s: %d in flight after every job ended", w.ID, w.InFlight)
		}
		if strings.Contains(w.Model, "alphabet") {
			gen = w.Generated
		}
	}
	if gen <= 0 {
		t.Errorf("the alphabet worker's generated tokens: %d, want the job's\n%s", gen, r.stdout)
	}
	// In a pipe: a plain frame every interval, until stopped.
	tc, out, terr := e.start("top", "--interval", "200ms")
	frames := 0
	for frames < 2 {
		l, err := out.ReadString('\n')
		if err != nil {
			t.Fatalf("top in a pipe: %v after %d frames\n%s", err, frames, terr.String())
		}
		if strings.HasPrefix(l, "rbee top ") {
			frames++
		}
	}
	signal(t, tc.Process.Pid, syscall.SIGINT)
	if err := tc.Wait(); err != nil {
		t.Errorf("top in a pipe, interrupted: %v\n%s", err, terr.String())
	}
	e.stopQueen()
}
