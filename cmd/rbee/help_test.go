package main

import (
	"strings"
	"testing"

	"github.com/alecthomas/kong"
)

// Every command but the queen's (and version, which has nothing to show)
// shows examples in its --help.
func TestHelpHasExamples(t *testing.T) {
	var c cli
	parser, err := kong.New(&c, kong.Name("rbee"), kong.Vars{"queen_addr": "127.0.0.1:7833", "home": "/home/u/.rbee", "version": "test"})
	if err != nil {
		t.Fatal(err)
	}
	var walk func(n *kong.Node)
	walk = func(n *kong.Node) {
		for _, child := range n.Children {
			if child.Type != kong.CommandNode {
				continue
			}
			path := child.FullPath()
			if strings.HasPrefix(path, "rbee queen") || path == "rbee version" {
				continue
			}
			if !strings.Contains(child.Detail, "Examples:") {
				t.Errorf("%s --help shows no examples", path)
			}
			walk(child)
		}
	}
	walk(parser.Model.Node)
}

func TestHiveAddTargets(t *testing.T) {
	c := hiveAddCmd{Targets: []string{"me@gpu-box.lan", "me@10.0.0.7:2222", "u@$(reboot)", "me@gpu-box:2200", "me@x:port"}}
	ts := c.targets()
	want := []struct {
		name string
		err  string // a part of the refusal; "" for none
	}{
		{"gpu-box", ""},
		{"10-0-0-7", ""},
		{"", "hive name"},
		{"gpu-box", "it would be named gpu-box, as me@gpu-box.lan is"},
		{"", "not a number"},
	}
	for i, w := range want {
		got := ts[i]
		switch {
		case w.err == "" && got.err != nil:
			t.Errorf("%s: got %v, want no error", got.target, got.err)
		case w.err != "" && (got.err == nil || !strings.Contains(got.err.Error(), w.err)):
			t.Errorf("%s: got %v, want an error containing %q", got.target, got.err, w.err)
		case w.err == "" && got.req.Name != w.name:
			t.Errorf("%s: got name %q, want %q", got.target, got.req.Name, w.name)
		}
	}
	if err := (&hiveAddCmd{Targets: []string{"a", "b"}, Name: "x"}).Validate(); err == nil {
		t.Error("--name with two targets: got no error")
	}
}
