package inventory

import (
	"errors"
	"fmt"
	"strings"
)

var (
	// ErrExists is returned by Add when the name belongs to a hive with a
	// different address.
	ErrExists = errors.New("hive already exists")
	// ErrNotFound is returned by Remove when no hive has the name.
	ErrNotFound = errors.New("hive not found")
	// ErrModified is returned by Save when the file changed on disk after it
	// was loaded; writing would throw away those edits.
	ErrModified = errors.New("file changed on disk since it was loaded")
)

// ConfigError is one problem in an inventory file. Load returns all of a
// file's problems together, joined with errors.Join, ordered by line.
type ConfigError struct {
	File  string // path of the file; empty for a hive given to Add
	Line  int    // 1-based; 0 when the problem has no single line
	Table string // `hive "gpu-box"`, `hive #2` (no usable name) or `queen`; empty at top level
	Field string // key inside Table, e.g. "port"
	Msg   string
}

// Error reads like `inventory.toml:12: hive "gpu-box": port: 70000 is out of
// range (1-65535)`.
func (e *ConfigError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	}
	if e.Table != "" {
		b.WriteString(e.Table)
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}
