package proc

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// errNotChild is how a process Attach took over ended: only its parent
// can read its exit status.
var errNotChild = errors.New("exit status unknown (not our child)")

// Attach takes over a running process that is not our child, such as one
// an earlier agent started: Exited, Stop, Wait and Kill work as for one
// Start started, through a pidfd, so a reused pid is never signalled. Of
// opt only Log and Setpgid are used: where its log is, and whether it
// leads its own process group.
func Attach(pid int, opt Options) (*Proc, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("attach pid %d: %w", pid, err)
	}
	p := &Proc{Log: opt.Log, pid: pid, group: opt.Setpgid, exited: make(chan struct{}), err: errNotChild}
	var mu sync.Mutex // fd is closed once the process has exited
	p.signal = func(sig syscall.Signal) error {
		mu.Lock()
		defer mu.Unlock()
		if fd < 0 {
			return os.ErrProcessDone
		}
		return unix.PidfdSendSignal(fd, sig, nil, 0)
	}
	go func() { // the pidfd turns readable when the process exits
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err == nil || !errors.Is(err, syscall.EINTR) {
				break
			}
		}
		mu.Lock()
		unix.Close(fd)
		fd = -1
		mu.Unlock()
		close(p.exited)
	}()
	return p, nil
}
