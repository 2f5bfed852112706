package inventory

import (
	"path/filepath"
	"testing"
)

// Two rbee homes on one machine keep their own inventories: the default
// home (~/.rbee) the XDG file, any other its own inventory.toml, unless
// RBEE_INVENTORY names one for both.
func TestPathFor(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, "xdg"))
	t.Setenv("RBEE_INVENTORY", "")
	tests := []struct{ rbeeHome, want string }{
		{filepath.Join(home, ".rbee"), filepath.Join(home, "xdg", "rbee", "inventory.toml")},
		{filepath.Join(home, ".rbee") + "/", filepath.Join(home, "xdg", "rbee", "inventory.toml")},
		{"", filepath.Join(home, "xdg", "rbee", "inventory.toml")},
		{"/srv/rbee-a", "/srv/rbee-a/inventory.toml"},
		{"/srv/rbee-b", "/srv/rbee-b/inventory.toml"},
	}
	for _, tt := range tests {
		if got := PathFor(tt.rbeeHome); got != tt.want {
			t.Errorf("PathFor(%q) = %q, want %q", tt.rbeeHome, got, tt.want)
		}
	}
	t.Setenv("RBEE_INVENTORY", "/etc/rbee/shared.toml")
	if got := PathFor("/srv/rbee-a"); got != "/etc/rbee/shared.toml" {
		t.Errorf("with RBEE_INVENTORY: %q", got)
	}
}
