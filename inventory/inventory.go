package inventory

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Hive is one host rbee reaches over SSH.
type Hive struct {
	Name       string   `toml:"name"`                  // unique, [a-z0-9][a-z0-9-]{0,62}
	Host       string   `toml:"host"`                  // hostname, IP or ~/.ssh/config alias
	User       string   `toml:"user,omitempty"`        // empty: from ssh config, else the local user
	Port       int      `toml:"port,omitzero"`         // 0: from ssh config, else 22
	Identity   string   `toml:"identity,omitempty"`    // private key path; Load expands ~
	KnownHosts string   `toml:"known_hosts,omitempty"` // Load expands ~
	Devices    []string `toml:"devices,omitempty"`     // allow-list ("gpu0", "cpu"); empty: all
	KeepAlive  string   `toml:"keep_alive,omitempty"`  // idle time before workers stop, e.g. "10m"
	Disabled   bool     `toml:"disabled,omitempty"`
}

// Queen is the [queen] table.
type Queen struct {
	Addr      string `toml:"addr,omitempty"`
	KeepAlive string `toml:"keep_alive,omitempty"`
}

// Inventory is an inventory file as loaded. Add and Remove edit the file's
// text as well as Hives, and Save writes that text; changes made to the
// fields directly are not written. An Inventory is not safe for concurrent
// use.
type Inventory struct {
	Path  string `toml:"-"` // file it was read from
	Queen Queen  `toml:"queen"`
	Hives []Hive `toml:"hive"` // [[hive]] tables, in file order
	// Bad are the [[hive]] entries with problems, in file order: only
	// LoadTolerant returns an Inventory with any.
	Bad []BadHive `toml:"-"`

	text     string // what Save writes
	onDisk   []byte // what Load read; nil when the file did not exist
	problems error  // every problem of the file, for the strict Load
}

// newFileHeader starts a file that Save creates.
const newFileHeader = `# rbee inventory: the hives rbee reaches over SSH.
# inventory.example.toml in rbee's repository describes every field.
# Edit freely: rbee hive add and rbee hive rm keep your comments and order.
`

// PathFor is the inventory of the rbee home rbeeHome: $RBEE_INVENTORY when
// set; for the default home (~/.rbee) DefaultPath's file; for any other
// home, inventory.toml inside it. Two homes on one machine never share
// hosts unless told to.
func PathFor(rbeeHome string) string {
	if p := os.Getenv("RBEE_INVENTORY"); p != "" {
		return p
	}
	if home, err := os.UserHomeDir(); err == nil && rbeeHome != "" && filepath.Clean(rbeeHome) != filepath.Join(home, ".rbee") {
		return filepath.Join(rbeeHome, "inventory.toml")
	}
	return DefaultPath()
}

// DefaultPath is $RBEE_INVENTORY, else $XDG_CONFIG_HOME/rbee/inventory.toml,
// else ~/.config/rbee/inventory.toml: the default home's inventory. A
// relative $XDG_CONFIG_HOME is ignored, as the XDG spec asks; with no home
// directory the path is relative.
func DefaultPath() string {
	if p := os.Getenv("RBEE_INVENTORY"); p != "" {
		return p
	}
	if dir := os.Getenv("XDG_CONFIG_HOME"); dir != "" && filepath.IsAbs(dir) {
		return filepath.Join(dir, "rbee", "inventory.toml")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".config", "rbee", "inventory.toml")
}

// Load reads the inventory at path (DefaultPath when empty). A missing file
// is an empty inventory. Every problem in the file is reported, each as a
// *ConfigError, joined with errors.Join.
func Load(path string) (*Inventory, error) {
	inv, err := LoadTolerant(path)
	if err != nil {
		return nil, err
	}
	if len(inv.Bad) > 0 {
		return nil, inv.problems
	}
	return inv, nil
}

// LoadTolerant is Load for those who use the hives one at a time (the
// queen): a [[hive]] entry with problems does not fail it but is left out
// of Hives and reported in Bad, with the file and line of each problem.
// Problems outside the hive entries (TOML syntax, unknown top-level keys,
// the [queen] table) still fail it, as with Load. Add and Remove work on
// such an inventory and leave its bad entries as they are (Remove also
// removes a bad entry by its name).
func LoadTolerant(path string) (*Inventory, error) {
	if path == "" {
		path = DefaultPath()
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &Inventory{Path: path}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read inventory: %w", err)
	}
	inv, err := parse(path, string(data))
	if err != nil {
		return nil, err
	}
	inv.text = string(data)
	inv.onDisk = data
	inv.expand()
	return inv, nil
}

