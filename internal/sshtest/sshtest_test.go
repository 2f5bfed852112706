package sshtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strings"
	"testing"
	"time"
)

func TestHostsLogIn(t *testing.T) {
	t.Parallel()
	hosts := Start(t, 3, Options{})
	seen := map[string]bool{}
	for _, h := range hosts {
		if seen[h.Addr] || seen[h.User] {
			t.Fatalf("address or user shared: %s %s", h.Addr, h.User)
		}
		seen[h.Addr], seen[h.User] = true, true
		if len(h.User) > 31 {
			t.Errorf("user name %q has %d characters, want ≤ 31", h.User, len(h.User))
		}
		if got := strings.TrimSpace(h.Run(t, "id -un")); got != h.User {
			t.Errorf("%s: id -un = %q, want %q", h.Name, got, h.User)
		}
		if got := strings.TrimSpace(h.Run(t, "pwd")); got != h.Home {
			t.Errorf("%s: pwd = %q, want %q", h.Name, got, h.Home)
		}
		kh, err := os.ReadFile(h.KnownHosts)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("[%s]:%d %s\n", strings.Split(h.Addr, ":")[0], h.Port, h.HostKeyPub)
		if string(kh) != want {
			t.Errorf("known_hosts = %q, want %q", kh, want)
		}
	}
}

func TestKillRestart(t *testing.T) {
	t.Parallel()
	h := Start(t, 1, Options{})[0]
	// A session that would outlive the listener if Kill left it.
	sess := exec.Command("ssh", append(h.SSHArgs(), "sleep 60")...)
	if err := sess.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	waitFor(t, "sleep as the host user", func() bool { return userProcs(h.UID) >= 2 })

	old := h.PID
	h.Kill()
	if alive(old) {
		t.Fatalf("sshd %d still alive after Kill", old)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("ssh session ended cleanly after Kill, want an error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ssh session still open 10s after Kill")
	}
	if out, err := exec.Command("ssh", append(h.SSHArgs(), "true")...).CombinedOutput(); err == nil {
		t.Fatalf("ssh succeeded with sshd killed: %s", out)
	}

	h.Restart(t)
	if h.PID == 0 || h.PID == old {
		t.Errorf("pid after restart = %d (before %d)", h.PID, old)
	}
	if got := strings.TrimSpace(h.Run(t, "id -un")); got != h.User {
		t.Errorf("id -un after restart = %q, want %q", got, h.User)
	}
}

func TestRotateHostKey(t *testing.T) {
	t.Parallel()
	h := Start(t, 1, Options{})[0]
	oldKH, err := os.ReadFile(h.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	oldPub := h.HostKeyPub
	h.RotateHostKey(t)
	if h.HostKeyPub == oldPub {
		t.Fatal("host key unchanged")
	}
	stalePath := t.TempDir() + "/known_hosts"
	if err := os.WriteFile(stalePath, oldKH, 0o600); err != nil {
		t.Fatal(err)
	}
	args := append(h.SSHArgs(), "true")
	for i, a := range args {
		if strings.HasPrefix(a, "UserKnownHostsFile=") {
			args[i] = "UserKnownHostsFile=" + stalePath
		}
	}
	out, err := exec.Command("ssh", args...).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("HOST IDENTIFICATION HAS CHANGED")) {
		t.Errorf("ssh with the old key: err %v, output %s; want a changed-key refusal", err, out)
	}
	h.Run(t, "true") // the new KnownHosts works
}

func TestNoForwarding(t *testing.T) {
	t.Parallel()
	h := Start(t, 1, Options{NoForwarding: true, ExtraConfig: "LogLevel VERBOSE"})[0]
	cfg, err := os.ReadFile(h.config)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"AllowTcpForwarding no\n", "AllowStreamLocalForwarding no\n", "LogLevel VERBOSE\n"} {
		if !bytes.Contains(cfg, []byte(want)) {
			t.Errorf("sshd_config lacks %q", want)
		}
	}
	h.Run(t, "true")
}

func TestCleanupRemovesEverything(t *testing.T) {
	t.Parallel()
	var hosts []*Host
	pids := map[string]int{}
	t.Run("hosts", func(t *testing.T) {
		hosts = Start(t, 2, Options{})
		for _, h := range hosts {
			pids[h.Name] = h.PID
		}
		// A process that ignores the session ending: only the uid sweep
		// finds it.
		hosts[0].Run(t, "setsid sleep 300 </dev/null >/dev/null 2>&1 &")
	})
	for _, h := range hosts {
		for _, p := range listProcs() {
			if p.uid == h.UID && !p.zombie {
				t.Errorf("%s: process %d of uid %d still running", h.Name, p.pid, h.UID)
			}
		}
		if pid := pids[h.Name]; pid == 0 || alive(pid) {
			t.Errorf("%s: sshd pid %d alive after cleanup (or never started)", h.Name, pid)
		}
		for _, p := range listProcs() {
			if cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.pid)); err == nil && !p.zombie &&
				bytes.Contains(cmd, []byte(h.config)) {
				t.Errorf("%s: sshd %d still running", h.Name, p.pid)
			}
		}
		if _, err := user.Lookup(h.User); err == nil {
			t.Errorf("%s: user %s still exists", h.Name, h.User)
		}
		if _, err := os.Stat(h.Dir); !os.IsNotExist(err) {
			t.Errorf("%s: state %s still there (%v)", h.Name, h.Dir, err)
		}
	}
}

func TestAvailable(t *testing.T) {
	if err := Available(); err != nil {
		t.Fatal(err) // these tests need root and sshd; say so rather than skip
	}
}

func userProcs(uid int) int {
	n := 0
	for _, p := range listProcs() {
		if p.uid == uid && !p.zombie {
			n++
		}
	}
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// What a crashed test binary left (its owner pid gone) is removed by the
// next one's sweep: sshd, the user's processes, the user, the state.
func TestSweepStale(t *testing.T) {
	t.Parallel()
	base, err := newBase()
	if err != nil {
		t.Fatal(err)
	}
	h := &Host{Name: "h1"}
	t.Cleanup(func() { cleanup(t, base, []*Host{h}) }) // in case the sweep fails
	if err := h.setup(base, 1, Options{}); err != nil {
		t.Fatal(err)
	}
	h.Run(t, "setsid sleep 300 </dev/null >/dev/null 2>&1 &")
	sshd := h.PID
	// An owner that no longer runs: a pid above the kernel's limit.
	if err := os.WriteFile(base+"/owner", []byte("99999999 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sweepStale()
	select {
	case <-h.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("sshd %d still running after the sweep", sshd)
	}
	if n := userProcs(h.UID); n != 0 {
		t.Errorf("%d processes of the user left", n)
	}
	if _, err := user.Lookup(h.User); err == nil {
		t.Errorf("user %s still exists", h.User)
	}
	if _, err := os.Stat(base); !os.IsNotExist(err) {
		t.Errorf("state %s still there (%v)", base, err)
	}
}
