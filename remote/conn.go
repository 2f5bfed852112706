package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// maxStderr bounds the piece of a remote command's stderr kept for errors.
const maxStderr = 32 << 10

// Conn is one long-lived SSH connection to a host. It checks itself with
// keepalives; Done is closed when it dies. Safe for concurrent use.
type Conn struct {
	name     string
	resolved Resolved
	client   *ssh.Client
	hops     []*ssh.Client // jump hosts, first dialed first

	done chan struct{}
	once sync.Once
	wg   sync.WaitGroup // every goroutine the Conn starts

	alive atomic.Int64 // unix nanoseconds of the last sign of life

	mu        sync.Mutex
	err       error
	sftp      *sftp.Client
	sftpUsers int       // callers holding sftp now
	sftpUsed  time.Time // when the last of them let go
	sftpIdle  time.Duration
	home      string
}

// Dial connects to t, through the ProxyJump hosts the ssh config names
// (each verified and authenticated like the target; their own ProxyJump
// is not followed). ctx bounds the dial only; each hop also gets
// cfg.DialTimeout.
func Dial(ctx context.Context, t Target, cfg Config) (*Conn, error) {
	// A known_hosts file the caller names wins; else the host's
	// UserKnownHostsFile in the ssh config (the hosts ssh itself knows),
	// else ~/.ssh/known_hosts.
	named := cfg.KnownHosts != ""
	cfg = cfg.withDefaults()
	r, err := Resolve(t, cfg)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", t.Host, err)
	}
	var chain []Resolved
	for _, hop := range r.ProxyJump {
		ht, err := parseHop(hop)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", t.Host, err)
		}
		hr, err := Resolve(ht, cfg)
		if err != nil {
			return nil, fmt.Errorf("dial %s: jump host: %w", t.Host, err)
		}
		chain = append(chain, hr)
	}
	chain = append(chain, r)

	file := cfg.KnownHosts
	if !named && r.KnownHosts != "" {
		file = r.KnownHosts
	}
	hk := &hostKeys{file: file, accept: cfg.AcceptNewHostKey}
	var clients []*ssh.Client
	var via *ssh.Client
	for i, hr := range chain {
		cl, err := dialHop(ctx, via, hr, cfg, hk)
		if err != nil {
			for j := len(clients) - 1; j >= 0; j-- {
				clients[j].Close()
			}
			if i < len(chain)-1 {
				return nil, fmt.Errorf("dial %s: jump host %s: %w", t.Host, hr.Host, err)
			}
			return nil, fmt.Errorf("dial %s: %w", t.Host, err)
		}
		clients = append(clients, cl)
		via = cl
	}
	c := &Conn{
		name:     t.Host,
		resolved: r,
		client:   clients[len(clients)-1],
		hops:     clients[:len(clients)-1],
		done:     make(chan struct{}),
		sftpIdle: cfg.SFTPIdle,
	}
	c.alive.Store(time.Now().UnixNano())
	c.wg.Add(2)
	go c.watch()
	go c.keepalive(cfg.Keepalive)
	return c, nil
}

// dialHop connects to r directly (via == nil) or through via, and logs in.
func dialHop(ctx context.Context, via *ssh.Client, r Resolved, cfg Config, hk *hostKeys) (*ssh.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	var nc net.Conn
	var err error
	if via == nil {
		var d net.Dialer
		nc, err = d.DialContext(ctx, "tcp", r.Addr)
	} else {
		nc, err = via.DialContext(ctx, "tcp", r.Addr)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", r.Addr, err)
	}
	k := loadKeys(r.IdentityFiles, cfg.UseAgent)
	defer k.close()
	ccfg := &ssh.ClientConfig{
		User:              r.User,
		Auth:              k.methods(),
		HostKeyCallback:   hk.check,
		HostKeyAlgorithms: hk.algorithms(r.Addr),
	}
	// The handshake has no context of its own: closing the socket is how
	// a deadline or a cancel reaches it.
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	sc, chans, reqs, err := ssh.NewClientConn(nc, r.Addr, ccfg)
	if !stop() {
		if err == nil {
			sc.Close()
		}
		return nil, fmt.Errorf("handshake with %s: %w", r.Addr, ctx.Err())
	}
	if err != nil {
		nc.Close()
		var hkErr *HostKeyError
		switch {
		case errors.As(err, &hkErr):
			return nil, hkErr
		case isAuthFailure(err):
			return nil, &AuthError{User: r.User, Addr: r.Addr, Tried: k.tried, Skipped: k.skipped, Err: err}
		}
		return nil, fmt.Errorf("handshake with %s: %w", r.Addr, err)
	}
	return ssh.NewClient(sc, chans, reqs), nil
}

