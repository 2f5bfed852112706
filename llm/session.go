package llm

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hybridgroup/yzma/pkg/llama"
)

// Finish reasons, as OpenAI names them, plus "cancelled".
const (
	FinishStop      = "stop"      // end of stream or a stop string
	FinishLength    = "length"    // max tokens or the context is full
	FinishCancelled = "cancelled" // the caller's context ended
)

// SampleParams control one generation.
type SampleParams struct {
	MaxTokens   int     // 0 = until the context is full
	Temperature float32 // <= 0 = greedy
	TopP        float32 // 0 or >= 1 = off
	TopK        int     // 0 = off
	Seed        *uint32 // nil = random
	Stop        []string
	IgnoreEOS   bool // keep generating past end of stream (benchmarks)
}

// Result sums up one generation.
type Result struct {
	PromptTokens     int
	CompletionTokens int
	FinishReason     string
	PromptDuration   time.Duration // evaluating the prompt
	GenDuration      time.Duration // from the first sampled token to the last
}

// PromptPerSecond returns prompt tokens per second.
func (r Result) PromptPerSecond() float64 { return perSecond(r.PromptTokens, r.PromptDuration) }

// GenPerSecond returns generated tokens per second.
func (r Result) GenPerSecond() float64 { return perSecond(r.CompletionTokens, r.GenDuration) }

