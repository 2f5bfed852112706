package split

import (
	"context"
	"io"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// echoServer plays an RPC server: it echoes, and can drop its
// connections (a killed process).
type echoServer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func newEchoServer(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(s.kill)
	return s
}

// accepted counts the connections it took.
func (s *echoServer) accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *echoServer) kill() {
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

type lossLog struct {
	mu   sync.Mutex
	got  []string
	once chan struct{}
}

func (l *lossLog) lost(hive string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, hive+": "+err.Error())
	if len(l.got) == 1 {
		close(l.once)
	}
}

func (l *lossLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.got...)
}

func startForward(t *testing.T, srv *echoServer, l *lossLog) *forward {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.ln.Addr().String()
	return newForward("h2", ln, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}, l.lost, admitLocal, nil, 0)
}

func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != msg {
		t.Fatalf("got %q, want %q", got, msg)
	}
}

// The worker closing its connections is no loss; the bytes are counted;
// Close leaves no goroutine behind.
func TestForwardCarriesAndCounts(t *testing.T) {
	before := runtime.NumGoroutine()
	srv := newEchoServer(t)
	l := &lossLog{once: make(chan struct{})}
	f := startForward(t, srv, l)
	if !strings.HasPrefix(f.Endpoint(), "127.0.0.1:") {
		t.Errorf("endpoint %s", f.Endpoint())
	}
	for range 3 {
		c, err := net.Dial("tcp", f.Endpoint())
		if err != nil {
			t.Fatal(err)
		}
		echo(t, c, "hello rpc")
		echo(t, c, strings.Repeat("x", 1<<20))
		c.Close()
	}
	f.Close()
	if up, down := f.Bytes(); up != 3*(9+1<<20) || down != up {
		t.Errorf("carried %d up, %d down; want %d each", up, down, 3*(9+1<<20))
	}
	if got := l.all(); len(got) != 0 {
		t.Errorf("losses reported: %v", got)
	}
	srv.kill()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after Close, %d before", runtime.NumGoroutine(), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The RPC server going away mid-stream is reported once per connection,
// naming its hive, within moments; Close still ends everything.
func TestForwardReportsTheFarEnd(t *testing.T) {
	srv := newEchoServer(t)
	l := &lossLog{once: make(chan struct{})}
	f := startForward(t, srv, l)
	defer f.Close()
	c, err := net.Dial("tcp", f.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo(t, c, "before")
	srv.kill()
	select {
	case <-l.once:
	case <-time.After(5 * time.Second):
		t.Fatal("the RPC server's end was not reported")
	}
	if got := l.all(); !strings.HasPrefix(got[0], "h2: ") {
		t.Errorf("loss %q does not name hive h2", got[0])
	}
	// The worker's side sees its connection end too.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("the worker's connection still carries after the loss")
	}
	// A new connection cannot reach the server: reported as well.
	c2, err := net.Dial("tcp", f.Endpoint())
	if err == nil {
		defer c2.Close()
		_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = c2.Read(make([]byte, 1))
	}
	if got := l.all(); len(got) < 2 || !strings.Contains(got[1], "reach its RPC server") {
		t.Errorf("losses: %v", got)
	}
}

// Another local user's connection to a forward (its port is on a loopback
// everyone reaches) is closed before the RPC server is dialed, and is no
// loss: the owner's connections carry on. The other user is uid 65534,
// through curl; the test runs as root, like CI.
func TestForwardAdmitsOnlyTheOwner(t *testing.T) {
	srv := newEchoServer(t)
	l := &lossLog{once: make(chan struct{})}
	f := startForward(t, srv, l)
	defer f.Close()
	c, err := net.Dial("tcp", f.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo(t, c, "owner")
	before := srv.accepted()
	cmd := exec.Command("curl", "-s", "-m", "5", "http://"+f.Endpoint()+"/")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("another user's request through the forward got an answer: %q", out)
	}
	if got := srv.accepted(); got != before {
		t.Errorf("the RPC server got %d connections from another user", got-before)
	}
	echo(t, c, "still the owner's")
	if got := l.all(); len(got) != 0 {
		t.Errorf("losses after a refused connection: %v", got)
	}
}

// An RPC server that owes the worker an answer and sends nothing (a
// stopped process) is a loss within the stall bound, naming its hive; one
// that is only idle while the worker sends nothing is not.
func TestForwardReportsAStalledServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var held []net.Conn // a server that reads and never answers
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
			go func() { _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	fl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &lossLog{once: make(chan struct{})}
	f := newForward("h2", fl, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", ln.Addr().String())
	}, l.lost, admitLocal, nil, 300*time.Millisecond)
	defer f.Close()
	c, err := net.Dial("tcp", f.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Idle with nothing asked: no stall.
	time.Sleep(600 * time.Millisecond)
	if got := l.all(); len(got) != 0 {
		t.Fatalf("an idle connection was taken for a stall: %v", got)
	}
	if _, err := io.WriteString(c, "GRAPH_COMPUTE"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.once:
	case <-time.After(10 * time.Second):
		t.Fatal("the stalled RPC server was never reported")
	}
	if got := l.all(); !strings.HasPrefix(got[0], "h2: ") || !strings.Contains(got[0], "sent nothing") {
		t.Errorf("loss %q, want h2 named and the stall said", got[0])
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("the worker's connection still carries after the stall")
	}
}
