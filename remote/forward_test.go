package remote

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/internal/sshtest"
)

// tcpEcho serves an echo on this machine's 127.0.0.1 (which the test
// hosts share) and returns its port.
func tcpEcho(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
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
	return ln.Addr().(*net.TCPAddr).Port
}

// listensOnLoopbackOnly reads /proc/net/tcp for port's listening socket
// and says whether its address is 127.0.0.1 (and found at all).
func listensOn(t *testing.T, port int) (addr string, found bool) {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Skipf("no /proc/net/tcp: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 4 || f[3] != "0A" { // LISTEN
			continue
		}
		ip, p, _ := strings.Cut(f[1], ":")
		if p == fmt.Sprintf("%04X", port) {
			return ip, true
		}
	}
	return "", false
}

// TestForwardLoopback: a remote forward listens on the host's 127.0.0.1
// only and carries bytes both ways; a direct-tcpip dial reaches the host's
// loopback; closing the listener takes the host's port away.
func TestForwardLoopback(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	c := dial(t, h)
	ctx := testCtx(t)
	echo := tcpEcho(t)

	t.Run("dial", func(t *testing.T) {
		nc, err := c.DialLoopback(ctx, echo)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		roundTrip(t, nc, "ping through direct-tcpip\n")
		roundTrip(t, nc, strings.Repeat("0123456789", 100000))
	})

	ln, err := c.ListenLoopback(ctx)
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if ip, ok := listensOn(t, port); !ok || ip != "0100007F" {
		t.Fatalf("the forward's port %d listens on %q (found %v), want 127.0.0.1 (0100007F)", port, ip, ok)
	}
	served := make(chan error, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer nc.Close()
		_, err = io.Copy(nc, nc)
		served <- err
	}()
	nc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, nc, "ping through tcpip-forward\n")
	nc.Close()
	if err := <-served; err != nil {
		t.Errorf("serving the forwarded connection: %v", err)
	}
	ln.Close()
	within(t, 10e9, "the host to drop the forward's port", func() bool {
		_, ok := listensOn(t, port)
		return !ok
	})
	if _, err := c.DialLoopback(ctx, 0); err == nil {
		t.Error("port 0: want an error")
	}
}

func TestForwardRefused(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{NoForwarding: true})[0]
	c := dial(t, h)
	ctx := testCtx(t)
	if _, err := c.ListenLoopback(ctx); !errors.Is(err, ErrForwardingRefused) {
		t.Errorf("listen: got %v, want ErrForwardingRefused", err)
	}
	if _, err := c.DialLoopback(ctx, tcpEcho(t)); !errors.Is(err, ErrForwardingRefused) {
		t.Errorf("dial: got %v, want ErrForwardingRefused", err)
	}
}
