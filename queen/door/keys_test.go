package door

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadAPIKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, text string
		mode       os.FileMode
		want       string // error text; "" = ok
	}{
		{"ok", "# comment\napp1 0123456789abcdef0123 m1,m2\napp2 fedcba98765432100123\n", 0o600, ""},
		{"others can read", "app1 0123456789abcdef0123\n", 0o644, "chmod 600"},
		{"short key", "app1 short\n", 0o600, "shorter than 16"},
		{"twice", "a 0123456789abcdef0123\na 0123456789abcdef0124\n", 0o600, "used twice"},
		{"empty", "# nothing\n", 0o600, "holds no key"},
		{"bad line", "a b c d\n", 0o600, ":1: want ID KEY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := filepath.Join(t.TempDir(), "keys")
			if err := os.WriteFile(p, []byte(tt.text), tt.mode); err != nil {
				t.Fatal(err)
			}
			keys, err := ReadAPIKeys(p)
			if tt.want == "" {
				if err != nil || len(keys) != 2 || keys[0].ID != "app1" || len(keys[0].Models) != 2 || len(keys[1].Models) != 0 {
					t.Fatalf("got %+v, %v", keys, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error saying %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "0123456789abcdef") {
				t.Errorf("the error shows a key: %v", err)
			}
		})
	}
}
