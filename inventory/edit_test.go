package inventory_test

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/inventory"
)

// userFile is an inventory as a person might write it: comments everywhere,
// odd spacing, a value spanning lines, the queen table last.
const userFile = `# My hives.  Don't touch the spacing!

# the gaming PC under the desk
[[hive]]
name    = "gaming-pc"      # alias in ~/.ssh/config
host    = "gaming-pc"

# ---- servers ----

# rack, top shelf
[[hive]]
name = "rack-01"
host = "10.0.0.5"
devices = [
  "gpu0",  # the 4090
  "gpu1",
]
# port = 2222   (not yet)

[[hive]]
name = "rack-02"
host = "10.0.0.6"
disabled = true
# rack-02 is at the bottom
[queen]
keep_alive = "5m"
`

func load(t *testing.T, path string) *inventory.Inventory {
	t.Helper()
	inv, err := inventory.Load(path)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return inv
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func save(t *testing.T, inv *inventory.Inventory) {
	t.Helper()
	if err := inv.Save(); err != nil {
		t.Fatalf("save: %v", err)
	}
}

func TestRemoveKeepsTheRest(t *testing.T) {
	tests := []struct {
		name string
		hive string
		want string
	}{
		{"first", "gaming-pc", `# My hives.  Don't touch the spacing!

# ---- servers ----

# rack, top shelf
[[hive]]
name = "rack-01"
host = "10.0.0.5"
devices = [
  "gpu0",  # the 4090
  "gpu1",
]
# port = 2222   (not yet)

[[hive]]
name = "rack-02"
host = "10.0.0.6"
disabled = true
# rack-02 is at the bottom
[queen]
keep_alive = "5m"
`},
		{"middle", "rack-01", `# My hives.  Don't touch the spacing!

# the gaming PC under the desk
[[hive]]
name    = "gaming-pc"      # alias in ~/.ssh/config
host    = "gaming-pc"

# ---- servers ----

[[hive]]
name = "rack-02"
host = "10.0.0.6"
disabled = true
# rack-02 is at the bottom
[queen]
keep_alive = "5m"
`},
		{"before the queen", "rack-02", `# My hives.  Don't touch the spacing!

# the gaming PC under the desk
[[hive]]
name    = "gaming-pc"      # alias in ~/.ssh/config
host    = "gaming-pc"

# ---- servers ----

# rack, top shelf
[[hive]]
name = "rack-01"
host = "10.0.0.5"
devices = [
  "gpu0",  # the 4090
  "gpu1",
]
# port = 2222   (not yet)

# rack-02 is at the bottom
[queen]
keep_alive = "5m"
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, userFile)
			inv := load(t, path)
			if err := inv.Remove(tt.hive); err != nil {
				t.Fatalf("remove: %v", err)
			}
			if _, ok := inv.Hive(tt.hive); ok {
				t.Errorf("Hive(%q) after Remove: got found, want not found", tt.hive)
			}
			if got, want := len(inv.Hives), 2; got != want {
				t.Errorf("hives: got %d, want %d", got, want)
			}
			save(t, inv)
			if got := readFile(t, path); got != tt.want {
				t.Errorf("file after removing %s:\n%s\nwant:\n%s", tt.hive, got, tt.want)
			}
			if got := load(t, path); len(got.Hives) != 2 || got.Queen.KeepAlive != "5m" {
				t.Errorf("reloaded: got %+v", got)
			}
		})
	}
}

func TestAddThenRemoveRoundTrip(t *testing.T) {
	path := writeFile(t, userFile)
	inv := load(t, path)
	h := inventory.Hive{Name: "new-box", Host: "192.168.1.7", User: "bob", Port: 2222,
		Identity: "~/.ssh/id_new", Devices: []string{"gpu0"}, KeepAlive: "10m"}
	if err := inv.Add(h); err != nil {
		t.Fatalf("add: %v", err)
	}
	save(t, inv)
	got := readFile(t, path)
	wantAdded := userFile + `
[[hive]]
name = "new-box"
host = "192.168.1.7"
user = "bob"
port = 2222
identity = "~/.ssh/id_new"
devices = ["gpu0"]
keep_alive = "10m"
`
	if got != wantAdded {
		t.Errorf("after add:\n%s\nwant:\n%s", got, wantAdded)
	}

	inv = load(t, path)
	g, ok := inv.Hive("new-box")
	if !ok {
		t.Fatal("reloaded: new-box not found")
	}
	home, _ := os.UserHomeDir()
	if g.User != "bob" || g.Port != 2222 || g.Identity != filepath.Join(home, ".ssh", "id_new") {
		t.Errorf("reloaded new-box: got %+v", g)
	}
	if err := inv.Remove("new-box"); err != nil {
		t.Fatalf("remove: %v", err)
	}
	save(t, inv)
	if got := readFile(t, path); got != userFile {
		t.Errorf("after add and remove:\n%s\nwant the original:\n%s", got, userFile)
	}
}

func TestAddToFileWithoutTrailingNewline(t *testing.T) {
	path := writeFile(t, "[[hive]]\nname = \"a\"\nhost = \"a\" # last line")
	inv := load(t, path)
	if err := inv.Add(inventory.Hive{Name: "b", Host: "b"}); err != nil {
		t.Fatal(err)
	}
	save(t, inv)
	want := "[[hive]]\nname = \"a\"\nhost = \"a\" # last line\n\n[[hive]]\nname = \"b\"\nhost = \"b\"\n"
	if got := readFile(t, path); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestAddKeepsCRLF(t *testing.T) {
	path := writeFile(t, "# windows\r\n[[hive]]\r\nname = \"a\"\r\nhost = \"a\"\r\n")
	inv := load(t, path)
	if err := inv.Add(inventory.Hive{Name: "b", Host: "b"}); err != nil {
		t.Fatal(err)
	}
	if err := inv.Remove("a"); err != nil {
		t.Fatal(err)
	}
	save(t, inv)
	want := "# windows\r\n[[hive]]\r\nname = \"b\"\r\nhost = \"b\"\r\n"
	if got := readFile(t, path); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestAddNewFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config", "rbee", "inventory.toml")
	inv := load(t, path)
	if err := inv.Add(inventory.Hive{Name: "a", Host: "host-a"}); err != nil {
		t.Fatal(err)
	}
	if err := inv.Add(inventory.Hive{Name: "b", Host: "host-b", Disabled: true}); err != nil {
		t.Fatal(err)
	}
	save(t, inv)
	got := readFile(t, path)
	if !strings.HasPrefix(got, "# ") {
		t.Errorf("new file starts %q, want a comment", got[:min(len(got), 20)])
	}
	if !strings.HasSuffix(got, "\n\n[[hive]]\nname = \"a\"\nhost = \"host-a\"\n\n[[hive]]\nname = \"b\"\nhost = \"host-b\"\ndisabled = true\n") {
		t.Errorf("new file:\n%s", got)
	}
	re := load(t, path)
	if len(re.Hives) != 2 || !re.Hives[1].Disabled {
		t.Errorf("reloaded: got %+v", re.Hives)
	}
}

func TestAddIsIdempotent(t *testing.T) {
	path := writeFile(t, userFile)
	inv := load(t, path)
	h := inventory.Hive{Name: "new-box", Host: "192.168.1.7", User: "bob"}
	for range 2 {
		if err := inv.Add(h); err != nil {
			t.Fatalf("add: %v", err)
		}
	}
	save(t, inv)
	first := readFile(t, path)

	inv = load(t, path)
	// Same address, other details: still the same hive.
	h.KeepAlive = "1h"
	if err := inv.Add(h); err != nil {
		t.Fatalf("add again: %v", err)
	}
	save(t, inv)
	if got := readFile(t, path); got != first {
		t.Errorf("second add changed the file:\n%s\nwant:\n%s", got, first)
	}
	if got := strings.Count(first, `name = "new-box"`); got != 1 {
		t.Errorf("new-box written %d times, want 1", got)
	}
	if got, want := len(inv.Hives), 4; got != want {
		t.Errorf("hives: got %d, want %d", got, want)
	}
}

func TestAddConflict(t *testing.T) {
	tests := []struct {
		name string
		hive inventory.Hive
	}{
		{"other host", inventory.Hive{Name: "rack-01", Host: "10.0.0.99"}},
		{"other user", inventory.Hive{Name: "rack-01", Host: "10.0.0.5", User: "root"}},
		{"other port", inventory.Hive{Name: "rack-01", Host: "10.0.0.5", Port: 2222}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv := load(t, writeFile(t, userFile))
			err := inv.Add(tt.hive)
			if !errors.Is(err, inventory.ErrExists) {
				t.Fatalf("got %v, want ErrExists", err)
			}
			if !strings.Contains(err.Error(), "10.0.0.5") {
				t.Errorf("got %q, want the existing address in it", err)
			}
			if h, _ := inv.Hive("rack-01"); h.Host != "10.0.0.5" {
				t.Errorf("rack-01 host: got %q, want unchanged", h.Host)
			}
		})
	}
}

func TestAddInvalid(t *testing.T) {
	tests := []struct {
		name  string
		hive  inventory.Hive
		field string
	}{
		{"name with a command", inventory.Hive{Name: "$(touch /tmp/x)", Host: "b"}, "name"},
		{"name with a space", inventory.Hive{Name: "a b", Host: "b"}, "name"},
		{"no name", inventory.Hive{Host: "b"}, "name"},
		{"no host", inventory.Hive{Name: "a"}, "host"},
		{"host with a semicolon", inventory.Hive{Name: "a", Host: "b;reboot"}, "host"},
		{"user with backticks", inventory.Hive{Name: "a", Host: "b", User: "`id`"}, "user"},
		{"port", inventory.Hive{Name: "a", Host: "b", Port: 65536}, "port"},
		{"device", inventory.Hive{Name: "a", Host: "b", Devices: []string{"tpu0"}}, "devices"},
		{"duration", inventory.Hive{Name: "a", Host: "b", KeepAlive: "forever"}, "keep_alive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, userFile)
			inv := load(t, path)
			err := inv.Add(tt.hive)
			var ce *inventory.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a ConfigError", err)
			}
			if ce.Field != tt.field {
				t.Errorf("field: got %q, want %q (%v)", ce.Field, tt.field, err)
			}
			if len(inv.Hives) != 3 {
				t.Errorf("hives: got %d, want 3", len(inv.Hives))
			}
		})
	}
}

func TestRemoveNotFound(t *testing.T) {
	inv := load(t, writeFile(t, userFile))
	if err := inv.Remove("nope"); !errors.Is(err, inventory.ErrNotFound) {
		t.Errorf("got %v, want ErrNotFound", err)
	}
}

func TestRemoveInlineHive(t *testing.T) {
	inv := load(t, writeFile(t, "hive = [{name = \"a\", host = \"b\"}]\n"))
	if err := inv.Remove("a"); err == nil || !strings.Contains(err.Error(), "by hand") {
		t.Errorf("got %v, want an error asking to remove it by hand", err)
	}
}

func TestRemoveLastHive(t *testing.T) {
	path := writeFile(t, "[[hive]]\nname = \"a\"\nhost = \"b\"\n")
	inv := load(t, path)
	if err := inv.Remove("a"); err != nil {
		t.Fatal(err)
	}
	save(t, inv)
	if got := readFile(t, path); got != "" {
		t.Errorf("got %q, want an empty file", got)
	}
	if got := load(t, path); len(got.Hives) != 0 {
		t.Errorf("reloaded: got %d hives, want 0", len(got.Hives))
	}
}

func TestSaveIsAtomic(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	path := filepath.Join(dir, "inventory.toml")
	inv := load(t, path)
	if err := inv.Add(inventory.Hive{Name: "a", Host: "b"}); err != nil {
		t.Fatal(err)
	}
	save(t, inv)
	checkMode := func(path string, want os.FileMode) {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); runtime.GOOS != "windows" && got != want {
			t.Errorf("%s mode: got %v, want %v", path, got, want)
		}
	}
	checkMode(path, 0o600)
	checkMode(dir, 0o700)
	checkMode(filepath.Dir(dir), 0o700)

	// An existing file readable by others becomes 0600 too.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	inv = load(t, path)
	if err := inv.Add(inventory.Hive{Name: "c", Host: "d"}); err != nil {
		t.Fatal(err)
	}
	save(t, inv)
	checkMode(path, 0o600)

	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "inventory.toml" {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %q, want only inventory.toml", names)
	}
}

func TestSaveRefusesChangesOnDisk(t *testing.T) {
	tests := []struct {
		name   string
		exists bool
		change func(path string) error
	}{
		{"edited", true, func(p string) error { return os.WriteFile(p, []byte(userFile+"# edited\n"), 0o600) }},
		{"removed", true, os.Remove},
		{"created", false, func(p string) error { return os.WriteFile(p, []byte("# mine\n"), 0o600) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "inventory.toml")
			if tt.exists {
				path = writeFile(t, userFile)
			}
			inv := load(t, path)
			if err := inv.Add(inventory.Hive{Name: "x", Host: "y"}); err != nil {
				t.Fatal(err)
			}
			if err := tt.change(path); err != nil {
				t.Fatal(err)
			}
			if err := inv.Save(); !errors.Is(err, inventory.ErrModified) {
				t.Errorf("got %v, want ErrModified", err)
			}
		})
	}
}

func TestSaveThroughSymlink(t *testing.T) {
	target := writeFile(t, userFile)
	link := filepath.Join(t.TempDir(), "inventory.toml")
	if err := os.Symlink(target, link); err != nil {
		t.Skip(err)
	}
	inv := load(t, link)
	if err := inv.Remove("rack-02"); err != nil {
		t.Fatal(err)
	}
	save(t, inv)
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("link after save: got %v %v, want still a symlink", fi.Mode(), err)
	}
	if got := readFile(t, target); strings.Contains(got, "rack-02\"") {
		t.Errorf("target still holds rack-02:\n%s", got)
	}
}

func TestSaveTwice(t *testing.T) {
	path := writeFile(t, userFile)
	inv := load(t, path)
	if err := inv.Add(inventory.Hive{Name: "x", Host: "y"}); err != nil {
		t.Fatal(err)
	}
	save(t, inv)
	if err := inv.Remove("x"); err != nil {
		t.Fatal(err)
	}
	save(t, inv)
	if got := readFile(t, path); got != userFile {
		t.Errorf("got:\n%s\nwant:\n%s", got, userFile)
	}
}

func TestRemoveIgnoresTablesInsideStrings(t *testing.T) {
	text := "[[hive]]\nname = \"a\"\nhost = \"a\"\nknown_hosts = '''\n[[hive]]\n# not a comment\n'''\n\n[[hive]]\nname = \"b\"\nhost = \"b\"\n"
	path := writeFile(t, text)
	inv := load(t, path)
	if err := inv.Remove("a"); err != nil {
		t.Fatal(err)
	}
	save(t, inv)
	if got, want := readFile(t, path), "[[hive]]\nname = \"b\"\nhost = \"b\"\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
