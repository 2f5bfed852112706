package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/sshtest"
)

// Arguments that would run commands if pasted into a shell come back
// literally, and the commands they carry never run (the hosts share this
// machine's file system, so the markers are checked here).
func TestRunQuotesEveryArgument(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	c := dial(t, h)
	ctx := testCtx(t)
	// Something for a glob to match, were it expanded.
	if _, err := c.Run(ctx, []string{"touch", "globbait"}, nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		arg    string
		marker string // a file the arg would create if a shell ran it
	}{
		{"command substitution", "$(touch m1)", "m1"},
		{"backticks", "`touch m2`", "m2"},
		{"semicolon", "x; touch m3", "m3"},
		{"pipe", "x | touch m4", "m4"},
		{"and", "x && touch m5", "m5"},
		{"single quotes", "'; touch m6; '", "m6"},
		{"double quotes", `"; touch m7; "`, "m7"},
		{"redirect", "> m8", "m8"},
		{"background", "x & touch m9", "m9"},
		{"glob", "*", ""},
		{"variable", "$HOME", ""},
		{"spaces", "  a  b  ", ""},
		{"empty", "", ""},
		{"backslash", `a\b\\`, ""},
		{"tab", "a\tb", ""},
		{"dash", "-n", ""},
		{"utf-8", "ünï €", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := c.Run(ctx, []string{"printf", "[%s]", tt.arg}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := string(out), "["+tt.arg+"]"; got != want {
				t.Errorf("got %q, want %q", got, want)
			}
			if tt.marker != "" {
				if _, err := os.Stat(filepath.Join(h.Home, tt.marker)); !os.IsNotExist(err) {
					t.Errorf("marker %s exists (err %v): the argument ran as a command", tt.marker, err)
				}
			}
		})
	}
	t.Run("all at once", func(t *testing.T) {
		argv := []string{"printf", `%s\n`}
		for _, tt := range tests {
			argv = append(argv, tt.arg)
		}
		out, err := c.Run(ctx, argv, nil)
		if err != nil {
			t.Fatal(err)
		}
		var want strings.Builder
		for _, a := range argv[2:] {
			want.WriteString(a + "\n")
		}
		if string(out) != want.String() {
			t.Errorf("got %q, want %q", out, want.String())
		}
	})
	t.Run("home tilde", func(t *testing.T) {
		out, err := c.Run(ctx, []string{"printf", "%s", "~/x y"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := string(out), h.Home+"/x y"; got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	})
	for _, arg := range []string{"a\x00b", "true\ntouch m10"} {
		t.Run("refused "+strings.ReplaceAll(strings.ReplaceAll(arg, "\x00", `\0`), "\n", `\n`), func(t *testing.T) {
			_, err := c.Run(ctx, []string{"sh", "-c", arg}, nil)
			if !errors.Is(err, ErrUnsafeArgument) {
				t.Errorf("got %v, want ErrUnsafeArgument", err)
			}
			if _, err := os.Stat(filepath.Join(h.Home, "m10")); !os.IsNotExist(err) {
				t.Errorf("m10 exists: the refused command ran")
			}
		})
	}
}

func TestRunResults(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	c := dial(t, h)
	ctx := testCtx(t)

	out, err := c.Run(ctx, []string{"cat"}, strings.NewReader("through stdin"))
	if err != nil || string(out) != "through stdin" {
		t.Errorf("cat: got %q, %v; want %q", out, err, "through stdin")
	}

	_, err = c.Run(ctx, []string{"sh", "-c", "echo bad thing happened >&2; exit 3"}, nil)
	var ee *ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("got %v, want an *ExitError", err)
	}
	if ee.Status != 3 || !strings.Contains(string(ee.Stderr), "bad thing happened") {
		t.Errorf("got status %d stderr %q, want 3 and the message", ee.Status, ee.Stderr)
	}
	for _, want := range []string{"run sh on " + target(h).Host, "exit status 3", "bad thing happened"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}

	// 100 KiB of stderr: the error keeps the last 32 KiB.
	_, err = c.Run(ctx, []string{"sh", "-c", `i=0; while [ $i -lt 1600 ]; do printf '%063d\n' $i >&2; i=$((i+1)); done; exit 1`}, nil)
	if !errors.As(err, &ee) {
		t.Fatalf("got %v, want an *ExitError", err)
	}
	if len(ee.Stderr) != maxStderr || !bytes.HasSuffix(ee.Stderr, []byte("1599\n")) {
		t.Errorf("stderr kept: %d bytes ending %q, want %d ending in the last line", len(ee.Stderr), ee.Stderr[max(0, len(ee.Stderr)-10):], maxStderr)
	}

	_, err = c.Run(ctx, []string{"no-such-command-rbee"}, nil)
	if !errors.As(err, &ee) || ee.Status != 127 {
		t.Errorf("missing command: got %v, want exit status 127", err)
	}
}

// A cancelled Run returns at once and the remote command is killed.
func TestRunCancel(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	c := dial(t, h)
	ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Run(ctx, []string{"sleep", "37"}, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Run returned after %s", d)
	}
	within(t, 10*time.Second, "remote sleep killed", func() bool {
		return !strings.Contains(h.Run(t, "ps -u $(id -u) -o args="), "sleep 37")
	})
	// The connection is still good.
	if out, err := c.Run(testCtx(t), []string{"echo", "ok"}, nil); err != nil || string(out) != "ok\n" {
		t.Errorf("after cancel: got %q, %v", out, err)
	}
}

func TestStartStreams(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	c := dial(t, h)
	s, err := c.Start(testCtx(t), []string{"sh", "-c", "while read l; do echo \"out:$l\"; echo \"err:$l\" >&2; done; exit 4"})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(s.Stderr)
		errc <- b
	}()
	io.WriteString(s.Stdin, "a\nb\n")
	s.Stdin.Close()
	out, _ := io.ReadAll(s.Stdout)
	if got, want := string(out), "out:a\nout:b\n"; got != want {
		t.Errorf("stdout %q, want %q", got, want)
	}
	if got, want := string(<-errc), "err:a\nerr:b\n"; got != want {
		t.Errorf("stderr %q, want %q", got, want)
	}
	var ee *ExitError
	if err := s.Wait(); !errors.As(err, &ee) || ee.Status != 4 {
		t.Errorf("Wait: got %v, want exit status 4", err)
	}
	s.Close()
}

