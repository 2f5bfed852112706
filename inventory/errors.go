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

	entry int // 1 + the index of the [[hive]] entry it is in; 0 outside one
}

// BadHive is a [[hive]] entry with problems. LoadTolerant leaves it out of
// Hives and keeps it here, so that the other hives stay usable while the
// person fixes it.
type BadHive struct {
	Hive  Hive   // what could be read of it; its Name may be empty or invalid
	Label string // how messages name it: hive "gpu-box", or hive #3 without a usable name
	Line  int    // line of its [[hive]] header (of the hive key for inline tables)
	Err   error  // its *ConfigErrors, joined, in line order; each names the file and line

	index int // its place among the file's [[hive]] entries
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
