package testmodel

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/rbee-dev/rbee/internal/gguf"
)

// Token ids of the byte-level vocabulary shared by every test model.
const (
	TokenUnknown = 0
	TokenBOS     = 1
	TokenEOS     = 2
	tokenByte0   = 3   // <0x00>; byte b is token 3+b
	TokenSpace   = 259 // "▁", SentencePiece's escaped space
	VocabSize    = 260
)

// ByteToken returns the token id of byte b.
func ByteToken(b byte) int { return tokenByte0 + int(b) }

// Spec describes a llama-architecture model.
type Spec struct {
	Name     string
	Embd     int // embedding width; divisible by Heads
	FF       int // feed-forward width
	Layers   int
	Heads    int
	HeadsKV  int
	CtxTrain int
	ChatTmpl string // tokenizer.chat_template; empty for none
	// Tokens are user-defined tokens after the byte vocabulary (ids from
	// VocabSize on): a tool call's opening tag as one token, as real
	// models have it.
	Tokens []string
	// Control tokens come after Tokens: special tokens that llama.cpp
	// leaves out of text unless asked (Mistral's [TOOL_CALLS] is one).
	Control   []string
	RandSeed  uint64 // seed for random weights
	RandScale float32
}

// Params returns the model's parameter count.
func (s Spec) Params() int64 {
	embdKV := s.Embd / s.Heads * s.HeadsKV
	perLayer := 2*s.Embd*s.Embd + 2*s.Embd*embdKV + 3*s.Embd*s.FF + 2*s.Embd
	return int64(2*s.vocabSize()*s.Embd + s.Embd + s.Layers*perLayer)
}

// vocabSize is the number of tokens, with s.Tokens.
func (s Spec) vocabSize() int { return VocabSize + len(s.Tokens) + len(s.Control) }

// Standard specs. Small is for tests (about 3M parameters), Bench for
// benchmarks (about 75M). Row widths are multiples of 256 where a K-quant
// must apply.
var (
	Small = Spec{Name: "random-3m", Embd: 256, FF: 512, Layers: 5, Heads: 4, HeadsKV: 4, CtxTrain: 2048, RandSeed: 3, RandScale: 0.05}
	Bench = Spec{Name: "random-75m", Embd: 512, FF: 1536, Layers: 22, Heads: 8, HeadsKV: 8, CtxTrain: 2048, RandSeed: 75, RandScale: 0.05}
)

// vocab returns the byte-level SentencePiece vocabulary: <unk>, <s>, </s>,
// the 256 byte tokens and "▁" so that spaces round-trip as text.
func vocab(extra, control []string) (tokens []string, scores []float32, types []int32) {
	tokens = []string{"<unk>", "<s>", "</s>"}
	types = []int32{2, 3, 3} // unknown, control, control
	for b := 0; b < 256; b++ {
		tokens = append(tokens, fmt.Sprintf("<0x%02X>", b))
		types = append(types, 6) // byte
	}
	tokens = append(tokens, "\u2581")
	types = append(types, 1) // normal
	for _, t := range extra {
		tokens = append(tokens, t)
		types = append(types, 4) // user-defined
	}
	for _, t := range control {
		tokens = append(tokens, t)
		types = append(types, 3) // control
	}
	scores = make([]float32, len(tokens))
	return tokens, scores, types
}

func header(f *gguf.File, s Spec, desc string) {
	f.String("general.architecture", "llama")
	f.String("general.name", s.Name)
	f.String("general.description", desc)
	f.Uint32("general.file_type", 0) // all F32
	f.Uint32("general.alignment", gguf.Alignment)
	f.Uint32("llama.context_length", uint32(s.CtxTrain))
	f.Uint32("llama.embedding_length", uint32(s.Embd))
	f.Uint32("llama.block_count", uint32(s.Layers))
	f.Uint32("llama.feed_forward_length", uint32(s.FF))
	f.Uint32("llama.attention.head_count", uint32(s.Heads))
	f.Uint32("llama.attention.head_count_kv", uint32(s.HeadsKV))
	f.Uint32("llama.rope.dimension_count", uint32(s.Embd/s.Heads))
	f.Float32("llama.rope.freq_base", 10000)
	f.Float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
	f.Uint32("llama.vocab_size", uint32(s.vocabSize()))
	tokens, scores, types := vocab(s.Tokens, s.Control)
	f.String("tokenizer.ggml.model", "llama")
	f.Strings("tokenizer.ggml.tokens", tokens)
	f.Float32s("tokenizer.ggml.scores", scores)
	f.Int32s("tokenizer.ggml.token_type", types)
	f.Uint32("tokenizer.ggml.bos_token_id", TokenBOS)
	f.Uint32("tokenizer.ggml.eos_token_id", TokenEOS)
	f.Uint32("tokenizer.ggml.unknown_token_id", TokenUnknown)
	f.Bool("tokenizer.ggml.add_bos_token", true)
	f.Bool("tokenizer.ggml.add_eos_token", false)
	f.Bool("tokenizer.ggml.add_space_prefix", false)
	if s.ChatTmpl != "" {
		f.String("tokenizer.chat_template", s.ChatTmpl)
	}
}

