package download

import (
	"os"

	"golang.org/x/sys/unix"
)

// flushData writes the file's data (and the metadata needed to read it
// back) to disk: fdatasync. Errors are ignored: the fsync at the end
// reports what matters.
func flushData(f *os.File) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) { _ = unix.Fdatasync(int(fd)) })
}
