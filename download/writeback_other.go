//go:build !linux

package download

import "os"

// flushData writes the file to disk; errors are left to the final fsync.
func flushData(f *os.File) { _ = f.Sync() }
