package proc

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary plays the child process (Go's TestHelperProcess
// pattern): PROC_HELPER says what it does.
func TestMain(m *testing.M) {
	switch os.Getenv("PROC_HELPER") {
	case "":
		os.Exit(m.Run())
	case "print-exit":
		fmt.Println("first line")
		fmt.Fprintln(os.Stderr, "it broke: disk on fire")
		os.Exit(3)
	case "ignore-term":
		signalIgnoreTerm()
		fmt.Println("ready")
		time.Sleep(time.Hour)
	case "sleep":
		fmt.Println("ready")
		time.Sleep(time.Hour)
	case "group": // ignores SIGTERM; its child, in its group, does too
		signalIgnoreTerm()
		child := exec.Command(os.Args[0])
		child.Env = append(os.Environ(), "PROC_HELPER=ignore-term")
		if err := child.Start(); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Printf("child %d\n", child.Process.Pid)
		time.Sleep(time.Hour)
	}
}

func signalIgnoreTerm() { signal.Ignore(syscall.SIGTERM) }

func start(t *testing.T, mode string) *Proc {
	t.Helper()
	return startOpt(t, mode, Options{})
}

func startOpt(t *testing.T, mode string, opt Options) *Proc {
	t.Helper()
	opt.Log = filepath.Join(t.TempDir(), "p.log")
	opt.Env = append(os.Environ(), "PROC_HELPER="+mode)
	p, err := Start(os.Args[0], nil, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Signal(syscall.SIGKILL); <-p.Exited() })
	return p
}

func waitLog(t *testing.T, p *Proc, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(readFile(p.Log), want) {
		if time.Now().After(deadline) {
			t.Fatalf("log never said %q: %q", want, readFile(p.Log))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func readFile(p string) string { b, _ := os.ReadFile(p); return string(b) }

func TestExitAndWhy(t *testing.T) {
	t.Parallel()
	p := start(t, "print-exit")
	<-p.Exited()
	if p.Err() == nil {
		t.Fatal("Err = nil for exit status 3")
	}
	if got := p.Why(); !strings.Contains(got, "exit status 3") || !strings.Contains(got, "disk on fire") {
		t.Errorf("Why = %q, want the status and the log's last line", got)
	}
	if st, err := os.Stat(p.Log); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("log mode: %v %v, want 0600", st, err)
	}
}

func TestStopGraceful(t *testing.T) {
	t.Parallel()
	p := start(t, "sleep")
	waitLog(t, p, "ready")
	p.Stop(10 * time.Second)
	select {
	case <-p.Exited():
	default:
		t.Fatal("Stop returned before the process exited")
	}
}

// A process that ignores SIGTERM is killed after the grace period.
func TestStopKillsAfterGrace(t *testing.T) {
	t.Parallel()
	p := start(t, "ignore-term")
	waitLog(t, p, "ready")
	p.Stop(100 * time.Millisecond)
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Err = %v, want killed", err)
	}
}

func TestTail(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "log")
	var b strings.Builder
	for i := range 100000 { // more than tailMax
		fmt.Fprintf(&b, "line %d\n\n", i)
	}
	os.WriteFile(p, []byte(b.String()), 0o600)
	got, err := Tail(p, 2)
	if err != nil || string(got) != "line 99998\nline 99999\n" {
		t.Errorf("Tail = %q, %v", got, err)
	}
	if got := LastLine(p); got != "line 99999" {
		t.Errorf("LastLine = %q", got)
	}
	if got := LastLine(filepath.Join(t.TempDir(), "missing")); got != "" {
		t.Errorf("LastLine(missing) = %q, want empty", got)
	}
}

// With Setpgid the kill after the grace period reaches the process's
// children too.
func TestStopKillsGroup(t *testing.T) {
	t.Parallel()
	p := startOpt(t, "group", Options{Setpgid: true})
	waitLog(t, p, "child ")
	_, after, _ := strings.Cut(readFile(p.Log), "child ")
	child, err := strconv.Atoi(strings.TrimSpace(after))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) })
	p.Stop(100 * time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for !gone(child) {
		if time.Now().After(deadline) {
			t.Fatalf("child %d outlived its group's kill", child)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// gone says whether pid has exited (a zombie nobody reaped counts).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}

// Attach watches and stops a process another Proc started.
func TestAttach(t *testing.T) {
	t.Parallel()
	p := startOpt(t, "ignore-term", Options{Setpgid: true})
	waitLog(t, p, "ready")
	a, err := Attach(p.PID(), Options{Log: p.Log, Setpgid: true})
	if err != nil {
		t.Fatal(err)
	}
	if a.PID() != p.PID() {
		t.Errorf("PID = %d, want %d", a.PID(), p.PID())
	}
	a.Stop(100 * time.Millisecond)
	<-p.Exited()
	if err := a.Err(); err == nil || !strings.Contains(err.Error(), "not our child") {
		t.Errorf("Err = %v, want status unknown", err)
	}
	if err := a.Signal(syscall.SIGTERM); err != nil {
		t.Errorf("Signal after exit = %v, want nil", err)
	}
	if _, err := Attach(p.PID(), Options{}); err == nil {
		t.Error("Attach to a reaped pid succeeded")
	}
}
