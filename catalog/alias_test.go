package catalog

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidAlias(t *testing.T) {
	for _, ok := range []string{"qwen", "qwen2.5-0.5b", "Q8_0", "7b", "a..b", strings.Repeat("x", MaxAlias)} {
		if err := ValidAlias(ok); err != nil {
			t.Errorf("ValidAlias(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "../../x", "/etc/passwd", "a/b", "x\ny", "\x1b[31mred", "a\x00b", "sha256:1234", "-rf", ".hidden", "_x", "a b", "ü", strings.Repeat("x", MaxAlias+1)} {
		if err := ValidAlias(bad); !errors.Is(err, ErrBadAlias) {
			t.Errorf("ValidAlias(%q) = %v, want ErrBadAlias", bad, err)
		}
	}
}

// TestAddModelRefusesBadAlias: the catalog stores no alias outside the set,
// whoever asks.
func TestAddModelRefusesBadAlias(t *testing.T) {
	h, err := OpenHive(context.Background(), filepath.Join(t.TempDir(), "hive.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, bad := range []string{"../../x", "/etc/passwd", "x\ny", "\x1b[2J", "a\x00b"} {
		_, err := h.AddModel(context.Background(), Model{Path: "/m/a.gguf", SHA256: strings.Repeat("ab", 32), Alias: bad})
		if !errors.Is(err, ErrBadAlias) {
			t.Errorf("AddModel with alias %q: got %v, want ErrBadAlias", bad, err)
		}
	}
	if ms, _ := h.Models(context.Background()); len(ms) != 0 {
		t.Errorf("refused models were stored: %+v", ms)
	}
}

// FuzzAlias: an alias the catalog accepts is safe wherever it is used: as a
// file name part, on a terminal, in a command line.
func FuzzAlias(f *testing.F) {
	for _, s := range []string{"qwen", "../../x", "/etc/passwd", "x\ny", "\x1b[31m", "a\x00b", "sha256:ab", "-x", "ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidAlias(s) != nil {
			return
		}
		if s == "" || len(s) > MaxAlias || strings.ContainsAny(s, "/\\:\x00\n\r\t \x1b$`'\"") || strings.HasPrefix(s, "-") || strings.HasPrefix(s, ".") {
			t.Fatalf("ValidAlias accepted %q", s)
		}
		if filepath.Base(s) != s || filepath.Clean(s) != s {
			t.Fatalf("alias %q is not one plain path element", s)
		}
	})
}
