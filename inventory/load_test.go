package inventory_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/inventory"
)

// writeFile writes text to inventory.toml in a fresh directory.
func writeFile(t testing.TB, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "inventory.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// configErrors flattens errors.Join and fails on anything not a ConfigError.
func configErrors(t *testing.T, err error) []*inventory.ConfigError {
	t.Helper()
	var out []*inventory.ConfigError
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var ce *inventory.ConfigError
		if !errors.As(e, &ce) {
			t.Errorf("got %T %q, want a *ConfigError", e, e)
			return
		}
		out = append(out, ce)
	}
	walk(err)
	return out
}

func TestLoadExample(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	inv, err := inventory.Load(filepath.Join("..", "inventory.example.toml"))
	if err != nil {
		t.Fatalf("load example: %v", err)
	}
	if got, want := inv.Queen, (inventory.Queen{Addr: "127.0.0.1:7833", KeepAlive: "5m"}); got != want {
		t.Errorf("queen: got %+v, want %+v", got, want)
	}
	var names []string
	for _, h := range inv.Hives {
		names = append(names, h.Name)
	}
	if got, want := names, []string{"gaming-pc", "rack-01"}; !slices.Equal(got, want) {
		t.Fatalf("hives: got %q, want %q", got, want)
	}
	h, ok := inv.Hive("rack-01")
	if !ok {
		t.Fatal(`Hive("rack-01"): not found`)
	}
	want := inventory.Hive{
		Name: "rack-01", Host: "10.0.0.5", User: "rbee", Port: 2222,
		Identity:   filepath.Join(home, ".ssh", "rbee_ed25519"),
		KnownHosts: filepath.Join(home, ".ssh", "known_hosts"),
		Devices:    []string{"gpu0", "gpu1"}, KeepAlive: "30m",
	}
	if fmt.Sprint(h) != fmt.Sprint(want) {
		t.Errorf("rack-01: got %+v, want %+v", h, want)
	}
	if _, ok := inv.Hive("nope"); ok {
		t.Error(`Hive("nope"): got found, want not found`)
	}
}

func TestLoadMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "inventory.toml")
	inv, err := inventory.Load(path)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if inv.Path != path {
		t.Errorf("path: got %q, want %q", inv.Path, path)
	}
	if len(inv.Hives) != 0 || inv.Queen != (inventory.Queen{}) {
		t.Errorf("got %+v, want an empty inventory", inv)
	}
}

func TestLoadEmptyPathIsDefault(t *testing.T) {
	path := writeFile(t, "[[hive]]\nname = \"a\"\nhost = \"a\"\n")
	t.Setenv("RBEE_INVENTORY", path)
	inv, err := inventory.Load("")
	if err != nil {
		t.Fatal(err)
	}
	if inv.Path != path || len(inv.Hives) != 1 {
		t.Errorf("got path %q and %d hives, want %q and 1", inv.Path, len(inv.Hives), path)
	}
}