// Killing the host's sshd ends the connection: Done closes and Err says so.
func TestDoneWhenServerDies(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	c := dial(t, h)
	if _, err := c.Run(testCtx(t), []string{"true"}, nil); err != nil {
		t.Fatal(err)
	}
	h.Kill()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed 10s after sshd was killed")
	}
	err := c.Err()
	t.Logf("server killed: %v", err)
	if !errors.Is(err, ErrConnLost) || !strings.Contains(err.Error(), target(h).Host) {
		t.Errorf("Err = %v, want ErrConnLost naming the host", err)
	}
	if _, err := c.Run(testCtx(t), []string{"true"}, nil); !errors.Is(err, ErrConnLost) {
		t.Errorf("Run after death: got %v, want ErrConnLost", err)
	}
}

// A host that stops answering (sshd frozen, socket open) is found by the
// keepalives: three unanswered intervals end the connection.
func TestKeepaliveFindsHungHost(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	cfg := config(t, h)
	cfg.Keepalive = 200 * time.Millisecond
	c, err := Dial(testCtx(t), target(h), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Alive and answering: several intervals pass without harm.
	time.Sleep(time.Second)
	if err := c.Err(); err != nil {
		t.Fatalf("connection died while the host answered: %v", err)
	}
	h.Freeze()
	defer h.Thaw()
	start := time.Now()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed 10s after the host froze")
	}
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Errorf("died after %s, before three keepalive intervals", d)
	}
	t.Logf("host hung: %v", c.Err())
	if err := c.Err(); !errors.Is(err, ErrConnLost) || !strings.Contains(err.Error(), "keepalive") {
		t.Errorf("Err = %v, want ErrConnLost about keepalives", err)
	}
}

