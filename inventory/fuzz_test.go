package inventory

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad: whatever the inventory file holds, Load and LoadTolerant never
// panic; what Load accepts, LoadTolerant accepts with no bad entries, and
// every hive Load returns has a name and a host.
func FuzzLoad(f *testing.F) {
	for _, s := range []string{
		"",
		"[[hive]]\nname = \"gpu\"\nhost = \"gpu-box\"\n",
		"[[hive]]\nname = \"gpu\"\nhost = \"10.0.0.7\"\nport = 2222\nuser = \"me\"\n",
		"[queen]\nkeep_alive = \"10m\"\n",
		"[[hive]]\nname = \"Bad Name\"\nhost = \"x\"\n",
		"[[hive]]\nname = \"a\"\nhost = \"$(touch x)\"\n",
		"[[hive]]\nname = \"a\"\nhost = \"h\"\nport = 0\n[[hive]]\nname = \"a\"\nhost = \"h\"\n",
		"[[hive\n",
		"[[hive]]\nname = \"a\"\nhost = \"h\"\nport = 99999\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p := filepath.Join(t.TempDir(), "inventory.toml")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		inv, err := Load(p)
		tol, terr := LoadTolerant(p)
		if err != nil {
			return
		}
		if terr != nil {
			t.Fatalf("Load accepted what LoadTolerant refuses: %v\n%s", terr, s)
		}
		for _, h := range inv.Hives {
			if h.Name == "" || h.Host == "" {
				t.Fatalf("Load accepted a hive without name or host: %+v\n%s", h, s)
			}
			if h.Port < 0 || h.Port > 65535 {
				t.Fatalf("Load accepted port %d\n%s", h.Port, s)
			}
		}
		if len(tol.Hives) != len(inv.Hives) {
			t.Fatalf("LoadTolerant kept %d hives, Load %d\n%s", len(tol.Hives), len(inv.Hives), s)
		}
	})
}
