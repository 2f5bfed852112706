package download

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

// FuzzParseRef: whatever is typed as a model, ParseRef never panics, and a
// reference it accepts is a URL with a host (https, or http to loopback) or
// an hf: reference with an ORG/REPO free of path tricks.
func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"hf:org/repo", "hf:org/repo/f.gguf", "hf:org/repo:Q8_0", "hf:org/repo@main/d/f.gguf",
		"https://example.com/x.gguf", "http://127.0.0.1:8000/x.gguf", "http://example.com/x.gguf", "./model.gguf",
		"hf:../../etc/passwd", "hf:org/repo/../../x.gguf", "hf:org/repo\n", "HF:Org/Repo", "https://[::1]:1/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRef(s)
		if err != nil {
			if errors.Is(err, ErrNotRef) && strings.HasPrefix(strings.ToLower(s), "hf:") {
				t.Fatalf("ParseRef(%q): an hf: reference taken for a path", s)
			}
			return
		}
		if r.Raw != s {
			t.Fatalf("ParseRef(%q): Raw = %q", s, r.Raw)
		}
		switch r.Kind {
		case KindHF:
			org, repo, ok := strings.Cut(r.Repo, "/")
			if !ok || org == "" || repo == "" || strings.Contains(repo, "/") {
				t.Fatalf("ParseRef(%q): repo %q is not ORG/REPO", s, r.Repo)
			}
			for _, part := range append(strings.Split(r.Repo, "/"), strings.Split(r.File, "/")...) {
				if part == ".." || part == "." {
					t.Fatalf("ParseRef(%q): %q in repo %q or file %q", s, part, r.Repo, r.File)
				}
			}
			if strings.ContainsAny(r.Repo+r.File+r.Revision+r.Quant, "\x00\n\r\\") {
				t.Fatalf("ParseRef(%q): control characters kept: %+v", s, r)
			}
		case KindURL:
			u, err := url.Parse(r.URL)
			if err != nil || u.Host == "" || u.Scheme != "https" && u.Scheme != "http" {
				t.Fatalf("ParseRef(%q): URL %q: %v", s, r.URL, err)
			}
			if u.Scheme == "http" && !isLoopback(u.Hostname()) {
				t.Fatalf("ParseRef(%q): plain http to %s", s, u.Hostname())
			}
		default:
			t.Fatalf("ParseRef(%q): kind %q", s, r.Kind)
		}
	})
}