// Everything a Conn starts is gone after Close. Not parallel: it counts
// the process's goroutines.
func TestCloseLeaksNoGoroutines(t *testing.T) {
	hosts := sshtest.Start(t, 2, sshtest.Options{})
	h, noFwd := hosts[0], hosts[1]
	ctx := testCtx(t)
	startUnixEcho(t, h)
	before := runtime.NumGoroutine()

	c, err := Dial(ctx, target(h), config(t, h))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Run(ctx, []string{"cat"}, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	c.Run(short, []string{"sleep", "30"}, nil)
	cancel()
	if _, err := c.Upload(ctx, strings.NewReader("data"), 4, "leak/file", 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := c.Start(ctx, []string{"sleep", "30"})
	if err != nil {
		t.Fatal(err)
	}
	_ = s
	u, err := c.DialUnix(ctx, "~/echo.sock")
	if err != nil {
		t.Fatal(err)
	}
	u.Write([]byte("x"))
	b, err := c.DialBridge(ctx, []string{"cat"})
	if err != nil {
		t.Fatal(err)
	}
	b.Write([]byte("x"))
	io.ReadFull(b, make([]byte, 1))
	b.Close()
	c.Close() // with the session, the unix conn still open

	c2, err := Dial(ctx, target(noFwd), config(t, noFwd))
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()

	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		var buf bytes.Buffer
		pprof.Lookup("goroutine").WriteTo(&buf, 1)
		t.Errorf("%d goroutines after Close, %d before:\n%s", n, before, buf.String())
	}
}

// Close never waits on a stalled peer: with the SFTP subsystem in use and
// the host frozen, it returns at once (the transport is closed first, so
// the SFTP receive loop ends with it).
func TestCloseFrozenHostWithSFTP(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	ctx := testCtx(t)
	c, err := Dial(ctx, target(h), config(t, h))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Upload(ctx, strings.NewReader("data"), 4, "frozen/file", 0o644); err != nil {
		t.Fatal(err)
	}
	h.Freeze()
	defer h.Thaw()
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		c.Close()
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		h.Thaw() // lets the blocked Close end, so the test does not leak it
		<-closed
		t.Fatal("Close blocked on a frozen host for 10s")
	}
}

// A host ssh knows through the UserKnownHostsFile of the ssh config is
// known to rbee too (it was refused as unknown); a known_hosts file the
// caller names still wins.
func TestDialUserKnownHostsFile(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	tg := target(h)
	sshConfig := filepath.Join(t.TempDir(), "config")
	text := fmt.Sprintf("Host %s\n  UserKnownHostsFile %s\n", tg.Host, h.KnownHosts)
	if err := os.WriteFile(sshConfig, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Dial(testCtx(t), tg, Config{SSHConfig: sshConfig})
	if err != nil {
		t.Fatalf("dial with the host in the config's UserKnownHostsFile: %v", err)
	}
	c.Close()
	empty := filepath.Join(t.TempDir(), "known_hosts")
	if _, err := Dial(testCtx(t), tg, Config{SSHConfig: sshConfig, KnownHosts: empty}); !errors.Is(err, ErrUnknownHostKey) {
		t.Errorf("with a known_hosts file named: %v, want ErrUnknownHostKey (the named file wins)", err)
	}
}

// An sftp session the server closes when idle (sshd's ChannelTimeout,
// OpenSSH 9.2 and later) is opened again on the next use: every push after
// the first failed with "connection lost" while other jobs worked.
func TestSFTPReopenedAfterChannelTimeout(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{ExtraConfig: "ChannelTimeout *=1s"})[0]
	c := dial(t, h)
	ctx := testCtx(t)
	if _, err := c.Upload(ctx, strings.NewReader("one"), 3, "first.txt", 0o600); err != nil {
		t.Fatal(err)
	}
	// Idle past the server's channel timeout (time must pass: there is no
	// event to wait for).
	time.Sleep(3 * time.Second)
	if _, err := c.Upload(ctx, strings.NewReader("two"), 3, "second.txt", 0o600); err != nil {
		t.Fatalf("upload after the sftp channel timed out: %v", err)
	}
}
