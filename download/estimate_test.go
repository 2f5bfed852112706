package download

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/internal/testmodel"
	"github.com/rbee-dev/rbee/modelfile"
)

func TestEstimateReadsHeaderOnly(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	if _, err := testmodel.Random(testmodel.Small).WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	const file = "org/tiny/random-3m-F32.gguf"
	f := newFixture(t, map[string][]byte{file: data, "org/tiny/notes.gguf": []byte("not a gguf at all, but long enough to be read")})
	f.fake.Gate("org/tiny", "secret")
	f.fake.SeparateCDN()
	f.hub.Token = "secret"

	// What the local inspector says about the same bytes.
	path := filepath.Join(t.TempDir(), "m.gguf")
	if err := testmodel.Random(testmodel.Small).WriteFile(path); err != nil {
		t.Fatal(err)
	}
	info, err := modelfile.Inspect(t.Context(), path, modelfile.Options{})
	if err != nil {
		t.Fatal(err)
	}

	weights, kv, ctxTrain, err := f.hub.Estimate(t.Context(), mustRef(t, "hf:"+file))
	if err != nil {
		t.Fatal(err)
	}
	if weights != info.WeightsBytes || kv != info.KVBytesPerTok || ctxTrain != info.CtxTrain {
		t.Errorf("got weights %d, KV/token %d, ctx %d; want %d, %d, %d (modelfile.Inspect)",
			weights, kv, ctxTrain, info.WeightsBytes, info.KVBytesPerTok, info.CtxTrain)
	}
	if params := uint64(testmodel.Small.Params()); weights != 4*params { // all F32
		t.Errorf("got weights %d, want 4*params = %d", weights, 4*params)
	}
	s := testmodel.Small
	if want := uint64(2 * s.Layers * s.Embd / s.Heads * s.HeadsKV * 2); kv != want {
		t.Errorf("got KV bytes per token %d, want 2*layers*n_embd_kv*2 = %d", kv, want)
	}
	if ctxTrain != s.CtxTrain {
		t.Errorf("got ctx %d, want %d", ctxTrain, s.CtxTrain)
	}
	served := f.fake.BytesServed(file)
	if served*20 >= int64(len(data)) {
		t.Errorf("fetched %d of %d bytes (%.1f%%), want under 5%%", served, len(data), 100*float64(served)/float64(len(data)))
	}
	t.Logf("read the header of a %d-byte file with %d bytes (%.2f%%)", len(data), served, 100*float64(served)/float64(len(data)))
	for _, r := range f.fake.Requests() {
		if r.Server == "cdn" && r.Auth != "" {
			t.Errorf("CDN request %s %s had Authorization %q, want none", r.Method, r.Path, r.Auth)
		}
	}

	_, _, _, err = f.hub.Estimate(t.Context(), mustRef(t, "hf:org/tiny/notes.gguf"))
	if err == nil || !strings.Contains(err.Error(), "hf:org/tiny/notes.gguf") {
		t.Errorf("Estimate of a non-GGUF: got %v, want an error naming the ref", err)
	}
	t.Logf("non-GGUF: %v", err)
}

func TestEstimateSplitModel(t *testing.T) {
	t.Parallel()
	var part1, part2 bytes.Buffer
	if _, err := testmodel.Random(testmodel.Small).WriteTo(&part1); err != nil {
		t.Fatal(err)
	}
	other := testmodel.Small
	other.RandSeed++
	if _, err := testmodel.Random(other).WriteTo(&part2); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, map[string][]byte{
		"org/split/m-00001-of-00002.gguf": part1.Bytes(),
		"org/split/m-00002-of-00002.gguf": part2.Bytes(),
	})
	var want uint64
	for i, part := range []*bytes.Buffer{&part1, &part2} {
		path := filepath.Join(t.TempDir(), fmt.Sprintf("p%d.gguf", i))
		if err := os.WriteFile(path, part.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		info, err := modelfile.Inspect(t.Context(), path, modelfile.Options{})
		if err != nil {
			t.Fatal(err)
		}
		want += info.WeightsBytes
	}
	// Through the hub's redirect, and from a URL that names the part itself
	// (the parser then reads the siblings on its own): the same sum.
	for _, ref := range []string{"hf:org/split", f.fake.PlainURL("org/split/m-00001-of-00002.gguf")} {
		weights, _, ctxTrain, err := f.hub.Estimate(t.Context(), mustRef(t, ref))
		if err != nil {
			t.Fatalf("Estimate(%s): %v", ref, err)
		}
		if weights != want || ctxTrain != testmodel.Small.CtxTrain {
			t.Errorf("Estimate(%s) = weights %d, ctx %d; want %d (both parts), %d", ref, weights, ctxTrain, want, testmodel.Small.CtxTrain)
		}
	}
}
