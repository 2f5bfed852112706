package catalog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func newHive(t testing.TB) *HiveDB {
	t.Helper()
	return openHive(t, filepath.Join(t.TempDir(), "hive.db"))
}

// sha is a distinct, valid SHA-256 hex for each n.
func sha(n int) string {
	s := sha256.Sum256(fmt.Appendf(nil, "model %d", n))
	return hex.EncodeToString(s[:])
}

func tinyLlama() Model {
	return Model{
		Ref: "hf:TheBloke/TinyLlama-1.1B-GGUF/tinyllama.Q4_K_M.gguf", Alias: "tiny",
		Path: "/var/lib/rbee/models/ab/abcdef.gguf", Size: 668_788_096, SHA256: sha(1),
		Format: "gguf", Arch: "llama", Quant: "Q4_K_M", Params: 1_100_048_384, CtxTrain: 2048,
		WeightsBytes: 636_000_000, KVBytesPerTok: 22_528,
		Added: ms(1_700_000_000_000), LastUsed: ms(1_700_000_100_000),
	}
}

func TestModelRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	h := newHive(t)
	in := tinyLlama()
	got, err := h.AddModel(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	want := in
	want.ID = "sha256:" + in.SHA256[:16]
	if got != want {
		t.Errorf("AddModel:\ngot  %+v\nwant %+v", got, want)
	}
	if got, err := h.Model(ctx, want.ID); err != nil || got != want {
		t.Errorf("Model:\ngot  %+v, %v\nwant %+v", got, err, want)
	}
	ms, err := h.Models(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0] != want {
		t.Errorf("Models: got %+v, want [%+v]", ms, want)
	}
	if id := ModelID("SHA256:" + strings.ToUpper(in.SHA256)); id != want.ID {
		t.Errorf("ModelID: got %s, want %s", id, want.ID)
	}
}

func TestModelDefaults(t *testing.T) {
	t.Parallel()
	h := newHive(t)
	before := time.Now().Truncate(time.Millisecond)
	m, err := h.AddModel(t.Context(), Model{Path: "/m/x.gguf", SHA256: "SHA256:" + strings.ToUpper(sha(3))})
	if err != nil {
		t.Fatal(err)
	}
	if m.SHA256 != sha(3) {
		t.Errorf("sha256: got %s, want it lower-case without prefix: %s", m.SHA256, sha(3))
	}
	if m.Added.Before(before) || m.Added.After(time.Now()) {
		t.Errorf("added: got %v, want about now", m.Added)
	}
	if !m.LastUsed.IsZero() || m.Alias != "" {
		t.Errorf("got last used %v, alias %q; want never, none", m.LastUsed, m.Alias)
	}
}

