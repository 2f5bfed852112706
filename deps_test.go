package rbee_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies keeps the binaries' dependencies pointed one way: the
// keeper never links NVML, the inference engine or the worker supervisor,
// the hive agent never links CLI or TOML code, the worker stays pure Go.
func TestDependencies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pkg       string
		cgo       string
		forbidden []string
	}{
		{"./cmd/rbee", "0", []string{"github.com/NVIDIA/go-nvml", "github.com/hybridgroup/yzma", "github.com/rbee-dev/rbee/llm", "github.com/rbee-dev/rbee/gpu", "github.com/rbee-dev/rbee/agent", "github.com/rbee-dev/rbee/supervisor"}},
		{"./cmd/rbee-hive", "1", []string{"github.com/alecthomas/kong", "github.com/BurntSushi/toml", "github.com/hybridgroup/yzma", "github.com/rbee-dev/rbee/llm", "github.com/rbee-dev/rbee/queen"}},
		{"./cmd/rbee-worker", "0", []string{"github.com/NVIDIA/go-nvml", "github.com/rbee-dev/rbee/catalog", "modernc.org/sqlite", "github.com/rbee-dev/rbee/queen", "github.com/rbee-dev/rbee/agent", "github.com/rbee-dev/rbee/supervisor"}},
	}
	for _, tt := range tests {
		t.Run(tt.pkg, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command("go", "list", "-deps", tt.pkg)
			cmd.Env = append(cmd.Environ(), "CGO_ENABLED="+tt.cgo)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("go list: %v\n%s", err, out)
			}
			deps := map[string]bool{}
			for _, d := range strings.Fields(string(out)) {
				deps[d] = true
			}
			if len(deps) < 10 {
				t.Fatalf("go list found only %d packages: %s", len(deps), out)
			}
			for _, f := range tt.forbidden {
				for d := range deps {
					if d == f || strings.HasPrefix(d, f+"/") {
						t.Errorf("%s depends on %s", tt.pkg, d)
					}
				}
			}
		})
	}
}

// TestQueenRooms keeps the queen's rooms apart: the door and the split
// reach the hives through the fleet and never each other, the fleet knows
// neither, and nothing below the queen imports the queen itself.
func TestQueenRooms(t *testing.T) {
	t.Parallel()
	const q = "github.com/rbee-dev/rbee/queen"
	tests := []struct {
		pkg       string
		forbidden []string // exact import paths
	}{
		{"./queen/door", []string{q, q + "/split"}},
		{"./queen/split", []string{q, q + "/door"}},
		{"./queen/fleet", []string{q, q + "/door", q + "/split"}},
		{"./queen/internal/reply", []string{q, q + "/door", q + "/split", q + "/fleet"}},
	}
	for _, tt := range tests {
		t.Run(tt.pkg, func(t *testing.T) {
			t.Parallel()
			out, err := exec.Command("go", "list", "-deps", tt.pkg).CombinedOutput()
			if err != nil {
				t.Fatalf("go list: %v\n%s", err, out)
			}
			deps := strings.Fields(string(out))
			if len(deps) < 10 {
				t.Fatalf("go list found only %d packages: %s", len(deps), out)
			}
			for _, d := range deps {
				for _, f := range tt.forbidden {
					if d == f {
						t.Errorf("%s depends on %s", tt.pkg, d)
					}
				}
			}
		})
	}
}