func TestLoadErrors(t *testing.T) {
	type want struct {
		line         int
		table, field string
		msg          string // a part of Msg
	}
	tests := []struct {
		name string
		text string
		want []want
	}{
		{"syntax", "[[hive]]\nname = \"a\nhost = \"b\"\n", []want{{2, "", "hive.name", "newline"}}},
		{"unknown top-level key", "colour = \"blue\"\n", []want{{1, "", "colour", "unknown key"}}},
		{"unknown top-level table", "[[hives]]\nname = \"a\"\n", []want{{1, "", "hives", `unknown key (did you mean "hive"?)`}}},
		{"unknown hive key", "[[hive]]\nname = \"a\"\nhosst = \"b\"\nhost = \"b\"\n",
			[]want{{3, `hive "a"`, "hosst", `unknown key (did you mean "host"?)`}}},
		{"unknown queen key", "[queen]\naddress = \"127.0.0.1:1\"\n", []want{{2, "queen", "address", "unknown key"}}},
		{"table under a hive", "[[hive]]\nname = \"a\"\nhost = \"b\"\n[hive.ssh]\nport = 1\n", []want{{4, `hive "a"`, "ssh", "unknown key"}}},
		{"port as a string", "[[hive]]\nname = \"a\"\nhost = \"b\"\nport = \"22\"\n", []want{{4, `hive "a"`, "port", `want an integer, got string "22"`}}},
		{"port as a float", "[[hive]]\nname = \"a\"\nhost = \"b\"\nport = 22.5\n", []want{{4, `hive "a"`, "port", "want an integer, got float 22.5"}}},
		{"name as a number", "[[hive]]\nname = 5\nhost = \"b\"\n", []want{{2, "hive #1", "name", "want a string, got integer 5"}}},
		{"disabled as a string", "[[hive]]\nname = \"a\"\nhost = \"b\"\ndisabled = \"yes\"\n", []want{{4, `hive "a"`, "disabled", "want true or false"}}},
		{"devices as a string", "[[hive]]\nname = \"a\"\nhost = \"b\"\ndevices = \"gpu0\"\n", []want{{4, `hive "a"`, "devices", "want a list"}}},
		{"unknown device", "[[hive]]\nname = \"a\"\nhost = \"b\"\ndevices = [\"gpu-0\"]\n", []want{{4, `hive "a"`, "devices", `"gpu-0" is not a device`}}},
		{"device twice", "[[hive]]\nname = \"a\"\nhost = \"b\"\ndevices = [\"cpu\", \"cpu\"]\n", []want{{4, `hive "a"`, "devices", "listed twice"}}},
		{"hive as a table", "[hive]\nname = \"a\"\n", []want{{1, "", "hive", "want hive tables ([[hive]])"}}},
		{"queen as a value", "queen = \"x\"\n", []want{{1, "", "queen", "want a table"}}},
		{"duplicate name", "[[hive]]\nname = \"a\"\nhost = \"b\"\n\n[[hive]]\nname = \"a\"\nhost = \"c\"\n",
			[]want{{6, `hive "a"`, "name", "already defined at line 2"}}},
		{"invalid name", "[[hive]]\nname = \"Gpu_Box\"\nhost = \"b\"\n", []want{{2, `hive "Gpu_Box"`, "name", "not a valid name"}}},
		{"name too long", "[[hive]]\nname = \"" + strings.Repeat("a", 64) + "\"\nhost = \"b\"\n", []want{{2, `hive "` + strings.Repeat("a", 64) + `"`, "name", "not a valid name"}}},
		{"name with a space", "[[hive]]\nname = \"gpu box\"\nhost = \"b\"\n", []want{{2, `hive "gpu box"`, "name", `contains ' '`}}},
		{"name with a command", "[[hive]]\nname = \"$(touch x)\"\nhost = \"b\"\n", []want{{2, `hive "$(touch x)"`, "name", `contains '$'; shell metacharacters`}}},
		{"name with a semicolon", "[[hive]]\nname = \"a;b\"\nhost = \"b\"\n", []want{{2, `hive "a;b"`, "name", `contains ';'`}}},
		{"name missing", "[[hive]]\nhost = \"b\"\n", []want{{1, "hive #1", "name", "missing"}}},
		{"host missing", "# c\n[[hive]]\nname = \"a\"\n", []want{{2, `hive "a"`, "host", "missing"}}},
		{"host with backticks", "[[hive]]\nname = \"a\"\nhost = \"`reboot`\"\n", []want{{3, `hive "a"`, "host", "contains '`'"}}},
		{"host with a semicolon", "[[hive]]\nname = \"a\"\nhost = \"b;rm -rf ~\"\n", []want{{3, `hive "a"`, "host", "contains ';'"}}},
		{"host as an option", "[[hive]]\nname = \"a\"\nhost = \"-oProxyCommand\"\n", []want{{3, `hive "a"`, "host", "starts with '-'"}}},
		{"host with a user", "[[hive]]\nname = \"a\"\nhost = \"bob@box\"\n", []want{{3, `hive "a"`, "host", `put the user in user = "bob"`}}},
		{"host with a port", "[[hive]]\nname = \"a\"\nhost = \"box:2222\"\n", []want{{3, `hive "a"`, "host", "put the port in port = 2222"}}},
		{"user with a space", "[[hive]]\nname = \"a\"\nhost = \"b\"\nuser = \"a b\"\n", []want{{4, `hive "a"`, "user", "contains ' '"}}},
		{"port too big", "[[hive]]\nname = \"a\"\nhost = \"b\"\nport = 70000\n", []want{{4, `hive "a"`, "port", "70000 is out of range (1-65535)"}}},
		{"port zero", "[[hive]]\nname = \"a\"\nhost = \"b\"\nport = 0\n", []want{{4, `hive "a"`, "port", "0 is out of range"}}},
		{"bad duration", "[[hive]]\nname = \"a\"\nhost = \"b\"\nkeep_alive = \"10 minutes\"\n", []want{{4, `hive "a"`, "keep_alive", `"10 minutes" is not a duration`}}},
		{"negative duration", "[[hive]]\nname = \"a\"\nhost = \"b\"\nkeep_alive = \"-1m\"\n", []want{{4, `hive "a"`, "keep_alive", "negative"}}},
		{"bad queen duration", "[queen]\nkeep_alive = \"soon\"\n", []want{{2, "queen", "keep_alive", "not a duration"}}},
		{"bad queen addr", "[queen]\naddr = \"localhost\"\n", []want{{2, "queen", "addr", "not host:port"}}},
		{"lines after values spanning lines", "[[hive]]\nname = \"a\"\nidentity = \"\"\"\n[[hive]]\nport = 1 # not a key\n\"\"\"\ndevices = [\n  \"cpu\", # [\n]\nport = 0\nhost = \"b\"\n",
			[]want{{10, `hive "a"`, "port", "out of range"}}},
		{"inline hives", "\nhive = [{name = \"a\", host = \"b\", port = 0}]\n", []want{{2, `hive "a"`, "port", "out of range"}}},
		{"quoted keys", "[[ \"hive\" ]]\n\"name\" = \"a\"\n'host' = \"b\"\n\"port\" = -1\n", []want{{4, `hive "a"`, "port", "out of range"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, tt.text)
			inv, err := inventory.Load(path)
			if err == nil {
				t.Fatalf("got %+v, want an error", inv)
			}
			got := configErrors(t, err)
			if len(got) != len(tt.want) {
				t.Fatalf("got %d errors (%v), want %d", len(got), err, len(tt.want))
			}
			for i, w := range tt.want {
				g := got[i]
				if g.File != path || g.Line != w.line || g.Table != w.table || g.Field != w.field || !strings.Contains(g.Msg, w.msg) {
					t.Errorf("got %s:%d %q %q %q, want %s:%d %q %q containing %q", g.File, g.Line, g.Table, g.Field, g.Msg, path, w.line, w.table, w.field, w.msg)
				}
			}
		})
	}
}

