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

// withBad has a malformed entry between two good ones.
const withBad = `# fleet
[[hive]]
name = "a"
host = "10.0.0.1"

# the broken one
[[hive]]
name = "b"
host = "10.0.0.2"
port = "x"

[[hive]]
name = "c"
host = "10.0.0.3"
`

func names(hs []inventory.Hive) []string {
	var out []string
	for _, h := range hs {
		out = append(out, h.Name)
	}
	return out
}

func TestLoadTolerantKeepsGoodHives(t *testing.T) {
	path := writeFile(t, withBad)
	inv, err := inventory.LoadTolerant(path)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if got, want := names(inv.Hives), []string{"a", "c"}; !slices.Equal(got, want) {
		t.Errorf("hives: got %v, want %v", got, want)
	}
	if len(inv.Bad) != 1 {
		t.Fatalf("bad: got %d entries, want 1", len(inv.Bad))
	}
	b := inv.Bad[0]
	if b.Hive.Name != "b" || b.Label != `hive "b"` || b.Line != 7 {
		t.Errorf("bad entry: got name %q label %q line %d, want b, hive \"b\", 7", b.Hive.Name, b.Label, b.Line)
	}
	if got, want := b.Err.Error(), path+`:10: hive "b": port: want an integer, got string "x"`; got != want {
		t.Errorf("bad entry error: got %q, want %q", got, want)
	}
	if ce := configErrors(t, b.Err); len(ce) != 1 || ce[0].Line != 10 || ce[0].Field != "port" {
		t.Errorf("bad entry errors: got %v, want one at line 10, field port", ce)
	}
	if got, ok := inv.BadHive("b"); !ok || got.Line != 7 {
		t.Errorf(`BadHive("b"): got %+v, %v`, got, ok)
	}
	if _, ok := inv.Hive("b"); ok {
		t.Error(`Hive("b"): got found, want the bad entry left out`)
	}
	// The strict Load refuses the same file, with the same problem.
	if _, err := inventory.Load(path); err == nil || err.Error() != b.Err.Error() {
		t.Errorf("strict load: got %v, want %v", err, b.Err)
	}
}