func TestModelLookup(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	h := newHive(t)
	a, err := h.AddModel(ctx, tinyLlama())
	if err != nil {
		t.Fatal(err)
	}
	// b's alias is r's ref, and its ref is a's path: the earlier kind of key
	// wins. (An alias cannot be a path or an hf: ref: ValidAlias.)
	r, err := h.AddModel(ctx, Model{Path: "/m/r.gguf", SHA256: sha(6), Ref: "shadow.gguf"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := h.AddModel(ctx, Model{Path: "/m/b.gguf", SHA256: sha(2), Alias: r.Ref, Ref: a.Path})
	if err != nil {
		t.Fatal(err)
	}
	// c shares b's ref; the more recently used wins.
	c, err := h.AddModel(ctx, Model{Path: "/m/c.gguf", SHA256: sha(3), Ref: "./shared.gguf", LastUsed: ms(10)})
	if err != nil {
		t.Fatal(err)
	}
	d, err := h.AddModel(ctx, Model{Path: "/m/d.gguf", SHA256: sha(4), Ref: "./shared.gguf", LastUsed: ms(20)})
	if err != nil {
		t.Fatal(err)
	}
	e, err := h.AddModel(ctx, Model{Path: "/m/e.gguf", SHA256: sha(5), Ref: "https://example.com/e.gguf"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, key string
		want      Model
	}{
		{"id", a.ID, a},
		{"sha256", a.SHA256, a},
		{"sha256 with prefix", "sha256:" + a.SHA256, a},
		{"sha256 upper case", strings.ToUpper(a.SHA256), a},
		{"alias", "tiny", a},
		{"alias over ref", r.Ref, b},
		{"ref over path", a.Path, b},
		{"ref", e.Ref, e},
		{"path", "/m/c.gguf", c},
		{"shared ref, most recently used", "./shared.gguf", d},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := h.Model(ctx, tt.key)
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != tt.want.ID {
				t.Errorf("Model(%q): got %s, want %s", tt.key, got.ID, tt.want.ID)
			}
		})
	}
	for _, key := range []string{"", "nope", "sha256:", a.SHA256[:20]} {
		if _, err := h.Model(ctx, key); !errors.Is(err, ErrNotFound) {
			t.Errorf("Model(%q): got %v, want ErrNotFound", key, err)
		}
	}
}

func TestModelUpsertBySHA(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	h := newHive(t)
	first, err := h.AddModel(ctx, tinyLlama())
	if err != nil {
		t.Fatal(err)
	}
	// Same content pushed again from elsewhere, without metadata.
	second, err := h.AddModel(ctx, Model{Path: "/other/place.gguf", Ref: "./tiny.gguf", SHA256: first.SHA256, Added: ms(1)})
	if err != nil {
		t.Fatal(err)
	}
	want := first
	want.Path, want.Ref = "/other/place.gguf", "./tiny.gguf"
	if second != want {
		t.Errorf("after re-add:\ngot  %+v\nwant %+v", second, want)
	}
	ms, err := h.Models(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 {
		t.Fatalf("models: got %d, want 1", len(ms))
	}
	if ms[0] != want {
		t.Errorf("listed:\ngot  %+v\nwant %+v", ms[0], want)
	}
	// A new alias for the same content replaces the old one.
	third, err := h.AddModel(ctx, Model{SHA256: first.SHA256, Alias: "tinyllama"})
	if err != nil {
		t.Fatal(err)
	}
	if third.Alias != "tinyllama" || third.Path != want.Path {
		t.Errorf("alias update: got alias %q path %q, want tinyllama %s", third.Alias, third.Path, want.Path)
	}
	if _, err := h.Model(ctx, "tiny"); !errors.Is(err, ErrNotFound) {
		t.Errorf("old alias: got %v, want ErrNotFound", err)
	}
}

func TestModelAliasConflict(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	h := newHive(t)
	a, err := h.AddModel(ctx, tinyLlama())
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.AddModel(ctx, Model{Path: "/m/b.gguf", SHA256: sha(2), Alias: "tiny"})
	if !errors.Is(err, ErrExists) {
		t.Fatalf("taken alias: got %v, want ErrExists", err)
	}
	if !strings.Contains(err.Error(), a.ID) {
		t.Errorf("error %q does not name the owner %s", err, a.ID)
	}
	if ms, _ := h.Models(ctx); len(ms) != 1 {
		t.Errorf("models after conflict: got %d, want 1", len(ms))
	}
	// Re-adding the owner with its own alias is fine.
	if _, err := h.AddModel(ctx, Model{SHA256: a.SHA256, Alias: "tiny"}); err != nil {
		t.Errorf("re-add owner: %v", err)
	}
	// Models without aliases do not collide on the empty alias.
	for i := 10; i < 13; i++ {
		if _, err := h.AddModel(ctx, Model{Path: fmt.Sprintf("/m/%d.gguf", i), SHA256: sha(i)}); err != nil {
			t.Errorf("add without alias: %v", err)
		}
	}
}

func TestModelInvalid(t *testing.T) {
	t.Parallel()
	h := newHive(t)
	tests := []struct {
		name string
		m    Model
	}{
		{"no sha256", Model{Path: "/m/a.gguf"}},
		{"short sha256", Model{Path: "/m/a.gguf", SHA256: "abcd"}},
		{"non-hex sha256", Model{Path: "/m/a.gguf", SHA256: strings.Repeat("z", 64)}},
		{"relative path", Model{Path: "models/a.gguf", SHA256: sha(1)}},
		{"no path", Model{SHA256: sha(1)}},
		{"wrong id", Model{ID: "sha256:0000000000000000", Path: "/m/a.gguf", SHA256: sha(1)}},
		{"alias like an id", Model{Path: "/m/a.gguf", SHA256: sha(1), Alias: "sha256:1234"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.AddModel(t.Context(), tt.m)
			if err == nil || errors.Is(err, ErrExists) {
				t.Errorf("got %v, want a validation error", err)
			}
		})
	}
}

func TestModelsOrder(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	h := newHive(t)
	add := func(n int, added, used int64) Model {
		m := Model{Path: fmt.Sprintf("/m/%d.gguf", n), SHA256: sha(n), Added: ms(added)}
		if used != 0 {
			m.LastUsed = ms(used)
		}
		got, err := h.AddModel(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	old := add(1, 100, 0)
	newer := add(2, 200, 0)
	usedLong := add(3, 50, 300)
	usedRecent := add(4, 60, 400)
	check := func(want ...Model) {
		t.Helper()
		ms, err := h.Models(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got, wantIDs []string
		for _, m := range ms {
			got = append(got, m.Path)
		}
		for _, m := range want {
			wantIDs = append(wantIDs, m.Path)
		}
		if !reflect.DeepEqual(got, wantIDs) {
			t.Errorf("order: got %v, want %v", got, wantIDs)
		}
	}
	check(usedRecent, usedLong, newer, old)
	if err := h.TouchModel(ctx, old.ID, ms(500)); err != nil {
		t.Fatal(err)
	}
	check(old, usedRecent, usedLong, newer)
	got, err := h.Model(ctx, old.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !got.LastUsed.Equal(ms(500)) {
		t.Errorf("last used: got %v, want %v", got.LastUsed, ms(500))
	}
	if err := h.TouchModel(ctx, "sha256:0000000000000000", ms(1)); !errors.Is(err, ErrNotFound) {
		t.Errorf("touch missing: got %v, want ErrNotFound", err)
	}
}

func TestRemoveModel(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	h := newHive(t)
	a, err := h.AddModel(ctx, tinyLlama())
	if err != nil {
		t.Fatal(err)
	}
	b, err := h.AddModel(ctx, Model{Path: "/m/b.gguf", SHA256: sha(2)})
	if err != nil {
		t.Fatal(err)
	}
	got, err := h.RemoveModel(ctx, "tiny")
	if err != nil {
		t.Fatal(err)
	}
	if got != a {
		t.Errorf("removed:\ngot  %+v\nwant %+v", got, a)
	}
	for _, key := range []string{a.ID, "tiny", a.Path} {
		if _, err := h.Model(ctx, key); !errors.Is(err, ErrNotFound) {
			t.Errorf("Model(%q) after remove: got %v, want ErrNotFound", key, err)
		}
	}
	if _, err := h.RemoveModel(ctx, "tiny"); !errors.Is(err, ErrNotFound) {
		t.Errorf("remove twice: got %v, want ErrNotFound", err)
	}
	if _, err := h.Model(ctx, b.ID); err != nil {
		t.Errorf("other model: %v", err)
	}
	// The alias is free again.
	if _, err := h.AddModel(ctx, Model{SHA256: b.SHA256, Alias: "tiny"}); err != nil {
		t.Errorf("reuse alias: %v", err)
	}
}

// workerBinary finds a binary by type and version ("" = the most recently
// added of the type) in WorkerBinaries' answer.
func workerBinary(ctx context.Context, h *HiveDB, typ, version string) (WorkerBinary, error) {
	ws, err := h.WorkerBinaries(ctx)
	if err != nil {
		return WorkerBinary{}, err
	}
	for _, w := range ws { // the most recently added of each type first
		if w.Type == typ && (version == "" || w.Version == version) {
			return w, nil
		}
	}
	return WorkerBinary{}, ErrNotFound
}

func TestWorkerBinaryRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	h := newHive(t)
	in := WorkerBinary{Type: "engine-llama.cpp", Version: "0.5.0", Path: "/var/lib/rbee/engines/llama.cpp-0.5.0-cpu",
		SHA256: sha(1), Capabilities: []string{"cpu", "avx2"}, Added: ms(1000), LastUsed: ms(2000)}
	if err := h.AddWorkerBinary(ctx, in); err != nil {
		t.Fatal(err)
	}
	want := in
	want.ID = "engine-llama.cpp-0.5.0"
	got, err := workerBinary(ctx, h, in.Type, in.Version)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("WorkerBinary:\ngot  %+v\nwant %+v", got, want)
	}
	ws, err := h.WorkerBinaries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 || !reflect.DeepEqual(ws[0], want) {
		t.Errorf("WorkerBinaries: got %+v, want [%+v]", ws, want)
	}

	// Upsert by ID: new path and capabilities; Added stays, LastUsed only moves forward.
	upd := WorkerBinary{ID: want.ID, Type: in.Type, Version: in.Version, Path: "/new", Capabilities: []string{"cuda"},
		Added: ms(9999), LastUsed: ms(1500)}
	if err := h.AddWorkerBinary(ctx, upd); err != nil {
		t.Fatal(err)
	}
	want.Path, want.SHA256, want.Capabilities = "/new", "", []string{"cuda"}
	got, err = workerBinary(ctx, h, in.Type, in.Version)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("after upsert:\ngot  %+v\nwant %+v", got, want)
	}
}

func TestWorkerBinaryLatest(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	h := newHive(t)
	for _, w := range []WorkerBinary{
		{Type: "rbee-worker", Version: "0.1.0", Path: "/w/0.1.0", Added: ms(100)},
		{Type: "rbee-worker", Version: "0.10.0", Path: "/w/0.10.0", Added: ms(300)},
		{Type: "rbee-worker", Version: "0.2.0", Path: "/w/0.2.0", Added: ms(200)},
		{Type: "engine-llama.cpp", Version: "0.5.0", Path: "/e", Added: ms(400)},
		// Same millisecond as 0.10.0: the later insert counts as more recent.
		{Type: "rbee-worker", Version: "0.11.0", Path: "/w/0.11.0", Added: ms(300)},
	} {
		if err := h.AddWorkerBinary(ctx, w); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		typ, version, wantID string
	}{
		{"rbee-worker", "", "rbee-worker-0.11.0"},
		{"rbee-worker", "0.2.0", "rbee-worker-0.2.0"},
		{"engine-llama.cpp", "", "engine-llama.cpp-0.5.0"},
	}
	for _, tt := range tests {
		got, err := workerBinary(ctx, h, tt.typ, tt.version)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != tt.wantID {
			t.Errorf("WorkerBinary(%q, %q): got %s, want %s", tt.typ, tt.version, got.ID, tt.wantID)
		}
	}
	ws, err := h.WorkerBinaries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, w := range ws {
		ids = append(ids, w.ID)
	}
	want := []string{"engine-llama.cpp-0.5.0", "rbee-worker-0.11.0", "rbee-worker-0.10.0", "rbee-worker-0.2.0", "rbee-worker-0.1.0"}
	if !reflect.DeepEqual(ids, want) {
		t.Errorf("WorkerBinaries: got %v, want %v", ids, want)
	}
}

func TestWorkerBinaryMissingAndInvalid(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	h := newHive(t)
	if err := h.AddWorkerBinary(ctx, WorkerBinary{Type: "rbee-worker", Version: "1", Path: "/w"}); err != nil {
		t.Fatal(err)
	}
	notFound := []struct {
		name string
		err  error
	}{
		{"get version", func() error { _, err := workerBinary(ctx, h, "rbee-worker", "2"); return err }()},
		{"get type", func() error { _, err := workerBinary(ctx, h, "vllm", ""); return err }()},
		{"remove", h.RemoveWorkerBinary(ctx, "vllm-1")},
		{"touch", h.TouchWorkerBinary(ctx, "vllm-1", ms(1))},
	}
	for _, tt := range notFound {
		if !errors.Is(tt.err, ErrNotFound) {
			t.Errorf("%s: got %v, want ErrNotFound", tt.name, tt.err)
		}
	}
	for _, w := range []WorkerBinary{
		{Version: "1", Path: "/w"},
		{Type: "x", Path: "/w"},
		{Type: "x", Version: "1"},
		{ID: "y-1", Type: "x", Version: "1", Path: "/w"},
	} {
		if err := h.AddWorkerBinary(ctx, w); err == nil {
			t.Errorf("AddWorkerBinary(%+v): got no error", w)
		}
	}
}

func TestWorkerBinaryTouchRemove(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	h := newHive(t)
	w := WorkerBinary{Type: "rbee-worker", Version: "1", Path: "/w"}
	if err := h.AddWorkerBinary(ctx, w); err != nil {
		t.Fatal(err)
	}
	id := WorkerBinaryID(w.Type, w.Version)
	if err := h.TouchWorkerBinary(ctx, id, ms(42)); err != nil {
		t.Fatal(err)
	}
	got, err := workerBinary(ctx, h, w.Type, "")
	if err != nil {
		t.Fatal(err)
	}
	if !got.LastUsed.Equal(ms(42)) || got.Capabilities != nil {
		t.Errorf("got last used %v, capabilities %v; want %v, none", got.LastUsed, got.Capabilities, ms(42))
	}
	if err := h.RemoveWorkerBinary(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := workerBinary(ctx, h, w.Type, ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("after remove: got %v, want ErrNotFound", err)
	}
}

// TestModelChangedInPlace: a file changed in place is registered again
// under its new content; the entry of what it held before is stale and
// leaves, so a lookup by path finds the file as it is.
func TestModelChangedInPlace(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	h := newHive(t)
	old := Model{Ref: "/home/me/m.gguf", Path: "/home/me/m.gguf", Alias: "mine", Size: 10, SHA256: sha(1), LastUsed: ms(2_000_000_000_000)}
	if _, err := h.AddModel(ctx, old); err != nil {
		t.Fatal(err)
	}
	other := Model{Path: "/home/me/other.gguf", Size: 10, SHA256: sha(3)}
	if _, err := h.AddModel(ctx, other); err != nil {
		t.Fatal(err)
	}
	changed, err := h.AddModel(ctx, Model{Ref: old.Ref, Path: old.Path, Size: 12, SHA256: sha(2)})
	if err != nil {
		t.Fatal(err)
	}
	got, err := h.Model(ctx, old.Path)
	if err != nil || got.ID != changed.ID {
		t.Errorf("Model(path) = %s, %v; want the new content %s", got.ID, err, changed.ID)
	}
	if got, err := h.Model(ctx, "mine"); err != nil || got.ID != changed.ID {
		t.Errorf("Model(alias) = %s, %v; want the alias carried over to %s", got.ID, err, changed.ID)
	}
	if _, err := h.Model(ctx, ModelID(sha(1))); !errors.Is(err, ErrNotFound) {
		t.Errorf("the stale entry: got %v, want ErrNotFound", err)
	}
	all, _ := h.Models(ctx)
	if len(all) != 2 {
		t.Errorf("models: got %d, want 2 (the changed file, the other one): %+v", len(all), all)
	}
}