func TestConfigErrorMessage(t *testing.T) {
	path := writeFile(t, "[[hive]]\nname = \"gpu-box\"\nhost = \"b\"\nport = 70000\n")
	_, err := inventory.Load(path)
	if got, want := fmt.Sprint(err), path+`:4: hive "gpu-box": port: 70000 is out of range (1-65535)`; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestLoadReportsAllErrors(t *testing.T) {
	text := `[queen]
keep_alive = "later"

[[hive]]
name = "ok"
host = "ok"

[[hive]]
name = "gpu box"
port = 70000

[[hive]]
name = "ok"
host = "x"
colour = "red"
`
	path := writeFile(t, text)
	_, err := inventory.Load(path)
	var got []string
	for _, e := range configErrors(t, err) {
		got = append(got, fmt.Sprintf("%d %s %s", e.Line, e.Table, e.Field))
	}
	want := []string{
		"2 queen keep_alive",
		`8 hive "gpu box" host`,
		`9 hive "gpu box" name`,
		`10 hive "gpu box" port`,
		`13 hive "ok" name`,
		`15 hive "ok" colour`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != len(want) {
		t.Errorf("message has %d lines, want %d:\n%v", n, len(want), err)
	}
}

func TestDefaultPath(t *testing.T) {
	home := t.TempDir()
	tests := []struct {
		name           string
		inventory, xdg string
		want           string
	}{
		{"RBEE_INVENTORY", "/etc/rbee.toml", "/xdg", "/etc/rbee.toml"},
		{"XDG_CONFIG_HOME", "", "/xdg", "/xdg/rbee/inventory.toml"},
		{"relative XDG_CONFIG_HOME", "", "xdg", filepath.Join(home, ".config", "rbee", "inventory.toml")},
		{"home", "", "", filepath.Join(home, ".config", "rbee", "inventory.toml")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("HOME", home)
			t.Setenv("RBEE_INVENTORY", tt.inventory)
			t.Setenv("XDG_CONFIG_HOME", tt.xdg)
			if got := inventory.DefaultPath(); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func BenchmarkLoad(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("# a hundred hives\n[queen]\nkeep_alive = \"5m\"\n")
	for i := range 100 {
		fmt.Fprintf(&sb, "\n# hive %d\n[[hive]]\nname = \"hive-%03d\"\nhost = \"10.0.%d.%d\"\nuser = \"rbee\"\nport = %d\nidentity = \"~/.ssh/id_ed25519\"\ndevices = [\"gpu0\", \"gpu1\", \"cpu\"]\nkeep_alive = \"10m\"\n",
			i, i, i/250, i%250+1, 2200+i)
	}
	path := writeFile(b, sb.String())
	b.SetBytes(int64(sb.Len()))
	b.ReportAllocs()
	for b.Loop() {
		inv, err := inventory.Load(path)
		if err != nil {
			b.Fatal(err)
		}
		if len(inv.Hives) != 100 {
			b.Fatalf("got %d hives, want 100", len(inv.Hives))
		}
	}
}
