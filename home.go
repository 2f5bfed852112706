package rbee

import (
	"fmt"
	"os"
	"path"
)

// Home is an rbee home directory (~/.rbee on the user's machine and on
// every host) and names the paths inside it, the one spelling of each.
// Paths are joined with "/", so a Home also names paths on a remote host.
type Home string

// RunDir holds sockets and pid files; it is mode 0700.
func (h Home) RunDir() string { return path.Join(string(h), "run") }

// LogDir holds the daemons' logs; it is mode 0700.
func (h Home) LogDir() string { return path.Join(string(h), "logs") }

// QueenSocket is the queen's control socket (mode 0600).
func (h Home) QueenSocket() string { return path.Join(h.RunDir(), "queen.sock") }

// HiveSocket is the hive agent's socket (mode 0600).
func (h Home) HiveSocket() string { return path.Join(h.RunDir(), "hive.sock") }

// PIDFile is the pid file of a daemon ("queen", "hive").
func (h Home) PIDFile(name string) string { return path.Join(h.RunDir(), name+".pid") }

// Log is the log file of a daemon ("queen", "hive-localhost", "hive").
func (h Home) Log(name string) string { return path.Join(h.LogDir(), name+".log") }

// QueenDB is the queen's hive catalog.
func (h Home) QueenDB() string { return path.Join(string(h), "queen.db") }

// Cache holds downloads kept for reuse (engine archives).
func (h Home) Cache(name string) string { return path.Join(string(h), "cache", name) }

// Make creates the home with its run and log directories, owner-only.
func (h Home) Make() error {
	for _, d := range []string{string(h), h.RunDir(), h.LogDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("rbee home: %w", err)
		}
		// MkdirAll leaves an existing directory as it was: tighten it.
		if err := os.Chmod(d, 0o700); err != nil {
			return fmt.Errorf("rbee home: %w", err)
		}
	}
	return nil
}
