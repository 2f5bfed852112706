package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/poll"
	"github.com/rbee-dev/rbee/queen"
)

var httpClient = &http.Client{}

// health asks the queen at addr for /health. errNotQueen means something
// else answers on that port.
func health(ctx context.Context, addr string) (queen.Health, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/health", nil)
	if err != nil {
		return queen.Health{}, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return queen.Health{}, err
	}
	defer resp.Body.Close()
	var h queen.Health
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil || h.Service != queen.ServiceName {
		return h, fmt.Errorf("%w: %s answers /health with status %d, not as an rbee queen", errNotQueen, addr, resp.StatusCode)
	}
	return h, nil
}

var errNotQueen = errors.New("not a queen")

// isDown reports whether err means nothing listens at the address.
func isDown(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && (errors.Is(err, syscall.ECONNREFUSED) || op.Op == "dial")
}

// ensureQueen checks the queen's health and, when nothing listens, starts
// `rbee queen serve` detached and polls until it is healthy. started says
// whether this call started it (the keeper never stops a queen it did not
// start, and does not stop one it started either: it stays warm).
func ensureQueen(ctx context.Context, g *globals, narrate func(action, msg string)) (h queen.Health, started bool, err error) {
	h, err = health(ctx, g.Queen)
	if err == nil {
		return h, false, nil
	}
	if errors.Is(err, errNotQueen) {
		return h, false, exitf(rbee.ExitQueen, "stop that program or choose another address with --queen / RBEE_QUEEN", "%v", err)
	}
	if !isDown(err) {
		return h, false, exitf(rbee.ExitQueen, "", "queen at %s: %v", g.Queen, err)
	}
	narrate("queen_wake", "queen is asleep, waking queen")
	cmd, logPath, err := startQueen(g)
	if err != nil {
		return h, false, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps the child; it is detached and usually outlives us
	err = poll.Until(ctx, poll.Config{Initial: 10 * time.Millisecond, Max: 500 * time.Millisecond, MaxAttempts: 60, Timeout: 20 * time.Second},
		func(ctx context.Context) (bool, error) {
			select {
			case werr := <-exited:
				return false, poll.Permanent(fmt.Errorf("the queen exited (%v): %s", werr, queen.LastLogLine(logPath)))
			default:
			}
			h, err = health(ctx, g.Queen)
			if errors.Is(err, errNotQueen) {
				return false, poll.Permanent(err)
			}
			return err == nil, err
		})
	if err != nil {
		if ctx.Err() != nil {
			return h, true, ctx.Err()
		}
		return h, true, exitf(rbee.ExitQueen, "its log is "+logPath, "queen did not come up at %s: %v", g.Queen, err)
	}
	narrate("queen_awake", fmt.Sprintf("queen is awake and healthy (pid %d)", h.PID))
	return h, true, nil
}

// startQueen starts `rbee queen serve` in its own session with its output in
// a log file.
func startQueen(g *globals) (*exec.Cmd, string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, "", fmt.Errorf("start queen: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(g.Home, "logs"), 0o700); err != nil {
		return nil, "", fmt.Errorf("start queen: %w", err)
	}
	logPath := filepath.Join(g.Home, "logs", "queen.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, "", fmt.Errorf("start queen: %w", err)
	}
	defer logf.Close()
	args := []string{"--queen", g.Queen, "--home", g.Home}
	if g.TokenFile != "" {
		args = append(args, "--token-file", g.TokenFile)
	}
	cmd := exec.Command(exe, append(args, "queen", "serve")...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, "", exitf(rbee.ExitQueen, "", "start queen: %v", err)
	}
	return cmd, logPath, nil
}
