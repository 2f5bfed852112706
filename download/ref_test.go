package download

import (
	"errors"
	"strings"
	"testing"
)

func TestParseRef(t *testing.T) {
	t.Parallel()
	ep := DefaultEndpoint
	tests := []struct {
		in      string
		want    Ref
		notRef  bool
		wantErr string // substring of the error; "" for success
	}{
		{in: "https://example.com/models/x.gguf", want: Ref{Kind: KindURL, URL: "https://example.com/models/x.gguf"}},
		{in: "https://cdn.example.com/x.gguf?sig=abc&exp=1", want: Ref{Kind: KindURL, URL: "https://cdn.example.com/x.gguf?sig=abc&exp=1"}},
		{in: "http://127.0.0.1:8080/x.gguf", want: Ref{Kind: KindURL, URL: "http://127.0.0.1:8080/x.gguf"}},
		{in: "http://localhost/x.gguf", want: Ref{Kind: KindURL, URL: "http://localhost/x.gguf"}},
		{in: "http://[::1]:9/x.gguf", want: Ref{Kind: KindURL, URL: "http://[::1]:9/x.gguf"}},
		{in: "hf:TheOrg/the-repo/model-Q4_K_M.gguf", want: Ref{Kind: KindHF, Repo: "TheOrg/the-repo", File: "model-Q4_K_M.gguf", Revision: "main",
			URL: ep + "/TheOrg/the-repo/resolve/main/model-Q4_K_M.gguf"}},
		{in: "hf:org/repo/sub/dir/m.gguf", want: Ref{Kind: KindHF, Repo: "org/repo", File: "sub/dir/m.gguf", Revision: "main",
			URL: ep + "/org/repo/resolve/main/sub/dir/m.gguf"}},
		{in: "hf:org/repo", want: Ref{Kind: KindHF, Repo: "org/repo", Revision: "main"}},
		{in: "hf:org/repo:Q4_K_M", want: Ref{Kind: KindHF, Repo: "org/repo", Revision: "main", Quant: "Q4_K_M"}},
		{in: "hf:org/repo@v1.2:q8_0", want: Ref{Kind: KindHF, Repo: "org/repo", Revision: "v1.2", Quant: "q8_0"}},
		{in: "hf:org/repo@abc123/m.gguf", want: Ref{Kind: KindHF, Repo: "org/repo", Revision: "abc123", File: "m.gguf",
			URL: ep + "/org/repo/resolve/abc123/m.gguf"}},
		{in: "HF:org/repo", want: Ref{Kind: KindHF, Repo: "org/repo", Revision: "main"}},

		// Local paths.
		{in: "model.gguf", notRef: true},
		{in: "./models/x.gguf", notRef: true},
		{in: "/abs/path/x.gguf", notRef: true},
		{in: "dir/with://colon.gguf", notRef: true},
		{in: "", notRef: true},

		// Refusals.
		{in: "http://example.com/x.gguf", wantErr: "plain http is refused"},
		{in: "http://10.0.0.1/x.gguf", wantErr: "plain http is refused"},
		{in: "ftp://example.com/x.gguf", wantErr: "unsupported scheme"},
		{in: "https:///x.gguf", wantErr: "no host"},
		{in: "https://example.com/", wantErr: "no file"},
		{in: "https://user:pw@example.com/x.gguf", wantErr: "credentials"},
		{in: "https://example.com/a b.gguf", wantErr: "whitespace"},
		{in: "https://example.com/x.gguf\n", wantErr: "whitespace"},
		{in: "hf:org", wantErr: "want hf:ORG/REPO"},
		{in: "hf:org/", wantErr: "empty repo"},
		{in: "hf:/repo", wantErr: "empty org"},
		{in: "hf:org/repo/", wantErr: "empty file"},
		{in: "hf:org/repo/../x.gguf", wantErr: `".."`},
		{in: "hf:org/re..po", wantErr: `".."`},
		{in: "hf:org/repo/a..gguf", wantErr: `".."`},
		{in: "hf:org/repo/x.bin", wantErr: "not a .gguf"},
		{in: "hf:org/repo/x.gguf:Q4", wantErr: "contains ':'"},
		{in: "hf:org/repo:", wantErr: "bad quantization hint"},
		{in: "hf:org/repo:Q4-K", wantErr: "bad quantization hint"},
		{in: "hf:org/repo@", wantErr: "empty revision"},
		{in: "hf:org/repo@a;b", wantErr: "revision"},
		{in: "hf:org;rm/repo", wantErr: "org"},
		{in: "hf:org/re$po", wantErr: "repo"},
		{in: "hf:org/repo/x`id`.gguf", wantErr: "file"},
		{in: "hf:org/repo/x|y.gguf", wantErr: "file"},
		{in: "hf:org/repo/x&.gguf", wantErr: "file"},
		{in: "hf:org/repo/x y.gguf", wantErr: "whitespace"},
		{in: "hf:org/repo/x\ty.gguf", wantErr: "whitespace"},
		{in: "hf:org/repo/x\x00.gguf", wantErr: "control"},
		{in: "hf:org/repo/x\x1b.gguf", wantErr: "control"},
		{in: "hf:org/repo/x\\y.gguf", wantErr: "file"},
		{in: "hf:org/repo/x*.gguf", wantErr: "file"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseRef(tt.in)
			switch {
			case tt.notRef:
				if !errors.Is(err, ErrNotRef) {
					t.Fatalf("ParseRef(%q) = %+v, %v; want ErrNotRef", tt.in, got, err)
				}
				return
			case tt.wantErr != "":
				if err == nil || errors.Is(err, ErrNotRef) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseRef(%q) = %+v, %v; want an error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			case err != nil:
				t.Fatalf("ParseRef(%q): %v", tt.in, err)
			}
			tt.want.Raw = tt.in
			if got != tt.want {
				t.Errorf("ParseRef(%q)\n got %+v\nwant %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseRefEndpointFromEnv(t *testing.T) {
	t.Setenv("HF_ENDPOINT", "https://mirror.example/")
	got, err := ParseRef("hf:org/repo/m.gguf")
	if err != nil {
		t.Fatal(err)
	}
	if want := "https://mirror.example/org/repo/resolve/main/m.gguf"; got.URL != want {
		t.Errorf("got URL %q, want %q", got.URL, want)
	}
	// A Hub's own endpoint wins over the one the ref was parsed with.
	r, err := (&Hub{Endpoint: "http://127.0.0.1:1"}).Resolve(t.Context(), got)
	if err != nil {
		t.Fatal(err)
	}
	if want := "http://127.0.0.1:1/org/repo/resolve/main/m.gguf"; r.URL != want {
		t.Errorf("got resolved URL %q, want %q", r.URL, want)
	}
}
