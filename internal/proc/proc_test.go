package proc

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
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
	}
}

func signalIgnoreTerm() { signal.Ignore(syscall.SIGTERM) }

func start(t *testing.T, mode string) *Proc {
	t.Helper()
	log := filepath.Join(t.TempDir(), "p.log")
	p, err := Start(os.Args[0], nil, Options{Log: log, Env: append(os.Environ(), "PROC_HELPER="+mode)})
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
