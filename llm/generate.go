package llm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
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

// SampleParams control one generation. The sampler chain is llama.cpp's,
// in llama-server's order: logit bias, penalties, top-k, typical, top-p,
// min-p, temperature, then a seeded draw (or the most likely token left
// when Temperature <= 0).
type SampleParams struct {
	MaxTokens   int     // 0 = until the context is full
	Temperature float32 // <= 0 = greedy
	TopP        float32 // 0 or >= 1 = off
	TopK        int     // 0 = off
	MinP        float32 // 0 = off
	TypicalP    float32 // 0 or >= 1 = off
	// RepeatPenalty divides (multiplies, when negative) the logit of each
	// token seen in the last RepeatLastN tokens, prompt included; 0 or 1 =
	// off. PresencePenalty is subtracted once from such a token's logit,
	// FrequencyPenalty once per occurrence (OpenAI's penalties).
	RepeatPenalty    float32
	RepeatLastN      int // tokens the penalties look back over; -1 = the whole context
	PresencePenalty  float32
	FrequencyPenalty float32
	// LogitBias is added to a token's logit before anything else
	// (-100 in effect bans a token, +100 forces it).
	LogitBias map[Token]float32
	Seed      *uint32 // nil = random
	Stop      []string
	// Logprobs reports, with each sampled token, its log-probability and
	// those of the TopLogprobs most likely tokens. They are the log-softmax
	// of the model's raw logits, before the sampler chain (what
	// llama-server reports by default).
	Logprobs    bool
	TopLogprobs int
	IgnoreEOS   bool // keep generating past end of stream (benchmarks)
	NoCache     bool // decode the whole prompt even if the slot holds a prefix of it
	// Grammar, a GBNF grammar (llama.cpp's format) starting at rule
	// "root", allows only the tokens that keep the text within it, and end
	// of stream only once the text is complete. Empty = no grammar.
	Grammar string
	// GrammarTrigger makes Grammar lazy: the text is free (end of stream
	// included) until it ends with this word at a token's end; from there
	// on Grammar applies, starting after the word (a tool call's opening
	// tag, with the call's grammar after it). A word that ends inside a
	// token does not trigger: llama.cpp's own lazy grammar would then be
	// fed the token's rest, and abort the process if it does not fit.
	GrammarTrigger string
	// Preserve are words the answer shows even when the model writes them
	// as one special token, which is otherwise left out of the text
	// (llama-server's preserved tokens): a tool call's marker, such as
	// Mistral's [TOOL_CALLS], which the call's reader needs.
	Preserve []string
}

// preserved returns the special tokens of words, each a word the
// tokenizer reads as one token that is left out of the text when not
// rendered as special.
func (m *Model) preserved(words []string) map[llama.Token]bool {
	var out map[llama.Token]bool
	var buf [64]byte
	for _, w := range words {
		toks := llama.Tokenize(m.vocab, w, false, true)
		if len(toks) != 1 || llama.TokenToPiece(m.vocab, toks[0], buf[:], 0, false) != 0 {
			continue
		}
		if out == nil {
			out = map[llama.Token]bool{}
		}
		out[toks[0]] = true
	}
	return out
}

// ErrGrammar means a grammar does not parse.
var ErrGrammar = errors.New("grammar does not parse")

// CheckGrammar reports whether llama.cpp takes grammar (GBNF, starting at
// rule "root") for this model's vocabulary; the error wraps ErrGrammar.
func (m *Model) CheckGrammar(grammar string) error {
	g, err := m.grammarSampler(grammar)
	llama.SamplerFree(g)
	return err
}

func (m *Model) grammarSampler(grammar string) (llama.Sampler, error) {
	if strings.IndexByte(grammar, 0) >= 0 {
		return 0, fmt.Errorf("%w: it holds a NUL byte", ErrGrammar)
	}
	g := llama.SamplerInitGrammar(m.vocab, grammar, "root")
	if g == 0 {
		return 0, fmt.Errorf("%w: a syntax error, an undefined rule, left recursion, or no rule root", ErrGrammar)
	}
	return g, nil
}

// penalties reports whether any of the penalties is on.
func (p SampleParams) penalties() bool {
	return (p.RepeatPenalty != 0 && p.RepeatPenalty != 1) || p.PresencePenalty != 0 || p.FrequencyPenalty != 0
}

// Piece is a piece of generated text and, when SampleParams.Logprobs asks
// for them, the tokens sampled since the previous piece with their
// log-probabilities. A piece may hold tokens and no text (a token whose
// bytes are held back as part of a possible stop string or an incomplete
// UTF-8 sequence).
type Piece struct {
	Text     string
	Logprobs []TokenLogprob
}

