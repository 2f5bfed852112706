package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/internal/proc"
	"github.com/rbee-dev/rbee/poll"
	"github.com/rbee-dev/rbee/queen"
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
		if h.Version == rbee.Version && h.Protocol == rbee.ProtocolVersion {
			return c, h, false, nil
		}
		replaced, err := replaceOldQueen(ctx, g, c, h, narrate)
		if err != nil || !replaced {
			return c, h, false, err
		}
		return startAndWait(ctx, g, c, narrate)
	}
	if errors.Is(err, queenapi.ErrNotQueen) {
		return c, h, false, exitf(rbee.ExitQueen, "stop that program or choose another address with --queen / RBEE_QUEEN", "%v", err)
	}
	if !isDown(err) || (g.token != "" && !localAddr(g.Queen)) {
		return c, h, false, queenError(g, err)
	}
	narrate("queen_wake", "queen is asleep, waking queen")
	return startAndWait(ctx, g, c, narrate)
}

// replaceOldQueen handles a running queen of another version than this
// rbee: one of this user's that runs no job is stopped (replaced: the
// caller starts this version); a busy one, or one on another machine, is
// used when it speaks this protocol (the user is told), refused when not.
func replaceOldQueen(ctx context.Context, g *globals, c *queenapi.Client, h queenapi.Health, narrate func(action, msg string)) (replaced bool, err error) {
	skew := fmt.Sprintf("the running queen is rbee %s (protocol %d, pid %d), this rbee is %s (protocol %d)",
		h.Version, h.Protocol, h.PID, rbee.Version, rbee.ProtocolVersion)
	ours := g.token == "" || localAddr(g.Queen)
	var why, hint string
	switch {
	case !ours:
		why, hint = "it runs on another machine", "upgrade rbee on "+g.Queen+" and restart its queen there"
	case h.Jobs > 0 || h.Requests > 0:
		why, hint = fmt.Sprintf("it is serving %s", busy(h)), "rbee queen stop once they are done; the next command starts this version"
	default:
		narrate("queen_restart", skew+": restarting it (no jobs or front-door requests are running)")
		if err := stopQueen(ctx, g, c); err != nil {
			return false, exitf(rbee.ExitQueen, fmt.Sprintf("stop it with rbee queen stop (or kill %d)", h.PID), "restart the queen of version %s: %v", h.Version, err)
		}
		return true, nil
	}
	if h.Protocol != rbee.ProtocolVersion {
		return false, exitf(rbee.ExitQueen, hint, "%s: they cannot talk, and %s", skew, why)
	}
	narrate("queen_skew", fmt.Sprintf("%s; %s, so this command uses it (hint: %s)", skew, why, hint))
	return false, nil
}

// stopQueen asks the queen to stop and waits until it is gone: nothing
// answers on its socket and it let go of the socket's lock.
func stopQueen(ctx context.Context, g *globals, c *queenapi.Client) error {
	if err := c.Handover(ctx); err != nil && !isDown(err) {
		return err
	}
	return poll.Until(ctx, poll.Config{Initial: 10 * time.Millisecond, Max: 200 * time.Millisecond, Timeout: 60 * time.Second, MaxAttempts: 2000},
		func(ctx context.Context) (bool, error) {
			hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			_, err := c.Health(hctx)
			return err != nil && isDown(err) && !queenLocked(g), nil
		})
}

// startAndWait starts `rbee queen serve` and polls until it is healthy.
func startAndWait(ctx context.Context, g *globals, c *queenapi.Client, narrate func(action, msg string)) (_ *queenapi.Client, h queenapi.Health, started bool, err error) {
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
				case !restarted && lostRace(p):
					// Ours lost to a queen that has died since: once more.
					// (Any other failure — a corrupt catalog — would only
					// fail again, and say it twice.)
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
		// The queen cannot be started: its home is unusable.
		return nil, exitf(rbee.ExitQueen, "point RBEE_HOME (--home) at a directory you can write", "start queen: %v", err)
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

// busy says what a queen is serving: jobs and front-door requests.
func busy(h queenapi.Health) string {
	var parts []string
	if h.Jobs > 0 {
		parts = append(parts, fmt.Sprintf("%d job(s)", h.Jobs))
	}
	if h.Requests > 0 {
		parts = append(parts, fmt.Sprintf("%d front-door request(s)", h.Requests))
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, " and ")
}

// lostRace says whether a queen that exited at start lost the control
// socket to another queen (its last words, before the hint line).
func lostRace(p *proc.Proc) bool {
	b, err := proc.Tail(p.Log, 2)
	return err == nil && strings.Contains(string(b), queen.ErrQueenRunning.Error())
}
