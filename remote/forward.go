package remote

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"

	"golang.org/x/crypto/ssh"
)

// loopback is the only address forwards use on a host: nothing they open
// is reachable from another machine.
const loopback = "127.0.0.1"

// ListenLoopback asks the host's sshd to listen on 127.0.0.1, on a port it
// picks, and to hand each connection made there to the returned listener
// (an OpenSSH remote forward, "tcpip-forward"). The port is the
// listener's Addr. Closing the listener cancels the forward on the host;
// so does the connection's end. ctx bounds the request only. Where the
// server forbids TCP forwarding the error wraps ErrForwardingRefused.
func (c *Conn) ListenLoopback(ctx context.Context) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	if err := c.Err(); err != nil {
		return nil, fmt.Errorf("listen on %s:%s: %w", c.name, loopback, err)
	}
	if !c.track() {
		return nil, fmt.Errorf("listen on %s:%s: %w", c.name, loopback, c.Err())
	}
	ch := make(chan result, 1)
	go func() {
		defer c.wg.Done()
		ln, err := c.client.Listen("tcp", net.JoinHostPort(loopback, "0"))
		ch <- result{ln, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			if err := c.Err(); err != nil {
				return nil, fmt.Errorf("listen on %s:%s: %w", c.name, loopback, err)
			}
			// x/crypto/ssh reports a refused tcpip-forward request as
			// "request denied by peer".
			return nil, fmt.Errorf("listen on %s:%s: %w (AllowTcpForwarding): %w", c.name, loopback, ErrForwardingRefused, r.err)
		}
		return r.ln, nil
	case <-ctx.Done():
		if c.track() {
			go func() {
				defer c.wg.Done()
				if r := <-ch; r.ln != nil {
					r.ln.Close()
				}
			}()
		} else if r := <-ch; r.ln != nil {
			r.ln.Close()
		}
		return nil, fmt.Errorf("listen on %s:%s: %w", c.name, loopback, ctx.Err())
	}
}

// DialLoopback connects to 127.0.0.1:port on the host through the
// connection (an OpenSSH "direct-tcpip" channel): the host's own loopback,
// as the host sees it. ctx bounds the dial only. Nothing listening there,
// and forwarding refused, both read as an *ssh.OpenChannelError from the
// server, wrapped.
func (c *Conn) DialLoopback(ctx context.Context, port int) (net.Conn, error) {
	if port <= 0 || port > 65535 {
		return nil, fmt.Errorf("dial %s:%d on %s: bad port", loopback, port, c.name)
	}
	addr := net.JoinHostPort(loopback, strconv.Itoa(port))
	if err := c.Err(); err != nil {
		return nil, fmt.Errorf("dial %s on %s: %w", addr, c.name, err)
	}
	nc, err := c.client.DialContext(ctx, "tcp", addr)
	if err == nil {
		return nc, nil
	}
	var oce *ssh.OpenChannelError
	if errors.As(err, &oce) && oce.Reason == ssh.Prohibited {
		return nil, fmt.Errorf("dial %s on %s: %w (AllowTcpForwarding): %w", addr, c.name, ErrForwardingRefused, err)
	}
	return nil, fmt.Errorf("dial %s on %s: %w", addr, c.name, c.errOr(err))
}