// Resolved says where the connection went.
func (c *Conn) Resolved() Resolved { return c.resolved }

// Done is closed when the connection has died or was closed; Err says why.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is nil while the connection lives. After, it wraps ErrConnLost (the
// server went away or stopped answering keepalives) or ErrClosed.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection and waits for its goroutines.
func (c *Conn) Close() error {
	c.fail(fmt.Errorf("%s: %w", c.name, ErrClosed))
	c.wg.Wait()
	return nil
}

func (c *Conn) fail(err error) {
	c.once.Do(func() {
		c.mu.Lock()
		c.err = err
		sf := c.sftp
		c.mu.Unlock()
		close(c.done)
		// The transport goes first: closing the SFTP client on a live
		// transport waits for the peer, and a stalled peer never answers.
		// With the socket closed, every session on it ends at once.
		c.client.Close()
		for i := len(c.hops) - 1; i >= 0; i-- {
			c.hops[i].Close()
		}
		if sf != nil {
			sf.Close()
		}
	})
}

// track counts one more goroutine of the Conn, unless it is already dead
// (then Close may be waiting, and nothing new may start).
func (c *Conn) track() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return false
	}
	c.wg.Add(1)
	return true
}

func (c *Conn) watch() {
	defer c.wg.Done()
	err := c.client.Wait()
	if err == nil {
		err = io.EOF
	}
	c.fail(fmt.Errorf("%s: %w: %w", c.name, ErrConnLost, err))
}

// LastAlive is when the host last showed it is there: the dial, or the
// last answer to a keepalive.
func (c *Conn) LastAlive() time.Time { return time.Unix(0, c.alive.Load()) }

// keepalive sends keepalive@openssh.com every interval, one at a time; an
// answer (even a refusal) proves the server alive. Three intervals without
// one, or a failed send, end the connection.
func (c *Conn) keepalive(every time.Duration) {
	defer c.wg.Done()
	tick := time.NewTicker(every)
	defer tick.Stop()
	reply := make(chan error, 1)
	pending, misses := false, 0
	for {
		select {
		case <-c.done:
			return
		case err := <-reply:
			pending, misses = false, 0
			if err != nil {
				c.fail(fmt.Errorf("%s: %w: keepalive: %w", c.name, ErrConnLost, err))
				return
			}
			c.alive.Store(time.Now().UnixNano())
		case <-tick.C:
			c.closeIdleSFTP()
			if pending {
				if misses++; misses >= 3 {
					c.fail(fmt.Errorf("%s: %w: no answer to keepalives for %s", c.name, ErrConnLost, every*time.Duration(misses)))
					return
				}
				continue
			}
			pending = true
			c.wg.Add(1) // this goroutine is counted, so the group is not at zero
			go func() {
				defer c.wg.Done()
				_, _, err := c.client.SendRequest("keepalive@openssh.com", true, nil)
				reply <- err
			}()
		}
	}
}