// Hive returns the hive called name.
func (inv *Inventory) Hive(name string) (Hive, bool) {
	for _, h := range inv.Hives {
		if h.Name == name {
			return h, true
		}
	}
	return Hive{}, false
}

// BadHive returns the bad entry named name, if one is.
func (inv *Inventory) BadHive(name string) (BadHive, bool) {
	for _, b := range inv.Bad {
		if name != "" && b.Hive.Name == name {
			return b, true
		}
	}
	return BadHive{}, false
}

// Add appends h as a new [[hive]] table at the end of the file. Adding a
// hive that is already there with the same host, user and port does
// nothing, so that `rbee hive add` can be run twice; the same name with a
// different address is ErrExists.
func (inv *Inventory) Add(h Hive) error {
	if err := validate(h); err != nil {
		return err
	}
	if old, ok := inv.Hive(h.Name); ok {
		if old.Host == h.Host && old.User == h.User && old.Port == h.Port {
			return nil
		}
		return fmt.Errorf("add hive %q: %w as %s (remove it first to change its address)", h.Name, ErrExists, address(old))
	}
	if bad, ok := inv.BadHive(h.Name); ok {
		return fmt.Errorf("add hive %q: %w at %s:%d, with problems (fix that entry or remove it first): %w", h.Name, ErrExists, inv.Path, bad.Line, bad.Err)
	}
	var buf bytes.Buffer
	enc := toml.NewEncoder(&buf)
	enc.Indent = ""
	if err := enc.Encode(struct {
		Hive []Hive `toml:"hive"`
	}{[]Hive{h}}); err != nil {
		return fmt.Errorf("add hive %q: encode: %w", h.Name, err)
	}
	text := inv.content()
	nl := newline(text)
	if text != "" {
		if !strings.HasSuffix(text, "\n") {
			text += nl
		}
		if !strings.HasSuffix(text, "\n\n") && !strings.HasSuffix(text, "\n\r\n") {
			text += nl
		}
	}
	text += strings.ReplaceAll(buf.String(), "\n", nl)
	return inv.apply(text, len(inv.Hives)+len(inv.Bad)+1, fmt.Sprintf("add hive %q", h.Name))
}

// Remove deletes the [[hive]] table of the hive called name (a good entry,
// or a bad one that has that name): from its header to the next table,
// less the comments that lead into that table.
func (inv *Inventory) Remove(name string) error {
	op := fmt.Sprintf("remove hive %q", name)
	text := inv.content()
	entries, err := entryNames(inv.Path, text)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	i := slices.Index(entries, name)
	if i < 0 || name == "" {
		return fmt.Errorf("%s: %w", op, ErrNotFound)
	}
	l := scan(text)
	if n := countOf(entries, name); n > 1 {
		// Which one is meant? Removing the first could leave the name
		// pointing at another host.
		var lines []string
		for j, e := range entries {
			if e == name && j < len(l.hives) {
				lines = append(lines, strconv.Itoa(l.hives[j].header))
			}
		}
		return fmt.Errorf("%s: %d entries in %s have that name (lines %s); remove the one you mean by hand", op, n, inv.Path, strings.Join(lines, ", "))
	}
	if i >= len(l.hives) {
		return fmt.Errorf("%s: it is not written as a [[hive]] table; remove it from %s by hand", op, inv.Path)
	}
	return inv.apply(cutBlock(text, l, i), len(entries)-1, op)
}

func countOf(ss []string, s string) int {
	n := 0
	for _, x := range ss {
		if x == s {
			n++
		}
	}
	return n
}

// entryNames are the names of every [[hive]] entry of text, good or bad, in
// file order: the index of a name is its table's among the file's.
func entryNames(file, text string) ([]string, error) {
	parsed, err := parse(file, text)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(parsed.Hives)+len(parsed.Bad))
	bad := make([]bool, len(names))
	for _, b := range parsed.Bad {
		names[b.index], bad[b.index] = b.Hive.Name, true
	}
	good := parsed.Hives
	for i := range names {
		if !bad[i] {
			names[i], good = good[0].Name, good[1:]
		}
	}
	return names, nil
}

// apply takes edited text only once it parses back to the expected number
// of [[hive]] entries with no more bad ones than before, so that an edit
// can never leave a file Load would refuse, nor add a problem to one
// LoadTolerant accepts.
func (inv *Inventory) apply(text string, wantEntries int, op string) error {
	parsed, err := parse(inv.Path, text)
	if err != nil {
		return fmt.Errorf("%s: the edited file would not load: %w", op, err)
	}
	if len(parsed.Bad) > len(inv.Bad) {
		return fmt.Errorf("%s: the edited file would not load: %w", op, parsed.problems)
	}
	if n := len(parsed.Hives) + len(parsed.Bad); n != wantEntries {
		return fmt.Errorf("%s: the edited file has %d hives, want %d", op, n, wantEntries)
	}
	parsed.expand()
	inv.Queen, inv.Hives, inv.Bad, inv.problems, inv.text = parsed.Queen, parsed.Hives, parsed.Bad, parsed.problems, text
	return nil
}

