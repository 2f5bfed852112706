package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/internal/proc"
	"github.com/rbee-dev/rbee/poll"
	"github.com/rbee-dev/rbee/queenapi"
)

// home is the rbee home these globals name.
func (g *globals) home() rbee.Home { return rbee.Home(g.Home) }

// client is how this keeper reaches the queen: its owner-only control
// socket, or — with a token file, for a queen on another machine — its TCP
// address with the bearer token.
func (g *globals) client() *queenapi.Client {
	if g.token != "" {
		return queenapi.TCP(g.Queen, g.token)
	}
	return queenapi.Unix(g.home().QueenSocket())
}

// where names the queen for messages.
func (g *globals) where() string {
	if g.token != "" {
		return g.Queen
	}
	return g.home().QueenSocket()
}

// ensureQueen checks the queen's health and, when nothing listens, starts
// `rbee queen serve` detached and polls until it is healthy. started says
// whether this call started it (the keeper never stops a queen it did not
// start, and does not stop one it started either: it stays warm).
func ensureQueen(ctx context.Context, g *globals, narrate func(action, msg string)) (c *queenapi.Client, h queenapi.Health, started bool, err error) {
	c = g.client()
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	h, err = c.Health(hctx)
	cancel()
	if err == nil {
		return c, h, false, nil
	}
	if errors.Is(err, queenapi.ErrNotQueen) {
		return c, h, false, exitf(rbee.ExitQueen, "stop that program or choose another address with --queen / RBEE_QUEEN", "%v", err)
	}
	if !isDown(err) || (g.token != "" && !localAddr(g.Queen)) {
		return c, h, false, queenError(g, err)
	}
	narrate("queen_wake", "queen is asleep, waking queen")
	p, err := startQueen(g)
	if err != nil {
		return c, h, false, err
	}
	restarted := false
	err = poll.Until(ctx, poll.Config{Initial: 10 * time.Millisecond, Max: 500 * time.Millisecond, MaxAttempts: 80, Timeout: 20 * time.Second},
		func(ctx context.Context) (bool, error) {
			select {
			case <-p.Exited():
				switch {
				case queenLocked(g):
					// Another keeper's queen won the socket: use it.
				case !restarted:
					// Ours lost to a queen that has died since: once more.
					np, err := startQueen(g)
					if err != nil {
						return false, poll.Permanent(err)
					}
					p, restarted = np, true
				default:
					return false, poll.Permanent(fmt.Errorf("the queen %s", p.Why()))
				}
			default:
			}
			hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			h, err = c.Health(hctx)
			if errors.Is(err, queenapi.ErrNotQueen) {
				return false, poll.Permanent(err)
			}
			return err == nil, err
		})
	if err != nil {
		if ctx.Err() != nil {
			return c, h, true, ctx.Err()
		}
		return c, h, true, exitf(rbee.ExitQueen, "its log is "+p.Log, "queen did not come up at %s: %v", g.where(), err)
	}
	narrate("queen_awake", fmt.Sprintf("queen is awake and healthy (pid %d)", h.PID))
	return c, h, true, nil
}

// queenLocked reports whether a live queen holds this home's control
// socket lock.
func queenLocked(g *globals) bool {
	f, err := os.OpenFile(g.home().QueenSocket()+".lock", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return true
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}

// localAddr reports whether addr is one this machine listens on for
// itself (loopback or all interfaces), so a keeper may start the queen.
func localAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return host == "localhost" || ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
}

// isDown reports whether err means no queen answers where it should:
// nothing listens, or the one that did died mid-answer.
func isDown(err error) bool {
	return errors.Is(err, queenapi.ErrUnreachable) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

// startQueen starts `rbee queen serve` in its own session with its output in
// a log file. Its waiter reaps it if it dies while this keeper runs; it
// usually outlives the keeper.
func startQueen(g *globals) (*proc.Proc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start queen: %w", err)
	}
	if err := g.home().Make(); err != nil {
		return nil, fmt.Errorf("start queen: %w", err)
	}
	args := []string{"--queen", g.Queen, "--home", g.Home}
	if g.TokenFile != "" {
		args = append(args, "--token-file", g.TokenFile)
	}
	args = append(args, "queen", "serve")
	p, err := proc.Start(exe, args, proc.Options{Log: g.home().Log("queen"), Setsid: true})
	if err != nil {
		return nil, exitf(rbee.ExitQueen, "", "start queen: %v", err)
	}
	return p, nil
}

// queenError turns an error of a queen call into the keeper's exit error:
// the queen's code, message and hint, or "queen unreachable".
func queenError(g *globals, err error) error {
	var ae *queenapi.APIError
	if errors.As(err, &ae) {
		return exitf(rbee.ExitCodeFor(ae.Err.Code), printableText(ae.Err.Hint), "%s", printableText(ae.Err.Message))
	}
	var ee *exitError
	if errors.As(err, &ee) || errors.Is(err, context.Canceled) {
		return err
	}
	var op *net.OpError
	if errors.As(err, &op) || isDown(err) {
		return exitf(rbee.ExitQueen, "rbee queen start starts it; rbee infer starts it on demand", "queen at %s: %v", g.where(), err)
	}
	return exitf(rbee.ExitQueen, "", "queen at %s: %v", g.where(), err)
}

// connect wakes the queen when needed and returns a client to it.
func connect(ctx context.Context, g *globals, narrate func(action, msg string)) (*queenapi.Client, error) {
	c, _, _, err := ensureQueen(ctx, g, narrate)
	return c, err
}

// follow prints a stream's events with p until it ends. needDone: the
// stream must end with a done event (a job's result).
func follow(ctx context.Context, g *globals, s *queenapi.Stream, err error, p *printer, needDone bool) error {
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return queenError(g, err)
	}
	defer s.Close()
	var failed *rbee.Event
	done := false
	for {
		ev, err := s.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if failed != nil {
				return exitf(rbee.ExitCodeFor(failed.Code), printableText(failed.Hint), "%s", printableText(failed.Message))
			}
			if !errors.Is(err, io.EOF) {
				return exitf(rbee.ExitQueen, "", "the queen's event stream broke off: %v", err)
			}
			if needDone && !done {
				// The queen closed the stream: it stopped (or lost us).
				return exitf(rbee.ExitQueen, "rbee queen status tells whether it runs", "the queen ended the job without a result")
			}
			return nil
		}
		p.event(ev)
		switch ev.Type {
		case rbee.EventError:
			e := ev
			failed = &e
		case rbee.EventDone:
			done = true
		}
	}
}
