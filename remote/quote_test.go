package remote

import (
	"errors"
	"testing"
)

func TestQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "''"},
		{"plain", "'plain'"},
		{"a b", "'a b'"},
		{"it's", `'it'\''s'`},
		{"$(touch x)", "'$(touch x)'"},
		{"`id`", "'`id`'"},
		{"*", "'*'"},
		{"~/models/x.gguf", "~/'models/x.gguf'"},
		{"~/", "~/''"},
		{"~user/x", "'~user/x'"},
		{"a~/b", "'a~/b'"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := Quote(tt.in); got != tt.want {
				t.Errorf("Quote(%q) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
	if got, want := QuoteArgs([]string{"printf", "%s\n", "a'b"}), `'printf' '%s`+"\n"+`' 'a'\''b'`; got != want {
		t.Errorf("QuoteArgs = %s, want %s", got, want)
	}
}

func TestCommandLineRefuses(t *testing.T) {
	tests := []struct {
		name string
		argv []string
	}{
		{"empty", nil},
		{"nul", []string{"echo", "a\x00b"}},
		{"newline", []string{"sh", "-c", "true\ntouch x"}},
		{"carriage return", []string{"echo", "a\rb"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := commandLine(tt.argv)
			if !errors.Is(err, ErrUnsafeArgument) {
				t.Errorf("got %v, want ErrUnsafeArgument", err)
			}
		})
	}
}
