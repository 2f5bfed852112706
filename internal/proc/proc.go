package proc

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Options says how to start a process.
type Options struct {
	Log    string   // stdout and stderr are appended here (created 0600); "" = discarded
	Env    []string // nil = this process's environment
	Dir    string
	Setsid bool // its own session: a Ctrl-C at our terminal does not reach it, and it may outlive us
	// Setpgid puts it in its own process group (with Setsid, the
	// session's), and the kill after Stop's grace period goes to the whole
	// group: the children it started die with it.
	Setpgid bool
	// Stdout, when set, receives stdout instead of the log (a pipe the
	// caller reads, e.g. a worker announcing its address).
	Stdout io.Writer
	// Isolate starts it in a user namespace of its own (this user mapped
	// to root there) with a network namespace of its own: no socket it
	// listens on can be reached from this machine's network, while files
	// and devices are what this user may use. An unprivileged user needs
	// the kernel to allow user namespaces.
	Isolate bool
}

// Proc is a started process, or one Attach took over. Its waiter reaps
// it (or watches it); Exited is closed when it has exited.
type Proc struct {
	Cmd    *exec.Cmd // nil for a process Attach took over
	Log    string
	pid    int
	group  bool                       // it leads its own process group
	signal func(syscall.Signal) error // the process, not its group
	exited chan struct{}
	err    error
}

// Start starts name with args.
func Start(name string, args []string, opt Options) (*Proc, error) {
	cmd := exec.Command(name, args...)
	cmd.Env, cmd.Dir = opt.Env, opt.Dir
	var logf *os.File
	if opt.Log != "" {
		f, err := os.OpenFile(opt.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		logf = f
		cmd.Stdout, cmd.Stderr = f, f
	}
	if opt.Stdout != nil {
		cmd.Stdout = opt.Stdout
	}
	if opt.Setsid || opt.Setpgid || opt.Isolate {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: opt.Setsid, Setpgid: opt.Setpgid && !opt.Setsid}
	}
	if opt.Isolate {
		a := cmd.SysProcAttr
		a.Cloneflags = syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET
		a.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}}
		a.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}}
		a.GidMappingsEnableSetgroups = false
	}
	if err := cmd.Start(); err != nil {
		if logf != nil {
			logf.Close()
		}
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Cmd: cmd, Log: opt.Log, pid: cmd.Process.Pid, group: opt.Setpgid,
		signal: func(sig syscall.Signal) error { return cmd.Process.Signal(sig) }, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		if logf != nil {
			logf.Close()
		}
		close(p.exited)
	}()
	return p, nil
}

// PID is the process id.
func (p *Proc) PID() int { return p.pid }

// Exited is closed when the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Err is how the process ended (nil for exit status 0); valid once Exited
// is closed.
func (p *Proc) Err() error {
	<-p.exited
	return p.err
}

// Signal sends sig, unless the process has already exited.
func (p *Proc) Signal(sig syscall.Signal) error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	if err := p.signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal pid %d: %w", p.PID(), err)
	}
	return nil
}

// Kill sends SIGKILL to the process, or to its process group when it
// leads one, unless it has already exited.
func (p *Proc) Kill() error {
	if !p.group {
		return p.Signal(syscall.SIGKILL)
	}
	select {
	case <-p.exited:
		return nil
	default:
	}
	if err := syscall.Kill(-p.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill process group %d: %w", p.pid, err)
	}
	return nil
}

// Stop sends SIGTERM, waits up to grace, then sends SIGKILL and waits for
// the exit. It returns once the process is gone.
func (p *Proc) Stop(grace time.Duration) {
	_ = p.Signal(syscall.SIGTERM)
	p.Wait(grace)
}

// Wait waits up to grace for the process to exit on its own, then kills
// it (its group, when it leads one) and waits for that.
func (p *Proc) Wait(grace time.Duration) {
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.exited:
		return
	case <-t.C:
	}
	_ = p.Kill()
	<-p.exited
}

// Why describes how the process ended, with the last lines of its log (a
// message and its hint).
func (p *Proc) Why() string {
	msg := fmt.Sprintf("pid %d exited", p.PID())
	if err := p.Err(); err != nil {
		msg += " (" + err.Error() + ")"
	}
	if p.Log != "" {
		if b, err := Tail(p.Log, 2); err == nil && len(b) > 0 {
			msg += ": " + strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", "; ")
		}
	}
	return msg
}

// tailMax bounds how much of a log Tail reads: logs grow, error messages
// should not read them whole.
const tailMax = 256 << 10

// Tail returns the last n non-empty lines of a file, reading at most its
// last 256 KiB.
func Tail(path string, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tail: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("tail: %w", err)
	}
	off := max(st.Size()-tailMax, 0)
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && err != io.EOF {
		return nil, fmt.Errorf("tail %s: %w", path, err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 0 {
		return nil, nil
	}
	return []byte(strings.Join(lines, "\n") + "\n"), nil
}

// LastLine returns the last non-empty line of a log, or "" (or the
// reason it cannot be read).
func LastLine(path string) string {
	b, err := Tail(path, 1)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return ""
		}
		return err.Error()
	}
	return strings.TrimSpace(string(b))
}
