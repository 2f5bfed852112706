//go:build !(linux || darwin || freebsd)

package download

// freeBytes cannot tell the free space here; the download then relies on
// ENOSPC from a write alone.
func freeBytes(string) (uint64, bool, error) { return 0, false, nil }