func perSecond(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// Session is one slot: a llama context owned by one request at a time.
type Session struct {
	ID    int
	m     *Model
	ctx   llama.Context
	batch int
	piece []byte
}

func (m *Model) newSession(id int) (*Session, error) {
	cp := llama.ContextDefaultParams()
	cp.NCtx = uint32(m.CtxSize)
	cp.NBatch = uint32(min(m.CtxSize, 512))
	cp.NUbatch = cp.NBatch
	cp.NSeqMax = 1
	cp.NThreads = int32(m.Threads)
	cp.NThreadsBatch = int32(m.Threads)
	cp.NoPerf = 1
	lctx, err := llama.InitFromModel(m.model, cp)
	if err != nil || lctx == 0 {
		return nil, fmt.Errorf("create context %d (ctx-size %d): %v; try a smaller --ctx-size", id, m.CtxSize, err)
	}
	return &Session{ID: id, m: m, ctx: lctx, batch: int(cp.NBatch), piece: make([]byte, 256)}, nil
}

// Generate evaluates prompt and samples tokens, calling emit with each piece
// of text as soon as it is complete UTF-8 and cannot be part of a stop
// string. It returns when the model ends the stream, a limit or stop string
// is reached, emit returns an error, or ctx ends (checked before every
// token; the result then says FinishCancelled and the error is ctx's).
func (s *Session) Generate(ctx context.Context, prompt []llama.Token, p SampleParams, emit func(string) error) (Result, error) {
	res := Result{PromptTokens: len(prompt)}
	if len(prompt) == 0 {
		return res, fmt.Errorf("generate: empty prompt")
	}
	if len(prompt) >= s.m.CtxSize {
		return res, fmt.Errorf("%w: %d tokens, context size is %d", ErrPromptTooLong, len(prompt), s.m.CtxSize)
	}
	mem, err := llama.GetMemory(s.ctx)
	if err != nil {
		return res, fmt.Errorf("generate: %w", err)
	}
	if err := llama.MemoryClear(mem, true); err != nil {
		return res, fmt.Errorf("generate: %w", err)
	}
	smpl := newSampler(p)
	defer llama.SamplerFree(smpl)

	start := time.Now()
	for i := 0; i < len(prompt); i += s.batch {
		if err := ctx.Err(); err != nil {
			res.FinishReason = FinishCancelled
			return res, err
		}
		chunk := prompt[i:min(i+s.batch, len(prompt))]
		if rc, err := llama.Decode(s.ctx, llama.BatchGetOne(chunk)); err != nil || rc != 0 {
			return res, fmt.Errorf("evaluate prompt: llama_decode returned %d: %v", rc, err)
		}
	}
	res.PromptDuration = time.Since(start)

	out := newTextStream(p.Stop, emit)
	pos := len(prompt)
	one := []llama.Token{0}
	genStart := time.Now()
	for {
		if err := ctx.Err(); err != nil {
			res.FinishReason = FinishCancelled
			res.GenDuration = time.Since(genStart)
			return res, err
		}
		tok := llama.SamplerSample(smpl, s.ctx, -1)
		if !p.IgnoreEOS && llama.VocabIsEOG(s.m.vocab, tok) {
			res.FinishReason = FinishStop
			break
		}
		res.CompletionTokens++
		stopped, err := out.write(s.tokenPiece(tok))
		if err != nil {
			res.FinishReason = FinishCancelled
			res.GenDuration = time.Since(genStart)
			return res, err
		}
		if stopped {
			res.FinishReason = FinishStop
			res.GenDuration = time.Since(genStart)
			return res, nil
		}
		pos++
		if (p.MaxTokens > 0 && res.CompletionTokens >= p.MaxTokens) || pos >= s.m.CtxSize {
			res.FinishReason = FinishLength
			break
		}
		one[0] = tok
		if rc, err := llama.Decode(s.ctx, llama.BatchGetOne(one)); err != nil || rc != 0 {
			if rc == 1 { // no room left in the KV cache
				res.FinishReason = FinishLength
				break
			}
			return res, fmt.Errorf("generate: llama_decode returned %d: %v", rc, err)
		}
	}
	res.GenDuration = time.Since(genStart)
	if err := out.flush(); err != nil {
		return res, err
	}
	return res, nil
}

func (s *Session) tokenPiece(tok llama.Token) []byte {
	n := llama.TokenToPiece(s.m.vocab, tok, s.piece, 0, false)
	if n < 0 {
		s.piece = make([]byte, -n)
		n = llama.TokenToPiece(s.m.vocab, tok, s.piece, 0, false)
	}
	if n <= 0 {
		return nil
	}
	return s.piece[:n]
}

func newSampler(p SampleParams) llama.Sampler {
	chain := llama.SamplerChainInit(llama.SamplerChainDefaultParams())
	if p.Temperature <= 0 {
		llama.SamplerChainAdd(chain, llama.SamplerInitGreedy())
		return chain
	}
	if p.TopK > 0 {
		llama.SamplerChainAdd(chain, llama.SamplerInitTopK(int32(p.TopK)))
	}
	if p.TopP > 0 && p.TopP < 1 {
		llama.SamplerChainAdd(chain, llama.SamplerInitTopP(p.TopP, 1))
	}
	llama.SamplerChainAdd(chain, llama.SamplerInitTemp(p.Temperature))
	seed := rand.Uint32()
	if p.Seed != nil {
		seed = *p.Seed
	}
	llama.SamplerChainAdd(chain, llama.SamplerInitDist(seed))
	return chain
}

// textStream turns token bytes into text for emit: it holds back an
// incomplete UTF-8 sequence, and any tail that could still become a stop
// string, and stops at the first stop string (which is not emitted).
type textStream struct {
	stops   []string
	emit    func(string) error
	pending []byte // bytes not yet known to be complete UTF-8
	held    string // text that might begin a stop string
}

func newTextStream(stops []string, emit func(string) error) *textStream {
	var ss []string
	for _, s := range stops {
		if s != "" {
			ss = append(ss, s)
		}
	}
	return &textStream{stops: ss, emit: emit}
}

// write adds bytes; stopped reports that a stop string was reached.
func (t *textStream) write(b []byte) (stopped bool, err error) {
	t.pending = append(t.pending, b...)
	cut := completeUTF8(t.pending)
	if cut == 0 {
		return false, nil
	}
	t.held += strings.ToValidUTF8(string(t.pending[:cut]), "\uFFFD")
	t.pending = append(t.pending[:0], t.pending[cut:]...)
	if len(t.stops) == 0 {
		return false, t.send()
	}
	first := -1
	for _, s := range t.stops {
		if i := strings.Index(t.held, s); i >= 0 && (first < 0 || i < first) {
			first = i
		}
	}
	if first >= 0 {
		t.held = t.held[:first]
		t.pending = nil
		return true, t.send()
	}
	keep := 0
	for _, s := range t.stops {
		for k := min(len(s)-1, len(t.held)); k > keep; k-- {
			if strings.HasSuffix(t.held, s[:k]) {
				keep = k
				break
			}
		}
	}
	out := t.held[:len(t.held)-keep]
	t.held = t.held[len(t.held)-keep:]
	if out == "" {
		return false, nil
	}
	return false, t.emit(out)
}

func (t *textStream) send() error {
	if t.held == "" {
		return nil
	}
	s := t.held
	t.held = ""
	return t.emit(s)
}

// flush emits whatever is left at the end of generation.
func (t *textStream) flush() error {
	if len(t.pending) > 0 {
		t.held += strings.ToValidUTF8(string(t.pending), "\uFFFD")
		t.pending = nil
	}
	return t.send()
}

// completeUTF8 returns the length of the longest prefix of b that does not
// end inside a multi-byte sequence that more bytes could still complete.
func completeUTF8(b []byte) int {
	for back := 1; back <= 3 && back <= len(b); back++ {
		c := b[len(b)-back]
		if c < 0x80 {
			return len(b) // ASCII: nothing pending
		}
		if c >= 0xC0 { // a lead byte
			need := 2
			switch {
			case c >= 0xF0:
				need = 4
			case c >= 0xE0:
				need = 3
			}
			if back < need && !utf8.FullRune(b[len(b)-back:]) {
				return len(b) - back
			}
			return len(b)
		}
	}
	return len(b)
}