// Save writes the file atomically (a temporary file in the same directory,
// fsync, rename) with mode 0600, creating parent directories with mode
// 0700. It refuses with ErrModified when the file changed on disk since
// Load, rather than overwrite the user's edits.
func (inv *Inventory) Save() error {
	if inv.Path == "" {
		return errors.New("save inventory: no path")
	}
	path := inv.Path
	// Write through a symlink (dotfile managers link config files) rather
	// than replace it.
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		if target, err := filepath.EvalSymlinks(path); err == nil {
			path = target
		}
	}
	cur, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if inv.onDisk != nil {
			return fmt.Errorf("save inventory %s: %w (it was removed)", inv.Path, ErrModified)
		}
	case err != nil:
		return fmt.Errorf("save inventory: %w", err)
	case inv.onDisk == nil || !bytes.Equal(cur, inv.onDisk):
		return fmt.Errorf("save inventory %s: %w; load it again", inv.Path, ErrModified)
	}
	text := inv.content()
	if err := writeAtomic(path, []byte(text)); err != nil {
		return fmt.Errorf("save inventory: %w", err)
	}
	inv.text = text
	inv.onDisk = []byte(text)
	return nil
}

func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op once renamed
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	// Make the rename itself durable; some filesystems cannot sync a
	// directory, and the file is in place either way.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// content is the text Save would write: the file as loaded and edited, or
// a short header for a file that does not exist yet.
func (inv *Inventory) content() string {
	if inv.text == "" && inv.onDisk == nil {
		return newFileHeader
	}
	return inv.text
}

func (inv *Inventory) expand() {
	for i := range inv.Hives {
		inv.Hives[i].Identity = expandHome(inv.Hives[i].Identity)
		inv.Hives[i].KnownHosts = expandHome(inv.Hives[i].KnownHosts)
	}
}

// expandHome expands a leading ~ or ~/ to the home directory; ~user is left
// alone.
func expandHome(p string) string {
	if p != "~" && !strings.HasPrefix(p, "~/") {
		return p
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return p
	}
	return filepath.Join(home, p[1:])
}

func address(h Hive) string {
	s := h.Host
	if h.User != "" {
		s = h.User + "@" + s
	}
	if h.Port != 0 {
		s = fmt.Sprintf("%s:%d", s, h.Port)
	}
	return s
}

// newline is the file's line ending, so that added lines match it.
func newline(text string) string {
	if strings.Contains(text, "\r\n") {
		return "\r\n"
	}
	return "\n"
}

// cutBlock removes the i-th [[hive]] table from text. The table runs from
// its header to the next header, and comments directly above a header
// belong to that header: they go with the table removed, and those above
// the next header stay. Comments that follow the last key without a blank
// line go with the table; after a blank line they introduce the next one.
// Comments at the very top of the file are the file's own and always stay.
func cutBlock(text string, l *layout, i int) string {
	lines := strings.Split(text, "\n")
	start := l.hives[i].header - 1 // 0-based from here on
	if s := start; s > 0 {
		for s > 0 && l.kinds[s-1] == lineComment {
			s--
		}
		if s > 0 {
			start = s
		}
	}
	next := len(lines)
	for _, h := range l.headers {
		if h > l.hives[i].header {
			next = h - 1
			break
		}
	}
	end := next
	if next < len(lines) {
		last := l.hives[i].header - 1
		for k := last; k < next; k++ {
			if l.kinds[k] == lineContent {
				last = k
			}
		}
		blank := false
		for k := last + 1; k < next; k++ {
			blank = blank || l.kinds[k] == lineBlank
		}
		end = last + 1
		if blank {
			for end < next && l.kinds[end] == lineComment {
				end++
			}
			for end < next && l.kinds[end] == lineBlank {
				end++
			}
		}
	}
	out := append(lines[:start:start], lines[end:]...)
	if end < len(lines) {
		return strings.Join(out, "\n")
	}
	// The table was the last one: drop the blank lines that led to it.
	for len(out) > 0 && strings.TrimSpace(out[len(out)-1]) == "" {
		out = out[:len(out)-1]
	}
	if len(out) == 0 {
		return ""
	}
	return strings.Join(out, "\n") + newline(text)
}
