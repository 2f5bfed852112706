package download

import (
	"errors"
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	t.Parallel()
	sized := func(n int) []byte { return make([]byte, n) }
	f := newFixture(t, map[string][]byte{
		"org/multi/README.md":                      []byte("# multi"),
		"org/multi/model-Q2_K.gguf":                sized(10),
		"org/multi/model-Q4_K_S.gguf":              sized(25),
		"org/multi/model-Q4_K_M.gguf":              sized(30),
		"org/multi/model-Q8_0.gguf":                sized(60),
		"org/multi/model-F16.gguf":                 sized(100),
		"org/multi/mmproj-model-f16.gguf":          sized(5),
		"org/five/m-Q5_K_M.gguf":                   sized(50),
		"org/five/m-Q8_0.gguf":                     sized(80),
		"org/odd/a-IQ3_XXS.gguf":                   sized(20),
		"org/odd/a-F16.gguf":                       sized(100),
		"org/odd/a-Q6_K.gguf":                      sized(50),
		"org/split/big-Q4_K_M-00001-of-00002.gguf": sized(40),
		"org/split/big-Q4_K_M-00002-of-00002.gguf": sized(30),
		"org/sub/Q4_K_M/m-Q4_K_M.gguf":             sized(30),
		"org/sub/Q8_0/m-Q8_0.gguf":                 sized(60),
		"org/nogguf/README.md":                     []byte("nothing here"),
		"org/nogguf/model.safetensors":             sized(10),
	})
	tests := []struct {
		ref      string
		wantFile string
		wantErr  []string // substrings of the error
	}{
		{ref: "hf:org/multi", wantFile: "model-Q4_K_M.gguf"},
		{ref: "hf:org/multi:q8_0", wantFile: "model-Q8_0.gguf"},
		{ref: "hf:org/multi:Q4_K_S", wantFile: "model-Q4_K_S.gguf"},
		{ref: "hf:org/multi:Q4_K", wantFile: "model-Q4_K_S.gguf"}, // both start with it: the smaller
		{ref: "hf:org/multi:F16", wantFile: "model-F16.gguf"},     // not the mmproj's f16
		{ref: "hf:org/multi@v2", wantFile: "model-Q4_K_M.gguf"},
		{ref: "hf:org/five", wantFile: "m-Q5_K_M.gguf"},
		{ref: "hf:org/odd", wantFile: "a-IQ3_XXS.gguf"}, // no preferred quant: the smallest
		{ref: "hf:org/split", wantFile: "big-Q4_K_M-00001-of-00002.gguf"},
		{ref: "hf:org/sub", wantFile: "Q4_K_M/m-Q4_K_M.gguf"},
		{ref: "hf:org/sub:Q8_0", wantFile: "Q8_0/m-Q8_0.gguf"},
		{ref: "hf:org/multi/model-Q2_K.gguf", wantFile: "model-Q2_K.gguf"}, // a named file stays
		{ref: "hf:org/multi:Q3_K_L", wantErr: []string{`no .gguf file matches "Q3_K_L"`, "model-Q2_K.gguf", "model-Q8_0.gguf", "README.md"}},
		{ref: "hf:org/nogguf", wantErr: []string{"no .gguf model file", "README.md", "model.safetensors"}},
		{ref: "hf:org/missing", wantErr: []string{"hf:org/missing", "not found", "/api/models/org/missing/tree/main"}},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			t.Parallel()
			r := mustRef(t, tt.ref)
			got, err := f.hub.Resolve(t.Context(), r)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("Resolve(%s) = %+v, want an error", tt.ref, got)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("got error %q, want it to contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve(%s): %v", tt.ref, err)
			}
			if got.File != tt.wantFile {
				t.Errorf("Resolve(%s) picked %q, want %q", tt.ref, got.File, tt.wantFile)
			}
			if want := f.fake.ResolveURL(got.Repo+"/"+got.File, got.Revision); got.URL != want {
				t.Errorf("got URL %q, want %q", got.URL, want)
			}
		})
	}
	t.Run("missing repo is ErrNotFound", func(t *testing.T) {
		t.Parallel()
		_, err := f.hub.Resolve(t.Context(), mustRef(t, "hf:org/missing"))
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("got %v, want ErrNotFound", err)
		}
	})
}

func TestResolvePaginated(t *testing.T) {
	t.Parallel()
	files := map[string][]byte{}
	for _, name := range []string{"a.md", "b-Q2_K.gguf", "c-Q8_0.gguf", "d.txt", "e-F16.gguf", "z-Q4_K_M.gguf"} {
		files["org/paged/"+name] = make([]byte, 10)
	}
	f := newFixture(t, files)
	f.fake.PageSize(2)
	got, err := f.hub.Resolve(t.Context(), mustRef(t, "hf:org/paged"))
	if err != nil {
		t.Fatal(err)
	}
	if got.File != "z-Q4_K_M.gguf" {
		t.Errorf("picked %q, want the Q4_K_M on the last page", got.File)
	}
	var listings int
	for _, r := range f.fake.Requests() {
		if strings.HasPrefix(r.Path, "/api/models/") {
			listings++
		}
	}
	if listings != 3 {
		t.Errorf("got %d listing requests, want 3 pages", listings)
	}
}

func TestResolveGated(t *testing.T) {
	t.Parallel()
	f := newFixture(t, map[string][]byte{"org/gated/m-Q4_K_M.gguf": make([]byte, 10)})
	f.fake.Gate("org/gated", "secret")
	_, err := f.hub.Resolve(t.Context(), mustRef(t, "hf:org/gated"))
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "set HF_TOKEN") {
		t.Errorf("without a token: got %v, want ErrAuth saying to set HF_TOKEN", err)
	}
	h := &Hub{Endpoint: f.fake.URL, Token: "secret"}
	got, err := h.Resolve(t.Context(), mustRef(t, "hf:org/gated"))
	if err != nil || got.File != "m-Q4_K_M.gguf" {
		t.Errorf("with the token: got %+v, %v; want m-Q4_K_M.gguf", got, err)
	}
}
