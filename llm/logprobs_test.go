package llm

import (
	"math"
	"testing"

	"github.com/hybridgroup/yzma/pkg/llama"
)

func TestLogprobs(t *testing.T) {
	logits := []float32{1, 3, 2, 3, -1}
	var z float64
	for _, l := range logits {
		z += math.Exp(float64(l))
	}
	lp := func(l float32) float32 { return float32(float64(l) - math.Log(z)) }
	tests := []struct {
		name string
		tok  llama.Token
		n    int
		top  []llama.Token
	}{
		{"none", 2, 0, nil},
		{"two, ties by id", 4, 2, []llama.Token{1, 3}},
		{"three", 0, 3, []llama.Token{1, 3, 2}},
		{"more than the vocabulary", 0, 9, []llama.Token{1, 3, 2, 0, 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := logprobs(logits, tt.tok, tt.n)
			if math.Abs(float64(got.logprob-lp(logits[tt.tok]))) > 1e-6 {
				t.Errorf("logprob = %g, want %g", got.logprob, lp(logits[tt.tok]))
			}
			if len(got.top) != len(tt.top) {
				t.Fatalf("got %d top, want %d: %+v", len(got.top), len(tt.top), got.top)
			}
			for i, tok := range tt.top {
				if got.top[i].tok != tok || math.Abs(float64(got.top[i].logprob-lp(logits[tok]))) > 1e-6 {
					t.Errorf("top[%d] = %+v, want token %d logprob %g", i, got.top[i], tok, lp(logits[tok]))
				}
			}
		})
	}
}