func TestLoadTolerantBadEntries(t *testing.T) {
	tests := []struct {
		name string
		text string
		good []string
		bad  []string // labels
	}{
		{"no name", "[[hive]]\nhost = \"h\"\n\n[[hive]]\nname = \"a\"\nhost = \"a\"\n", []string{"a"}, []string{"hive #1"}},
		{"duplicate name: the later one", "[[hive]]\nname = \"a\"\nhost = \"a\"\n[[hive]]\nname = \"a\"\nhost = \"b\"\n", []string{"a"}, []string{`hive "a"`}},
		{"unknown key in a hive", "[[hive]]\nname = \"a\"\nhost = \"a\"\ncolour = 1\n[[hive]]\nname = \"b\"\nhost = \"b\"\n", []string{"b"}, []string{`hive "a"`}},
		{"table under a hive", "[[hive]]\nname = \"a\"\nhost = \"a\"\n[hive.ssh]\nx = 1\n[[hive]]\nname = \"b\"\nhost = \"b\"\n", []string{"b"}, []string{`hive "a"`}},
		{"all bad", "[[hive]]\nname = \"a\"\nport = 0\n", nil, []string{`hive "a"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv, err := inventory.LoadTolerant(writeFile(t, tt.text))
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			var bad []string
			for _, b := range inv.Bad {
				bad = append(bad, b.Label)
			}
			if !slices.Equal(names(inv.Hives), tt.good) || !slices.Equal(bad, tt.bad) {
				t.Errorf("got good %v bad %v, want %v %v", names(inv.Hives), bad, tt.good, tt.bad)
			}
		})
	}
}

// Problems outside the hive entries fail the load: there is no entry to
// leave out.
func TestLoadTolerantFileProblems(t *testing.T) {
	tests := []struct{ name, text string }{
		{"syntax", "[[hive]]\nname = \"a\nhost = \"b\"\n"},
		{"unknown top-level key", "colour = 1\n[[hive]]\nname = \"a\"\nhost = \"a\"\n"},
		{"queen table", "[queen]\nkeep_alive = \"soon\"\n[[hive]]\nname = \"a\"\nhost = \"a\"\n"},
		{"hive as a table", "[hive]\nname = \"a\"\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv, err := inventory.LoadTolerant(writeFile(t, tt.text))
			if err == nil {
				t.Fatalf("got %+v, want an error", inv)
			}
			configErrors(t, err)
		})
	}
}

func TestEditsKeepBadEntries(t *testing.T) {
	path := writeFile(t, withBad)
	inv, err := inventory.LoadTolerant(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := inv.Add(inventory.Hive{Name: "d", Host: "10.0.0.4"}); err != nil {
		t.Fatalf("add: %v", err)
	}
	if err := inv.Remove("c"); err != nil {
		t.Fatalf("remove c: %v", err)
	}
	save(t, inv)
	got := readFile(t, path)
	want := strings.Replace(withBad, "\n[[hive]]\nname = \"c\"\nhost = \"10.0.0.3\"\n", "", 1) + "\n[[hive]]\nname = \"d\"\nhost = \"10.0.0.4\"\n"
	if got != want {
		t.Errorf("file after add d, remove c:\n%s\nwant:\n%s", got, want)
	}
	inv, err = inventory.LoadTolerant(path)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names(inv.Hives), []string{"a", "d"}) || len(inv.Bad) != 1 {
		t.Errorf("reloaded: good %v, %d bad, want [a d] and 1", names(inv.Hives), len(inv.Bad))
	}

	// The bad entry's name is taken: adding it again says where it is.
	err = inv.Add(inventory.Hive{Name: "b", Host: "10.0.0.2"})
	if !errors.Is(err, inventory.ErrExists) || !strings.Contains(err.Error(), fmt.Sprintf("%s:7", path)) {
		t.Errorf("add b: got %v, want ErrExists naming %s:7", err, path)
	}

	// Removing the bad entry by its name fixes the file.
	if err := inv.Remove("b"); err != nil {
		t.Fatalf("remove b: %v", err)
	}
	save(t, inv)
	if _, err := inventory.Load(path); err != nil {
		t.Errorf("strict load after removing the bad entry: %v", err)
	}
	if b, _ := os.ReadFile(path); strings.Contains(string(b), `port = "x"`) {
		t.Errorf("the bad entry is still there:\n%s", b)
	}
}

// "localhost" names this machine's hive: an SSH entry by that name is a
// problem of its own entry.
func TestLocalhostReserved(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "inventory.toml")
	if err := os.WriteFile(p, []byte("[[hive]]\nname = \"localhost\"\nhost = \"10.0.0.1\"\n\n[[hive]]\nname = \"ok\"\nhost = \"10.0.0.2\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	inv, err := inventory.LoadTolerant(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := inv.Hive("localhost"); ok || len(inv.Bad) != 1 || !strings.Contains(inv.Bad[0].Err.Error(), "this machine's own hive") {
		t.Errorf("hives %+v, bad %+v: want the localhost entry refused alone", inv.Hives, inv.Bad)
	}
}

// Two entries with one name: rm refuses to guess which is meant.
func TestRemoveDuplicateNameRefused(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "inventory.toml")
	text := "[[hive]]\nname = \"a\"\nhost = \"one.example\"\n\n[[hive]]\nname = \"a\"\nhost = \"two.example\"\n"
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	inv, err := inventory.LoadTolerant(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := inv.Remove("a"); err == nil || !strings.Contains(err.Error(), "lines 1, 5") {
		t.Errorf("Remove of a duplicated name: %v, want a refusal naming both lines", err)
	}
	if b, _ := os.ReadFile(p); string(b) != text {
		t.Errorf("the file changed:\n%s", b)
	}
}
