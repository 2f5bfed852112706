package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// DialUnix connects to the unix socket at path on the host through the
// connection (OpenSSH streamlocal forwarding). sshd does not expand ~, so
// a path starting with "~/" is made absolute with Home. Where the server
// forbids forwarding the error wraps ErrForwardingRefused: use DialBridge.
// OpenSSH gives the same answer when nothing listens on an existing
// socket, so that too reads as refused (the bridge then fails plainly); no
// socket at all wraps os.ErrNotExist. ctx bounds the dial only.
func (c *Conn) DialUnix(ctx context.Context, path string) (net.Conn, error) {
	if rest, ok := strings.CutPrefix(path, "~/"); ok {
		home, err := c.Home(ctx)
		if err != nil {
			return nil, fmt.Errorf("dial unix %s on %s: %w", path, c.name, err)
		}
		path = home + "/" + rest
	}
	if err := c.Err(); err != nil {
		return nil, fmt.Errorf("dial unix %s on %s: %w", path, c.name, err)
	}
	nc, err := c.client.DialContext(ctx, "unix", path)
	if err == nil {
		return nc, nil
	}
	var oce *ssh.OpenChannelError
	if !errors.As(err, &oce) {
		return nil, fmt.Errorf("dial unix %s on %s: %w", path, c.name, c.errOr(err))
	}
	if oce.Reason == ssh.Prohibited {
		return nil, fmt.Errorf("dial unix %s on %s: %w (AllowStreamLocalForwarding): %w", path, c.name, ErrForwardingRefused, err)
	}
	// OpenSSH answers "connect failed" both when forwarding is off and
	// when nothing listens: the socket's presence tells them apart.
	if _, serr := c.Run(ctx, []string{"test", "-S", path}, nil); serr != nil {
		var ee *ExitError
		if errors.As(serr, &ee) {
			return nil, fmt.Errorf("dial unix %s on %s: no socket there: %w", path, c.name, os.ErrNotExist)
		}
		return nil, fmt.Errorf("dial unix %s on %s: %w", path, c.name, err)
	}
	return nil, fmt.Errorf("dial unix %s on %s: %w (AllowStreamLocalForwarding no in sshd_config, or nothing listens on the socket): %w",
		path, c.name, ErrForwardingRefused, err)
}

// DialBridge runs argv on the host (quoted as Run does) and returns a
// net.Conn over its stdin and stdout: the way to the agent's socket where
// forwarding is refused (argv like [".rbee/hive/1/rbee-hive", "bridge"]).
// Closing the conn closes the command's stdin and its channel. Its stderr
// is discarded. ctx bounds the start only. Deadlines are not supported.
func (c *Conn) DialBridge(ctx context.Context, argv []string) (net.Conn, error) {
	line, err := commandLine(argv)
	if err != nil {
		return nil, fmt.Errorf("bridge on %s: %w", c.name, err)
	}
	s, err := c.session(ctx)
	if err != nil {
		return nil, fmt.Errorf("bridge %s on %s: %w", argv[0], c.name, err)
	}
	b := &bridgeConn{s: s, addr: bridgeAddr(c.name + ":" + argv[0])}
	if b.stdin, err = s.StdinPipe(); err == nil {
		if b.stdout, err = s.StdoutPipe(); err == nil {
			err = s.Start(line)
		}
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("bridge %s on %s: %w", argv[0], c.name, c.errOr(err))
	}
	return b, nil
}

type bridgeConn struct {
	s      *ssh.Session
	stdin  io.WriteCloser
	stdout io.Reader
	addr   bridgeAddr
	once   sync.Once
}

func (b *bridgeConn) Read(p []byte) (int, error)  { return b.stdout.Read(p) }
func (b *bridgeConn) Write(p []byte) (int, error) { return b.stdin.Write(p) }

func (b *bridgeConn) Close() error {
	b.once.Do(func() {
		b.stdin.Close()
		b.s.Close()
	})
	return nil
}

func (b *bridgeConn) LocalAddr() net.Addr  { return bridgeAddr("local") }
func (b *bridgeConn) RemoteAddr() net.Addr { return b.addr }

var errNoDeadline = errors.New("ssh bridge: deadlines not supported")

func (b *bridgeConn) SetDeadline(time.Time) error      { return errNoDeadline }
func (b *bridgeConn) SetReadDeadline(time.Time) error  { return errNoDeadline }
func (b *bridgeConn) SetWriteDeadline(time.Time) error { return errNoDeadline }

type bridgeAddr string

func (bridgeAddr) Network() string  { return "ssh-bridge" }
func (a bridgeAddr) String() string { return string(a) }