// layerTensors adds one transformer block's tensors, filled by fill.
func layerTensors(f *gguf.File, s Spec, i int, fill func(n int) []float32, zeroOut bool) {
	embdKV := uint64(s.Embd / s.Heads * s.HeadsKV)
	E, F := uint64(s.Embd), uint64(s.FF)
	p := fmt.Sprintf("blk.%d.", i)
	out := func(n int) []float32 {
		if zeroOut {
			return make([]float32, n)
		}
		return fill(n)
	}
	f.Tensor(p+"attn_norm.weight", []uint64{E}, ones(s.Embd))
	f.Tensor(p+"attn_q.weight", []uint64{E, E}, fill(s.Embd*s.Embd))
	f.Tensor(p+"attn_k.weight", []uint64{E, embdKV}, fill(s.Embd*int(embdKV)))
	f.Tensor(p+"attn_v.weight", []uint64{E, embdKV}, fill(s.Embd*int(embdKV)))
	f.Tensor(p+"attn_output.weight", []uint64{E, E}, out(s.Embd*s.Embd))
	f.Tensor(p+"ffn_norm.weight", []uint64{E}, ones(s.Embd))
	f.Tensor(p+"ffn_gate.weight", []uint64{E, F}, fill(s.Embd*s.FF))
	f.Tensor(p+"ffn_up.weight", []uint64{E, F}, fill(s.Embd*s.FF))
	f.Tensor(p+"ffn_down.weight", []uint64{F, E}, out(s.FF*s.Embd))
}

func ones(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = 1
	}
	return v
}

// Random returns a model of spec s with random weights (normal, scaled by
// s.RandScale), deterministic for s.RandSeed.
func Random(s Spec) *gguf.File {
	rng := rand.New(rand.NewPCG(s.RandSeed, 0x7262656573))
	fill := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64()) * s.RandScale
		}
		return v
	}
	f := gguf.New()
	header(f, s, fmt.Sprintf("rbee random-weight test model, %d parameters", s.Params()))
	E, V := uint64(s.Embd), uint64(s.vocabSize())
	f.Tensor("token_embd.weight", []uint64{E, V}, fill(s.Embd*s.vocabSize()))
	for i := 0; i < s.Layers; i++ {
		layerTensors(f, s, i, fill, false)
	}
	f.Tensor("output_norm.weight", []uint64{E}, ones(s.Embd))
	f.Tensor("output.weight", []uint64{E, V}, fill(s.Embd*s.vocabSize()))
	return f
}

// AlphabetSpec is the shape of the alphabet model.
var AlphabetSpec = Spec{Name: "alphabet", Embd: 64, FF: 64, Layers: 1, Heads: 4, HeadsKV: 4, CtxTrain: 4096}

// alphabetLogit is the logit of the intended next token; every other token
// gets 0, so even at temperature 1 the intended token has p ≈ 0.99.
const alphabetLogit = 12

// Alphabet returns the alphabet model: a bigram model hidden in a llama.
// The block's output projections are zero, so the residual stream carries
// the current token's embedding unchanged to the output. Embeddings are
// one-hot: lowercase letters in dims 0-25, uppercase in 26-51, every other
// token in dim 52. The output head maps each letter's dim to the next letter
// ('z' and 'Z' and anything else to end of stream).
func Alphabet() *gguf.File {
	s := AlphabetSpec
	f := gguf.New()
	header(f, s, "rbee alphabet test model: greedy decoding continues the alphabet")
	dim := func(tok int) int {
		b := tok - tokenByte0
		switch {
		case b >= 'a' && b <= 'z':
			return b - 'a'
		case b >= 'A' && b <= 'Z':
			return 26 + b - 'A'
		default:
			return 52
		}
	}
	emb := make([]float32, s.Embd*VocabSize)
	for tok := 0; tok < VocabSize; tok++ {
		emb[tok*s.Embd+dim(tok)] = 1
	}
	f.Tensor("token_embd.weight", []uint64{uint64(s.Embd), VocabSize}, emb)
	zero := func(n int) []float32 { return make([]float32, n) }
	layerTensors(f, s, 0, zero, true)
	f.Tensor("output_norm.weight", []uint64{uint64(s.Embd)}, ones(s.Embd))
	// RMS norm of a one-hot vector in Embd dims has sqrt(Embd) in its dim.
	w := float32(alphabetLogit / math.Sqrt(float64(s.Embd)))
	out := make([]float32, s.Embd*VocabSize)
	set := func(next, d int) { out[next*s.Embd+d] = w }
	for c := 0; c < 25; c++ {
		set(ByteToken(byte('a'+c+1)), c)
		set(ByteToken(byte('A'+c+1)), 26+c)
	}
	set(TokenEOS, 25) // z
	set(TokenEOS, 51) // Z
	set(TokenEOS, 52) // anything else
	f.Tensor("output.weight", []uint64{uint64(s.Embd), VocabSize}, out)
	return f
}

// Huge returns the header of a llama model of about 137 GB (F32): no data
// follows the header, so the file is small, but a memory estimate read from
// the header says the model fits no ordinary machine.
func Huge() *gguf.File {
	s := Spec{Name: "huge", Embd: 8192, FF: 28672, Layers: 1, Heads: 64, HeadsKV: 8, CtxTrain: 4096}
	f := gguf.New()
	header(f, s, "rbee test: a header that describes a model too big for any device")
	E := uint64(s.Embd)
	f.VirtualTensor("token_embd.weight", []uint64{E, VocabSize})
	f.VirtualTensor("blk.0.ffn_up.weight", []uint64{E, 4 * 1024 * 1024})
	f.VirtualTensor("output.weight", []uint64{E, VocabSize})
	return f
}
