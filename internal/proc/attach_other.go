//go:build !linux

package proc

import (
	"errors"
	"fmt"
)

// Attach takes over a running process that is not our child; it needs
// Linux's pidfds.
func Attach(pid int, opt Options) (*Proc, error) {
	return nil, fmt.Errorf("attach pid %d: %w", pid, errors.ErrUnsupported)
}