// TokenLogprob is a sampled token's log-probability and the most likely
// alternatives at its position, most likely first.
type TokenLogprob struct {
	TokenProb
	Top []TokenProb
}

// TokenProb is a token, its bytes, and its log-probability.
type TokenProb struct {
	Token   Token
	Bytes   []byte
	Logprob float32
}

// Result sums up one generation.
type Result struct {
	PromptTokens     int // the whole prompt
	CachedTokens     int // of which were already in the slot's cache, not decoded
	CompletionTokens int
	FinishReason     string
	PromptDuration   time.Duration // evaluating the prompt
	GenDuration      time.Duration // from the first sampled token to the last
}

// PromptPerSecond returns decoded prompt tokens per second.
func (r Result) PromptPerSecond() float64 {
	return perSecond(r.PromptTokens-r.CachedTokens, r.PromptDuration)
}

// GenPerSecond returns generated tokens per second.
func (r Result) GenPerSecond() float64 { return perSecond(r.CompletionTokens, r.GenDuration) }

func perSecond(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// Generate evaluates prompt in this slot's sequence and samples tokens,
// calling emit with each piece of text as soon as it is complete UTF-8 and
// cannot be part of a stop string. The prompt's longest prefix still in the
// slot's cache is not decoded again (unless p.NoCache). Tokens are decoded
// by the model's one loop, in batches shared with the other slots. It
// returns when the model ends the stream, a limit or stop string is
// reached, emit returns an error, or ctx ends (the loop drops the request
// before its next batch; the result then says FinishCancelled and the error
// is ctx's).
func (s *Slot) Generate(ctx context.Context, prompt []llama.Token, p SampleParams, emit func(Piece) error) (Result, error) {
	res := Result{PromptTokens: len(prompt)}
	if len(prompt) == 0 {
		return res, fmt.Errorf("generate: empty prompt")
	}
	if len(prompt) >= s.m.CtxSize {
		return res, fmt.Errorf("%w: %d tokens, context size is %d", ErrPromptTooLong, len(prompt), s.m.CtxSize)
	}
	if s.m.embeddings {
		return res, ErrEmbeddingsOnly
	}
	smpl, grammar, err := s.m.newSampler(p, prompt)
	if err != nil {
		return res, err
	}
	r := &request{slot: s, prompt: prompt, p: p, smpl: smpl, grammar: grammar, out: make(chan event, eventBuffer), special: s.m.preserved(p.Preserve)}
	select {
	case s.m.submit <- r: // the loop owns the samplers now
	case <-ctx.Done():
		r.freeSamplers()
		res.FinishReason = FinishCancelled
		return res, ctx.Err()
	case <-s.m.quit:
		r.freeSamplers()
		return res, ErrClosed
	}
	var probs []TokenLogprob // sampled, not yet sent with a piece
	out := newTextStream(p.Stop, func(text string) error {
		pc := Piece{Text: text, Logprobs: probs}
		probs = nil
		return emit(pc)
	})
	var (
		stopped bool  // a stop string ended the text, or emit failed
		emitErr error // what emit returned
		n       int   // tokens taken before stopping
		done    = ctx.Done()
		piece   = make([]byte, 64)
	)
	for {
		var ev event
		select {
		case ev = <-r.out:
		case <-done:
			done = nil
			r.cancel.Store(true)
			s.m.poke()
			continue
		}
		s.m.poke() // room in r.out again, if the loop waited for it
		if !ev.final {
			if stopped {
				continue
			}
			n++
			if ev.probs != nil {
				probs = append(probs, s.m.tokenLogprob(ev.tok, ev.probs))
			}
			var hit bool
			piece, hit, emitErr = s.m.writePiece(out, ev.tok, piece, r.special[ev.tok])
			if hit || emitErr != nil {
				stopped = true
				r.cancel.Store(true)
			}
			continue
		}
		res = ev.res
		res.PromptTokens = len(prompt)
		switch {
		case emitErr != nil:
			res.CompletionTokens, res.FinishReason = n, FinishCancelled
			return res, emitErr
		case stopped:
			res.CompletionTokens, res.FinishReason = n, FinishStop
			return res, sendRest(probs, emit)
		case ev.err != nil:
			return res, ev.err
		case res.FinishReason == FinishCancelled:
			return res, ctx.Err()
		}
		if err := out.flush(); err != nil {
			return res, err
		}
		return res, sendRest(probs, emit)
	}
}

// sendRest sends the log-probabilities of tokens whose text never came
// out (the end of stream, or a stop string) in a piece without text.
func sendRest(probs []TokenLogprob, emit func(Piece) error) error {
	if len(probs) == 0 {
		return nil
	}
	return emit(Piece{Logprobs: probs})
}

// tokenLogprob fills in the bytes of the tokens the loop reported.
func (m *Model) tokenLogprob(tok llama.Token, p *tokenProbs) TokenLogprob {
	lp := TokenLogprob{TokenProb: TokenProb{Token: tok, Bytes: m.TokenBytes(tok), Logprob: p.logprob}}
	for _, t := range p.top {
		lp.Top = append(lp.Top, TokenProb{Token: t.tok, Bytes: m.TokenBytes(t.tok), Logprob: t.logprob})
	}
	return lp
}

// TokenBytes returns the bytes a token stands for (special tokens as
// their text).
func (m *Model) TokenBytes(tok Token) []byte {
	buf := make([]byte, 32)
	n := llama.TokenToPiece(m.vocab, tok, buf, 0, true)
	if n < 0 {
		buf = make([]byte, -n)
		n = llama.TokenToPiece(m.vocab, tok, buf, 0, true)
	}
	if n <= 0 {
		return []byte{}
	}
	return buf[:n]
}

// tokenProbs is what the loop reports of a sampled token's distribution.
type tokenProbs struct {
	logprob float32
	top     []tokenLogit
}

type tokenLogit struct {
	tok     llama.Token
	logprob float32
}

// logprobs returns tok's log-softmax in logits and the top n, most likely
// first (ties by lower token id).
func logprobs(logits []float32, tok llama.Token, n int) *tokenProbs {
	maxL := float32(math.Inf(-1))
	for _, l := range logits {
		maxL = max(maxL, l)
	}
	var sum float64
	for _, l := range logits {
		sum += math.Exp(float64(l - maxL))
	}
	logZ := float64(maxL) + math.Log(sum)
	lp := func(t llama.Token) float32 { return float32(float64(logits[t]) - logZ) }
	p := &tokenProbs{}
	if int(tok) >= 0 && int(tok) < len(logits) {
		p.logprob = lp(tok)
	}
	if n <= 0 {
		return p
	}
	n = min(n, len(logits))
	top := make([]tokenLogit, 0, n+1)
	better := func(a, b tokenLogit) bool {
		return a.logprob > b.logprob || (a.logprob == b.logprob && a.tok < b.tok)
	}
	for i, l := range logits {
		c := tokenLogit{tok: llama.Token(i), logprob: l}
		if len(top) == n && !better(c, top[n-1]) {
			continue
		}
		j := len(top)
		top = append(top, c)
		for j > 0 && better(c, top[j-1]) {
			top[j] = top[j-1]
			j--
		}
		top[j] = c
		if len(top) > n {
			top = top[:n]
		}
	}
	for i := range top {
		top[i].logprob = float32(float64(top[i].logprob) - logZ)
	}
	p.top = top
	return p
}

// writePiece turns tok into text and writes it to out; hit reports a stop
// string.
func (m *Model) writePiece(out *textStream, tok llama.Token, buf []byte, special bool) ([]byte, bool, error) {
	n := llama.TokenToPiece(m.vocab, tok, buf, 0, special)
	if n < 0 {
		buf = make([]byte, -n)
		n = llama.TokenToPiece(m.vocab, tok, buf, 0, special)
	}
	if n <= 0 {
		return buf, false, nil
	}
	hit, err := out.write(buf[:n])
	return buf, hit, err
}

// newSampler builds p's chain in llama-server's order (common/sampling.cpp:
// logit bias, penalties, top-k, typical, top-p, min-p, temperature, dist),
// and p's grammar sampler, kept apart as llama-server keeps it (see
// Model.sample). At temperature 0 the filters still apply and the most
// likely token left is taken, as llama-server's temp_ext(0) does. The
// penalties count the prompt's tokens, as llama-server's do.
func (m *Model) newSampler(p SampleParams, prompt []llama.Token) (chain, grammar llama.Sampler, err error) {
	if p.Grammar != "" {
		if grammar, err = m.grammarSampler(p.Grammar); err != nil {
			return 0, 0, err
		}
		if p.GrammarTrigger != "" {
			// Checked now, started by the loop when the word comes.
			llama.SamplerFree(grammar)
			grammar = 0
		}
	}
	nVocab := m.NVocab()
	chain = llama.SamplerChainInit(llama.SamplerChainDefaultParams())
	if len(p.LogitBias) > 0 {
		bias := make([]llama.LogitBias, 0, len(p.LogitBias))
		for tok, b := range p.LogitBias {
			bias = append(bias, llama.LogitBias{Token: tok, Bias: b})
		}
		slices.SortFunc(bias, func(a, b llama.LogitBias) int { return cmp.Compare(a.Token, b.Token) })
		llama.SamplerChainAdd(chain, llama.SamplerInitLogitBias(int32(nVocab), int32(len(bias)), &bias[0]))
	}
	if p.penalties() {
		lastN := p.RepeatLastN
		if lastN < 0 {
			lastN = m.CtxSize
		}
		repeat := p.RepeatPenalty
		if repeat == 0 {
			repeat = 1
		}
		pen := llama.SamplerInitPenalties(int32(nVocab), int32(lastN), repeat, p.FrequencyPenalty, p.PresencePenalty)
		from := 0
		if p.RepeatLastN >= 0 {
			from = max(len(prompt)-p.RepeatLastN, 0)
		}
		for _, t := range prompt[from:] {
			llama.SamplerAccept(pen, t)
		}
		llama.SamplerChainAdd(chain, pen)
	}
	if p.TopK > 0 {
		llama.SamplerChainAdd(chain, llama.SamplerInitTopK(int32(p.TopK)))
	}
	if p.TypicalP > 0 && p.TypicalP < 1 {
		llama.SamplerChainAdd(chain, llama.SamplerInitTypical(p.TypicalP, 1))
	}
	if p.TopP > 0 && p.TopP < 1 {
		llama.SamplerChainAdd(chain, llama.SamplerInitTopP(p.TopP, 1))
	}
	if p.MinP > 0 {
		llama.SamplerChainAdd(chain, llama.SamplerInitMinP(p.MinP, 1))
	}
	if p.Temperature <= 0 {
		llama.SamplerChainAdd(chain, llama.SamplerInitGreedy())
		return chain, grammar, nil
	}
	llama.SamplerChainAdd(chain, llama.SamplerInitTemp(p.Temperature))
	seed := rand.Uint32()
	if p.Seed != nil {
		seed = *p.Seed
	}
	llama.SamplerChainAdd(chain, llama.SamplerInitDist(seed))
	return chain, grammar, nil
}

// errNoToken means the grammar allows no token of the vocabulary.
var errNoToken = fmt.Errorf("%w: it allows no token of this model's vocabulary here", ErrGrammar)

// sample picks r's next token from the logits at r.logit. With a grammar
// it does what llama-server's common_sampler does: the chain's pick is
// taken when the grammar allows it (one token checked, not the whole
// vocabulary); else the grammar masks the vocabulary and the chain picks
// again among what is left. Either way the token is one the grammar
// allows, or an error: llama.cpp aborts the process when its grammar
// accepts a token it forbids.
func (m *Model) sample(r *request) (llama.Token, error) {
	if r.grammar == 0 {
		return llama.SamplerSample(r.smpl, m.lctx, r.logit), nil
	}
	logits, _ := llama.GetLogitsIth(m.lctx, r.logit, m.NVocab())
	if logits == nil {
		return 0, fmt.Errorf("sample: no logits at batch index %d", r.logit)
	}
	cur := r.candidates(logits)
	llama.SamplerApply(r.smpl, cur)
	if cur.Selected >= 0 && cur.Selected < int64(cur.Size) {
		tok := r.cur[cur.Selected].Id
		one := []llama.TokenData{{Id: tok, Logit: 1}}
		llama.SamplerApply(r.grammar, &llama.TokenDataArray{Data: &one[0], Size: 1, Selected: -1})
		if !math.IsInf(float64(one[0].Logit), -1) {
			llama.SamplerAccept(r.grammar, tok)
			llama.SamplerAccept(r.smpl, tok)
			return tok, nil
		}
	}
	cur = r.candidates(logits)
	llama.SamplerApply(r.grammar, cur)
	if !slices.ContainsFunc(r.cur, func(d llama.TokenData) bool { return !math.IsInf(float64(d.Logit), -1) }) {
		return 0, errNoToken
	}
	llama.SamplerApply(r.smpl, cur)
	if cur.Selected < 0 || cur.Selected >= int64(cur.Size) || math.IsInf(float64(r.cur[cur.Selected].Logit), -1) {
		return 0, errNoToken
	}
	tok := r.cur[cur.Selected].Id
	llama.SamplerAccept(r.grammar, tok)
	llama.SamplerAccept(r.smpl, tok)
	return tok, nil
}

// candidates fills r.cur with logits, as llama_sampler_sample does.
func (r *request) candidates(logits []float32) *llama.TokenDataArray {
	if cap(r.cur) < len(logits) {
		r.cur = make([]llama.TokenData, len(logits))
	}
	r.cur = r.cur[:len(logits)]
	for i, l := range logits {
		r.cur[i] = llama.TokenData{Id: llama.Token(i), Logit: l}
	}
	return &llama.TokenDataArray{Data: &r.cur[0], Size: uint64(len(r.cur)), Selected: -1}
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
