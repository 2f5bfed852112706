package llm

import (
	"testing"

	"github.com/hybridgroup/yzma/pkg/llama"
)

func toks(s string) []llama.Token {
	out := []llama.Token{1} // BOS
	for _, b := range []byte(s) {
		out = append(out, llama.Token(b))
	}
	return out
}

func TestTakeBest(t *testing.T) {
	tests := []struct {
		name   string
		caches []string // slot i's cached text; "-" = empty
		prompt string
		want   int
	}{
		{"all empty: lowest id", []string{"-", "-", "-"}, "abc", 0},
		{"empty beats an unrelated cache", []string{"xyz", "-", "-"}, "abc", 1},
		{"longest useful prefix", []string{"abcdef", "abcdefghij", "-"}, "abcdefghijkl", 1},
		{"whole cache is a prefix: reuse", []string{"ab", "-"}, "abcdefghijklmnop", 0},
		{"short shared prefix does not evict", []string{"abxxxxxxxx", "-"}, "abyyyyyyyy", 1},
		{"half the prompt shared: reuse", []string{"abcdexxxxx", "-"}, "abcdeyyyyy", 0},
		{"no empty slot: lowest id", []string{"zzz", "yyy", "xxx"}, "abc", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &Model{canReuse: true}
			for i, c := range tt.caches {
				s := &Slot{ID: i, m: m, seq: []llama.SeqId{llama.SeqId(i)}}
				if c != "-" {
					s.cache = toks(c)
				}
				m.slots = append(m.slots, s)
				m.free = append(m.free, s)
			}
			if got := m.takeBest(toks(tt.prompt)); got.ID != tt.want {
				t.Errorf("got slot %d, want %d", got.ID, tt.want)
			}
			if len(m.free) != len(tt.caches)-1 {
				t.Errorf("free list has %d slots, want %d", len(m.free), len(tt.caches)-1)
			}
		})
	}
}

func TestCommonPrefix(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{{"", "", 1}, {"abc", "abd", 3}, {"abc", "abcdef", 4}, {"x", "y", 1}} {
		if got := commonPrefix(toks(tt.a), toks(tt.b)); got != tt.want {
			t.Errorf("commonPrefix(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}
