package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/internal/sshtest"
	"github.com/rbee-dev/rbee/queenapi"
)

// hiveLs returns the queen's view of one hive (rbee hive ls --json).
func hiveLs(t *testing.T, e *env, name string) queenapi.HiveInfo {
	t.Helper()
	r := e.rbee("hive", "ls", "--json")
	var ls []queenapi.HiveInfo
	if err := json.Unmarshal([]byte(r.stdout), &ls); err != nil {
		t.Fatalf("hive ls --json: %v\n%s%s", err, r.stdout, r.stderr)
	}
	for _, h := range ls {
		if h.Name == name {
			return h
		}
	}
	t.Fatalf("hive %s not in hive ls: %s", name, r.stdout)
	return queenapi.HiveInfo{}
}

// TestSSHStalledHost: a host whose sshd and SFTP server are stopped
// (SIGSTOP) after a model push is declared offline by the keepalives
// without a job touching it; a job to it fails within the connect bound
// naming the host and the step; jobs to another hive and fleet jobs are
// served meanwhile; after SIGCONT the next job reconnects and reuses the
// warm worker.
func TestSSHStalledHost(t *testing.T) {
	t.Parallel()
	const keepalive = 1500 * time.Millisecond
	e, hosts := sshEnv(t, 2, sshtest.Options{})
	e.vars = append(e.vars, "RBEE_SSH_KEEPALIVE="+keepalive.String())
	for i, h := range hosts {
		name := []string{"h1", "h2"}[i]
		if r := e.addHive(h, name); r.code != 0 {
			t.Fatalf("hive add %s: exit %d\n%s", name, r.code, r.stderr)
		}
		r := e.rbee("infer", "--hive", name, "--model", alphabet, "--temperature", "0", "abc")
		if r.code != 0 || r.stdout != alphabetRest+"\n" {
			t.Fatalf("infer on %s: exit %d %q\n%s", name, r.code, r.stdout, r.stderr)
		}
		if i == 0 && !strings.Contains(r.stderr, "pushing alphabet.gguf") {
			t.Fatalf("the model was not pushed to h1:\n%s", r.stderr)
		}
	}

	hosts[0].Freeze()
	defer hosts[0].Thaw()
	frozen := time.Now()
	// Offline with the reason, found by the keepalives alone.
	deadline := frozen.Add(keepalive + 5*time.Second)
	for {
		h1 := hiveLs(t, e, "h1")
		if h1.Status == "offline" && h1.Reason != "" {
			t.Logf("h1 offline after %s: %s", time.Since(frozen).Round(time.Millisecond), h1.Reason)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hive ls still says %s (%s) %s after the freeze", h1.Status, h1.Reason, time.Since(frozen))
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A job to the stalled host, and meanwhile one to h2 and a fleet job.
	var wg sync.WaitGroup
	var stalled, other, fleet result
	var stalledTook, otherDone, stalledDone time.Duration
	start := time.Now()
	wg.Add(3)
	go func() {
		defer wg.Done()
		stalled = e.rbee("infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc")
		stalledDone = time.Since(start)
		stalledTook = stalledDone
	}()
	go func() {
		defer wg.Done()
		other = e.rbee("infer", "--hive", "h2", "--model", alphabet, "--temperature", "0", "abc")
		otherDone = time.Since(start)
	}()
	go func() {
		defer wg.Done()
		fleet = e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
	}()
	wg.Wait()
	if stalled.code != rbee.ExitHive || !strings.Contains(stalled.stderr, "hive h1") || !strings.Contains(stalled.stderr, "step") {
		t.Errorf("job to the stalled host: exit %d, want %d naming the hive and the step:\n%s", stalled.code, rbee.ExitHive, stalled.stderr)
	}
	if stalledTook > 6*time.Second {
		t.Errorf("the job to the stalled host took %s, want under 6s", stalledTook)
	}
	if other.code != 0 || other.stdout != alphabetRest+"\n" || !strings.Contains(other.stderr, "no spawn") {
		t.Errorf("job to h2: exit %d %q\n%s", other.code, other.stdout, other.stderr)
	}
	if otherDone > stalledDone {
		t.Errorf("the job to h2 ended after the stalled one (%s > %s): it waited on h1", otherDone, stalledDone)
	}
	if fleet.code != 0 || fleet.stdout != alphabetRest+"\n" || !strings.Contains(fleet.stderr, "hive h1 is unreachable, left out") {
		t.Errorf("fleet job: exit %d %q\n%s", fleet.code, fleet.stdout, fleet.stderr)
	}

	hosts[0].Thaw()
	r := e.rbee("infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" || !strings.Contains(r.stderr, "no spawn") {
		t.Errorf("after SIGCONT: exit %d %q, want the warm worker reused\n%s", r.code, r.stdout, r.stderr)
	}
	if h1 := hiveLs(t, e, "h1"); h1.Status != "online" {
		t.Errorf("h1 after SIGCONT: %s (%s), want online", h1.Status, h1.Reason)
	}
	e.stopQueen()
}

// TestSSHRebootedHostParallelFirstJobs: all of a host's processes die
// (files kept, stale sockets and all); three parallel first jobs to it
// start one agent over one SSH connection and load one worker.
func TestSSHRebootedHostParallelFirstJobs(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	h := hosts[0]
	if r := e.addHive(h, "h1"); r.code != 0 {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	if r := e.rbee("infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 {
		t.Fatalf("infer: exit %d\n%s", r.code, r.stderr)
	}
	// The reboot: sshd and everything of the host's user, killed.
	h.Kill()
	for _, pid := range hostProcs(h.UID, "") {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	waitFor(t, "the host's processes to die", func() bool { return len(hostProcs(h.UID, "")) == 0 })
	logPath := filepath.Join(h.Dir, "sshd.log")
	before := countIn(logPath, "Accepted publickey")
	h.Restart(t)

	var wg sync.WaitGroup
	rs := make([]result, 3)
	for i := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rs[i] = e.rbee("infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc")
		}()
	}
	wg.Wait()
	for i, r := range rs {
		if r.code != 0 || r.stdout != alphabetRest+"\n" {
			t.Errorf("job %d: exit %d %q\n%s", i, r.code, r.stdout, r.stderr)
		}
	}
	if ps := hostProcs(h.UID, "rbee-hive"); len(ps) != 1 {
		t.Errorf("%d agents running, want 1: %v", len(ps), describe(ps))
	}
	if n := len(hostProcs(h.UID, "rbee-worker")); n != 1 {
		t.Errorf("%d workers running, want 1", n)
	}
	if n := countIn(logPath, "Accepted publickey") - before; n != 1 {
		t.Errorf("%d SSH logins after the reboot, want 1 (one connection shared)", n)
	}
	e.stopQueen()
}

func countIn(path, needle string) int {
	b, _ := os.ReadFile(path)
	return strings.Count(string(b), needle)
}

// TestQueenRestartReconnects: a queen that starts picks its hives up again
// without a command. Until their connections are up they are connecting,
// not online (the last queen's word); a frozen host stays connecting, then
// comes online by itself when it thaws; LAST SEEN moves with keepalives.
func TestQueenRestartReconnects(t *testing.T) {
	t.Parallel()
	const keepalive = 1500 * time.Millisecond
	e, hosts := sshEnv(t, 2, sshtest.Options{})
	e.vars = append(e.vars, "RBEE_SSH_KEEPALIVE="+keepalive.String(), "RBEE_CONNECT_TIMEOUT=20s")
	for i, h := range hosts {
		if r := e.addHive(h, []string{"h1", "h2"}[i]); r.code != 0 {
			t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
		}
	}
	e.stopQueen()
	hosts[1].Freeze()
	defer hosts[1].Thaw()
	if h2 := hiveLs(t, e, "h2"); h2.Status != "connecting" { // this starts the queen
		t.Errorf("a frozen hive after the queen's start: %s (%s), want connecting", h2.Status, h2.Reason)
	}
	online := func(name string) func() bool {
		return func() bool { return hiveLs(t, e, name).Status == "online" }
	}
	waitFor(t, "h1 online without a command", online("h1"))
	if h2 := hiveLs(t, e, "h2"); h2.Status != "connecting" {
		t.Errorf("the frozen hive: %s (%s), want connecting", h2.Status, h2.Reason)
	}
	hosts[1].Thaw()
	waitFor(t, "h2 online once thawed, without a command", online("h2"))

	first := hiveLs(t, e, "h1").LastSeen
	waitFor(t, "h1's LAST SEEN moves with the keepalives", func() bool { return hiveLs(t, e, "h1").LastSeen.After(first) })
	e.stopQueen()
}
