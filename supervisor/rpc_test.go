package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbee-dev/rbee"
)

// helperRPC plays llama.cpp's rpc-server: -H HOST -p PORT [-c] [-t N];
// it echoes what it is sent, and records its flags and LLAMA_CACHE.
func helperRPC(args []string) {
	var host, port string
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-H":
			host = args[i+1]
		case "-p":
			port = args[i+1]
		}
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("args=%s cache=%s backtrace=%s\n", strings.Join(args, " "), os.Getenv("LLAMA_CACHE"), os.Getenv("GGML_NO_BACKTRACE"))
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	<-term
	os.Exit(0)
}

// rpcEngine is an engine directory whose rpc-server is this test binary.
func rpcEngine(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, filepath.Join(dir, RPCServerBin)); err != nil {
		t.Fatal(err)
	}
	return dir
}

// listenAddr finds port's listening socket in /proc/net/tcp and returns
// its address in the kernel's hex ("0100007F" is 127.0.0.1).
func listenAddr(t *testing.T, port int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Skipf("no /proc/net/tcp: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && f[3] == "0A" && strings.HasSuffix(f[1], fmt.Sprintf(":%04X", port)) {
			ip, _, _ := strings.Cut(f[1], ":")
			return ip
		}
	}
	return ""
}

func TestStartRPC(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	res := &fakeReservations{}
	s := New(Config{Engine: rpcEngine(t), RunDir: dir, LogDir: dir, Reservations: res, ReadyTimeout: 20 * time.Second})
	defer s.StopAll(time.Second)
	ctx := context.Background()
	cache := filepath.Join(dir, "rpc-cache")
	r, err := s.StartRPC(ctx, RPCSpec{Device: "cpu", CacheDir: cache, Reservation: "res-1", Job: "job-1"})
	if err != nil {
		t.Fatal(err)
	}
	info := r.Info()
	if got := listenAddr(t, info.Port); got != "0100007F" {
		t.Errorf("the RPC server listens on %q, want 127.0.0.1 (0100007F)", got)
	}
	if ls := s.RPCServers(); len(ls) != 1 || ls[0].ID != info.ID || ls[0].Job != "job-1" {
		t.Errorf("RPCServers: got %+v", ls)
	}
	if st, err := os.Stat(cache); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("cache dir: %v %v", st, err)
	}
	logb, _ := os.ReadFile(filepath.Join(dir, info.ID+".log"))
	if want := "args=-H 127.0.0.1 -p "; !strings.Contains(string(logb), want) || !strings.Contains(string(logb), " -c ") ||
		!strings.Contains(string(logb), "cache="+cache) ||
		!strings.Contains(string(logb), "backtrace=1") {
		t.Errorf("rpc-server started with %q", logb)
	}
	if got := strings.Join(res.get(), "; "); !strings.Contains(got, "attach res-1 "+info.ID) || !strings.Contains(got, "loaded "+info.ID) {
		t.Errorf("reservations: %s", got)
	}

	// A crash is noticed, said with its reason, and gives the room back.
	if err := syscall.Kill(info.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("the killed RPC server is not noticed")
	}
	if why := r.ExitReason(); !strings.Contains(why, info.ID) || !strings.Contains(why, "killed") {
		t.Errorf("exit reason %q", why)
	}
	waitUntil(t, "the RPC server to be forgotten", func() bool { return len(s.RPCServers()) == 0 })
	waitUntil(t, "its room to be released", func() bool { return strings.Contains(strings.Join(res.get(), "; "), "release "+info.ID) })

	// StopAll stops the rest, even after a Release (no handover).
	r2, err := s.StartRPC(ctx, RPCSpec{Device: "cpu"})
	if err != nil {
		t.Fatal(err)
	}
	s.Release()
	s.StopAll(time.Second)
	select {
	case <-r2.Exited():
	default:
		t.Error("StopAll left the RPC server running")
	}
}

func TestStartRPCNoBinary(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := New(Config{Engine: dir, RunDir: dir, LogDir: dir})
	_, err := s.StartRPC(context.Background(), RPCSpec{Device: "cpu"})
	if !errors.Is(err, ErrNoRPCServer) || rbee.CodeOf(err) != rbee.CodeEngine {
		t.Fatalf("got %v (code %s), want ErrNoRPCServer, %s: the bundle's fault, no worker's", err, rbee.CodeOf(err), rbee.CodeEngine)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStartRPCSandboxed: with a sandbox, the RPC server runs in a network
// namespace of its own: its port is on no loopback of this machine, it is
// reached only through the sandbox's 0600 socket, which carries the bytes
// both ways and refuses another user (uid 65534, through curl; the test
// runs as root, like CI).
func TestStartRPCSandboxed(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "rbee-rpc-") // short: a unix socket path
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{Engine: rpcEngine(t), RunDir: dir, LogDir: dir, ReadyTimeout: 20 * time.Second, Sandbox: self})
	defer s.StopAll(time.Second)
	r, err := s.StartRPC(context.Background(), RPCSpec{Device: "cpu", Job: "job-1"})
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(dir, "rpc-"+"*.log"))
		t.Fatalf("%v %s", err, b)
	}
	info := r.Info()
	if got := listenAddr(t, info.Port); got != "" {
		t.Errorf("the RPC server's port %d is on this machine's network (%s)", info.Port, got)
	}
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", info.Port), time.Second); err == nil {
		c.Close()
		t.Errorf("127.0.0.1:%d answers on this machine", info.Port)
	}
	c, err := r.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "hello"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "hello" {
		t.Fatalf("through the sandbox: %q %v, want the echo", got, err)
	}
	if st, err := os.Stat(r.addr); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("the sandbox's socket: %v %v, want 0600", st, err)
	}
	for _, p := range []string{dir, r.addr} {
		_ = os.Chmod(p, 0o777) // loosened: the uid check still refuses
	}
	curl := exec.Command("curl", "-s", "-m", "5", "--unix-socket", r.addr, "http://rpc/")
	curl.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := curl.CombinedOutput(); err == nil || len(out) > 0 {
		t.Errorf("another user through the sandbox's socket: %q %v, want the connection closed", out, err)
	}
	r.Stop(5 * time.Second)
	if _, err := os.Stat(r.addr); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the sandbox's socket is left: %v", err)
	}
}