// session opens a session channel; ctx bounds the wait for the server.
func (c *Conn) session(ctx context.Context) (*ssh.Session, error) {
	if err := c.Err(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	type result struct {
		s   *ssh.Session
		err error
	}
	ch := make(chan result, 1)
	if !c.track() {
		return nil, c.Err()
	}
	go func() {
		defer c.wg.Done()
		s, err := c.client.NewSession()
		ch <- result{s, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			if err := c.Err(); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("open session: %w", r.err)
		}
		return r.s, nil
	case <-ctx.Done():
		if c.track() {
			go func() {
				defer c.wg.Done()
				if r := <-ch; r.s != nil {
					r.s.Close()
				}
			}()
		} else if r := <-ch; r.s != nil { // dead: the open fails at once
			r.s.Close()
		}
		return nil, ctx.Err()
	}
}

// Run runs argv on the host and returns its stdout. Every argument is
// quoted (see Quote); one holding a NUL or a newline is refused before
// anything is sent. stdin may be nil. A failing command gives an
// *ExitError with the last 32 KiB of its stderr. ctx bounds the whole run:
// when it ends, the command is sent SIGKILL and its channel closed.
func (c *Conn) Run(ctx context.Context, argv []string, stdin io.Reader) ([]byte, error) {
	line, err := commandLine(argv)
	if err != nil {
		return nil, fmt.Errorf("run on %s: %w", c.name, err)
	}
	s, err := c.session(ctx)
	if err != nil {
		return nil, fmt.Errorf("run %s on %s: %w", argv[0], c.name, err)
	}
	var stdout bytes.Buffer
	stderr := &tailBuffer{max: maxStderr}
	s.Stdin, s.Stdout, s.Stderr = stdin, &stdout, stderr
	if err := s.Start(line); err != nil {
		s.Close()
		return nil, fmt.Errorf("run %s on %s: %w", argv[0], c.name, c.errOr(err))
	}
	if !c.track() {
		s.Close()
		return nil, fmt.Errorf("run %s on %s: %w", argv[0], c.name, c.Err())
	}
	waitc := make(chan error, 1)
	go func() {
		defer c.wg.Done()
		waitc <- s.Wait()
		s.Close()
	}()
	select {
	case err = <-waitc:
	case <-ctx.Done():
		_ = s.Signal(ssh.SIGKILL)
		s.Close() // the waiter ends when the server closes the channel
		return nil, fmt.Errorf("run %s on %s: %w", argv[0], c.name, ctx.Err())
	}
	if err != nil {
		return stdout.Bytes(), c.exitError(argv[0], err, stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

// errOr prefers the connection's death over the error it caused.
func (c *Conn) errOr(err error) error {
	if cerr := c.Err(); cerr != nil {
		return cerr
	}
	return err
}

func (c *Conn) exitError(argv0 string, err error, stderr []byte) error {
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		return &ExitError{Host: c.name, Command: argv0, Status: ee.ExitStatus(), Signal: ee.Signal(), Stderr: stderr}
	}
	var em *ssh.ExitMissingError
	if errors.As(err, &em) {
		if cerr := c.Err(); cerr != nil {
			return fmt.Errorf("run %s on %s: %w", argv0, c.name, cerr)
		}
		return fmt.Errorf("run %s on %s: ended without an exit status", argv0, c.name)
	}
	return fmt.Errorf("run %s on %s: %w", argv0, c.name, c.errOr(err))
}

// Session is a command started with Start, its streams open. Read Stdout
// and Stderr both (or neither): the server stops the command when an
// unread stream's window fills.
type Session struct {
	Stdin  io.WriteCloser
	Stdout io.Reader
	Stderr io.Reader

	conn  *Conn
	argv0 string
	s     *ssh.Session
}

// Start starts argv (quoted as Run does) with its streams as pipes. ctx
// bounds the start only; end the command with Signal or Close.
func (c *Conn) Start(ctx context.Context, argv []string) (*Session, error) {
	line, err := commandLine(argv)
	if err != nil {
		return nil, fmt.Errorf("start on %s: %w", c.name, err)
	}
	s, err := c.session(ctx)
	if err != nil {
		return nil, fmt.Errorf("start %s on %s: %w", argv[0], c.name, err)
	}
	sess := &Session{conn: c, argv0: argv[0], s: s}
	if sess.Stdin, err = s.StdinPipe(); err == nil {
		if sess.Stdout, err = s.StdoutPipe(); err == nil {
			sess.Stderr, err = s.StderrPipe()
		}
	}
	if err == nil {
		err = s.Start(line)
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("start %s on %s: %w", argv[0], c.name, c.errOr(err))
	}
	return sess, nil
}

// Wait waits for the command to end; a failure is an *ExitError (without
// stderr: the caller has the stream).
func (s *Session) Wait() error {
	if err := s.s.Wait(); err != nil {
		return s.conn.exitError(s.argv0, err, nil)
	}
	return nil
}

// Signal sends sig to the command (OpenSSH 7.9 and later deliver it).
func (s *Session) Signal(sig ssh.Signal) error {
	if err := s.s.Signal(sig); err != nil {
		return fmt.Errorf("signal %s on %s: %w", s.argv0, s.conn.name, err)
	}
	return nil
}

// Close closes the session's channel; the command loses its streams.
func (s *Session) Close() error {
	if err := s.s.Close(); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("close %s on %s: %w", s.argv0, s.conn.name, err)
	}
	return nil
}

// Home returns the remote user's home directory, asked once.
func (c *Conn) Home(ctx context.Context) (string, error) {
	c.mu.Lock()
	home := c.home
	c.mu.Unlock()
	if home != "" {
		return home, nil
	}
	out, err := c.Run(ctx, []string{"sh", "-c", `printf '%s' "$HOME"`}, nil)
	if err != nil {
		return "", err
	}
	home = strings.TrimSpace(string(out))
	if !strings.HasPrefix(home, "/") {
		return "", fmt.Errorf("home on %s: got %q, want an absolute path", c.name, home)
	}
	c.mu.Lock()
	c.home = home
	c.mu.Unlock()
	return home, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf
	if len(b) > t.max {
		b = b[len(b)-t.max:]
	}
	return append([]byte(nil), b...)
}
