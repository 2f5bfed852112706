package llm

import (
	"os"
	"strings"
	"testing"
)

func TestTextStream(t *testing.T) {
	tests := []struct {
		name     string
		pieces   []string
		stops    []string
		want     []string // emitted pieces
		stopped  bool
		flushOut string
	}{
		{name: "plain", pieces: []string{"ab", "c"}, want: []string{"ab", "c"}},
		{name: "utf8 split", pieces: []string{"\xe2", "\x82", "\xac!"}, want: []string{"€!"}},
		{name: "utf8 4 bytes split", pieces: []string{"a\xf0\x9f", "\x98\x80"}, want: []string{"a", "😀"}},
		{name: "invalid byte", pieces: []string{"a\xff", "b"}, want: []string{"a\uFFFD", "b"}},
		{name: "dangling at end", pieces: []string{"x\xe2\x82"}, want: []string{"x"}, flushOut: "\uFFFD"},
		{name: "stop in one piece", pieces: []string{"abcSTOPdef"}, stops: []string{"STOP"}, want: []string{"abc"}, stopped: true},
		{name: "stop across pieces", pieces: []string{"ab", "S", "TO", "P", "x"}, stops: []string{"STOP"}, want: []string{"ab"}, stopped: true},
		{name: "false start released", pieces: []string{"ab", "ST", "x"}, stops: []string{"STOP"}, want: []string{"ab", "STx"}},
		{name: "earliest of two", pieces: []string{"1234"}, stops: []string{"34", "23"}, want: []string{"1"}, stopped: true},
		{name: "held at end flushed", pieces: []string{"abS"}, stops: []string{"STOP"}, want: []string{"ab"}, flushOut: "S"},
		{name: "stop at start", pieces: []string{"\n\nx"}, stops: []string{"\n\n"}, stopped: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			ts := newTextStream(tt.stops, func(s string) error { got = append(got, s); return nil })
			stopped := false
			for _, p := range tt.pieces {
				s, err := ts.write([]byte(p))
				if err != nil {
					t.Fatal(err)
				}
				if s {
					stopped = true
					break
				}
			}
			if stopped != tt.stopped {
				t.Errorf("stopped = %v, want %v", stopped, tt.stopped)
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("emitted %q, want %q", got, tt.want)
			}
			got = nil
			if err := ts.flush(); err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, "") != tt.flushOut {
				t.Errorf("flush emitted %q, want %q", got, tt.flushOut)
			}
		})
	}
}

func TestCheckGGUF(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := dir + "/" + name
		if err := writeFile(p, b); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, path, want string
	}{
		{"missing", dir + "/none.gguf", "no such file"},
		{"directory", dir, "is a directory"},
		{"short", write("short", []byte("GG")), "not a GGUF file"},
		{"wrong magic", write("text", []byte("hello world, not a model")), "no GGUF magic"},
		{"version", write("v9", []byte("GGUF\x09\x00\x00\x00")), "version 9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckGGUF(tt.path)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if err := CheckGGUF(write("ok", []byte("GGUF\x03\x00\x00\x00rest"))); err != nil {
		t.Errorf("valid header refused: %v", err)
	}
}

func writeFile(p string, b []byte) error { return os.WriteFile(p, b, 0o644) }
