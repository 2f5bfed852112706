package llm

import (
	"math"
	"testing"

	"github.com/hybridgroup/yzma/pkg/llama"

	"github.com/rbee-dev/rbee/internal/testenv"
	"github.com/rbee-dev/rbee/internal/testmodel"
)

// TestReuseIsTheSameComputation answers why a warm request can answer
// differently from a cold one: the reuse path (begin) keeps the cached
// prompt and decodes only the last prompt token, at its position, for its
// logits. Decoded so, the logits are the cold ones up to float noise (a
// batch of one sums in another order than a batch of twenty); a real
// fault of the path — an off-by-one that loses a cached token — moves
// them by orders of magnitude more (a token at a position past a gap, or
// over a stale tail left in the cache, is refused by llama_decode itself). On a random model whose
// logits are nearly flat, that noise can flip a greedy pick, so tests
// compare warm with warm and cold with cold.
func TestReuseIsTheSameComputation(t *testing.T) {
	dir, err := testenv.EngineDir()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err != nil {
		t.Fatal(err)
	}
	path, err := testenv.WriteModel(t.TempDir(), "random-3m.gguf", testmodel.Random(testmodel.Small))
	if err != nil {
		t.Fatal(err)
	}
	mp := llama.ModelDefaultParams()
	mp.SetCPUOnly()
	mdl, err := llama.ModelLoadFromFile(path, mp)
	if err != nil {
		t.Fatal(err)
	}
	defer llama.ModelFree(mdl)
	cp := llama.ContextDefaultParams()
	cp.NCtx, cp.NBatch, cp.NUbatch, cp.NSeqMax = 512, 512, 512, 1
	cp.NThreads, cp.NThreadsBatch = 2, 2
	lctx, err := llama.InitFromModel(mdl, cp)
	if err != nil || lctx == 0 {
		t.Fatalf("context: %v", err)
	}
	defer llama.Free(lctx)
	mem, err := llama.GetMemory(lctx)
	if err != nil {
		t.Fatal(err)
	}
	nVocab := int(llama.VocabNTokens(llama.ModelGetVocab(mdl)))
	prompt := toks("The quick brown fox") // BOS + 19 bytes: the prompt
	last := len(prompt) - 1
	batch := llama.BatchInit(512, 0, 1)
	defer llama.BatchFree(batch)
	seq := []llama.SeqId{0}
	// decode puts prompt[from:] at positions pos0… and returns the last
	// token's logits.
	decode := func(from, pos0 int) []float32 {
		t.Helper()
		batch.Clear()
		for i := from; i < len(prompt); i++ {
			if err := batch.Add(prompt[i], llama.Pos(pos0+i-from), seq, i == last); err != nil {
				t.Fatal(err)
			}
		}
		if rc, err := llama.Decode(lctx, batch); rc != 0 || err != nil {
			t.Fatalf("decode: %d %v", rc, err)
		}
		l, err := llama.GetLogitsIth(lctx, -1, nVocab)
		if err != nil {
			t.Fatal(err)
		}
		return append([]float32(nil), l...)
	}
	rm := func(from int) {
		if ok, err := llama.MemorySeqRm(mem, 0, llama.Pos(from), -1); !ok || err != nil {
			t.Fatalf("memory seq rm from %d: %v %v", from, ok, err)
		}
	}

	cold := decode(0, 0)
	rm(-1)
	if again := decode(0, 0); maxDiff(cold, again) != 0 {
		t.Fatalf("the same cold decode differs from itself by %g: not deterministic", maxDiff(cold, again))
	}
	rm(last) // begin's path: the prefix stays, the last token is decoded again
	warm := decode(last, last)
	rm(last - 1) // a fault the path could have: an off-by-one that loses a cached token
	shifted := decode(last, last-1)
	scale := maxAbs(cold)
	noise, wrongPos := maxDiff(cold, warm), maxDiff(cold, shifted)
	t.Logf("logits up to %.3g; warm differs by %.3g, with one cached token lost by %.3g; argmax cold %d warm %d",
		scale, noise, wrongPos, argmax(cold), argmax(warm))
	if noise > 1e-2*scale {
		t.Errorf("the warm logits differ by %g of %g: the reuse path computes something else", noise, scale)
	}
	if wrongPos < 50*noise {
		t.Errorf("a faulty reuse (%g) is not told apart from the noise (%g)", wrongPos, noise)
	}
}

func maxDiff(a, b []float32) float64 {
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

func maxAbs(a []float32) float64 {
	m := 0.0
	for _, v := range a {
		m = math.Max(m, math.Abs(float64(v)))
	}
	return m
}

func argmax(a []float32) int {
	best := 0
	for i, v := range a {
		if v > a[best] {
			best = i
		}
	}
	return best
}
