package download

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/rbee-dev/rbee/internal/testmodel"
	"github.com/rbee-dev/rbee/modelfile"
)

// A server that ignores byte ranges (Python's http.server, simple
// mirrors): the header is read from the start of a plain download, which
// is dropped there, and the model is then fetched whole, even after a cut.
func TestWithoutByteRanges(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	if _, err := testmodel.Random(testmodel.Small).WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	const file = "org/tiny/random-3m-F32.gguf"
	f := newFixture(t, map[string][]byte{file: data})
	f.fake.NoRanges()

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
		t.Fatalf("Estimate from a server without ranges: %v", err)
	}
	if weights != info.WeightsBytes || kv != info.KVBytesPerTok || ctxTrain != info.CtxTrain {
		t.Errorf("got weights %d, KV/token %d, ctx %d; want %d, %d, %d", weights, kv, ctxTrain, info.WeightsBytes, info.KVBytesPerTok, info.CtxTrain)
	}
	if served := f.fake.BytesServed(file); served >= int64(len(data))/2 {
		t.Errorf("reading the header took %d of %d bytes: the download was not dropped", served, len(data))
	}

	f.fake.CutOnce(file, 40)
	p, sum, err := f.store.Fetch(t.Context(), f.hub, mustRef(t, "hf:"+file), fast)
	if err != nil {
		t.Fatalf("Fetch from a server without ranges, cut once: %v", err)
	}
	if got, err := modelfile.Hash(t.Context(), p); err != nil || got != sum {
		t.Errorf("fetched file hashes to %s (%v), want %s", got, err, sum)
	}
}
