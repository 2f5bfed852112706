package llm

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hybridgroup/yzma/pkg/llama"
)

// ErrEmbeddingsOnly means a generation was asked of a model loaded for
// embeddings.
var ErrEmbeddingsOnly = errors.New("model loaded for embeddings only")

// ErrNoEmbeddings means the model cannot produce embeddings as loaded.
var ErrNoEmbeddings = errors.New("model does not produce embeddings")

// eventBuffer is how many tokens a request may have sampled but its caller
// not yet taken; a slot whose caller lags that far is left out of the next
// batches (backpressure) instead of buffering without bound.
const eventBuffer = 64

// event is a sampled token or, with final set, the end of a request.
type event struct {
	tok   llama.Token
	probs *tokenProbs // with SampleParams.Logprobs
	final bool
	res   Result
	err   error
}

// request is one generation in the decode loop.
type request struct {
	slot   *Slot
	prompt []llama.Token
	p      SampleParams
	out    chan event
	cancel atomic.Bool // set by the caller; the loop drops the request before its next batch

	// Built by Generate, owned (and freed) by the loop.
	smpl    llama.Sampler
	grammar llama.Sampler        // 0 without SampleParams.Grammar (or before its trigger)
	cur     []llama.TokenData    // candidates, with a grammar
	tail    []byte               // the generated text's end, while a lazy grammar waits for its trigger
	special map[llama.Token]bool // special tokens shown as text (SampleParams.Preserve); read-only

	// Owned by the loop.
	next    int         // prompt tokens in the cache so far
	pending llama.Token // sampled, not yet decoded
	hasTok  bool
	logit   int32 // batch index of this request's logits; -1 when none
	inBatch bool
	gen     int
	cached  int
	start   time.Time
	first   time.Time
	last    time.Time
}

type embedRequest struct {
	inputs [][]llama.Token
	cancel *atomic.Bool
	out    chan embedResult // buffered 1
}

type embedResult struct {
	vecs [][]float32
	err  error
}

// Stats counts the decode loop's work.
type Stats struct {
	Decodes       int64   `json:"decodes"`        // llama_decode calls
	Tokens        int64   `json:"tokens"`         // tokens decoded
	MaxTokens     int64   `json:"max_tokens"`     // most tokens in one decode
	SharedDecodes int64   `json:"shared_decodes"` // decodes holding two or more sequences
	MaxSeqs       int64   `json:"max_seqs"`       // most sequences in one decode
	DecodeMS      float64 `json:"decode_ms"`      // time spent in llama_decode
	CachedTokens  int64   `json:"cached_tokens"`  // prompt tokens taken from slot caches
	CacheHits     int64   `json:"cache_hits"`     // requests that reused a cached prefix
}

type statsCounters struct {
	decodes, tokens, maxTokens, shared, maxSeqs, decodeNS, cached, hits atomic.Int64
}

// Stats returns the decode loop's counters.
func (m *Model) Stats() Stats {
	c := &m.stats
	return Stats{
		Decodes: c.decodes.Load(), Tokens: c.tokens.Load(), MaxTokens: c.maxTokens.Load(),
		SharedDecodes: c.shared.Load(), MaxSeqs: c.maxSeqs.Load(),
		DecodeMS:     float64(c.decodeNS.Load()) / 1e6,
		CachedTokens: c.cached.Load(), CacheHits: c.hits.Load(),
	}
}

func storeMax(a *atomic.Int64, v int64) {
	if v > a.Load() {
		a.Store(v)
	}
}

// poke wakes the loop if it waits for a slow caller.
func (m *Model) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// loop is the one goroutine that calls into the context. Each step admits
// new requests, drops cancelled ones, puts the next token of every
// generating slot and a chunk of pending prompt into one batch, decodes it
// once, and samples every slot that got logits.
func (m *Model) loop() {
	defer m.loopWG.Done()
	mem, err := llama.GetMemory(m.lctx)
	if err != nil {
		panic(fmt.Sprintf("llm: context without memory: %v", err)) // InitFromModel succeeded: cannot happen
	}
	var active []*request
	for {
		if len(active) == 0 || m.blocked(active) {
			select {
			case r := <-m.submit:
				active = insert(active, m.begin(mem, r))
			case e := <-m.embedCh:
				m.embed(mem, e)
			case <-m.wake:
			case <-m.quit:
				m.finishAll(active)
				return
			}
		}
	admit:
		for {
			select {
			case r := <-m.submit:
				active = insert(active, m.begin(mem, r))
			case <-m.quit:
				m.finishAll(active)
				return
			default:
				break admit
			}
		}
		active = m.dropCancelled(active)
		if m.fill(active) == 0 {
			continue
		}
		active = m.decodeAndSample(mem, active)
	}
}

// blocked reports whether no active request can go into a batch: each waits
// for its caller to take tokens.
func (m *Model) blocked(active []*request) bool {
	for _, r := range active {
		if r.next < len(r.prompt) || (r.hasTok && len(r.out) < cap(r.out)-1) || r.cancel.Load() {
			return false
		}
	}
	return true
}

// begin starts r in its slot: it keeps the slot's cached prefix of the
// prompt (at least the last prompt token is decoded again, for its logits)
// and drops the rest of the slot's sequence.
func (m *Model) begin(mem llama.Memory, r *request) *request {
	s := r.slot
	n := 0
	if m.canReuse && !r.p.NoCache {
		n = min(commonPrefix(s.cache, r.prompt), len(r.prompt)-1)
	}
	seq := llama.SeqId(s.ID)
	if ok, err := llama.MemorySeqRm(mem, seq, llama.Pos(n), -1); !ok || err != nil {
		llama.MemorySeqRm(mem, seq, -1, -1)
		n = 0
	}
	s.cache = s.cache[:n]
	r.next, r.cached = n, n
	if n > 0 {
		m.stats.hits.Add(1)
		m.stats.cached.Add(int64(n))
	}
	r.start = time.Now()
	return r
}

func (m *Model) dropCancelled(active []*request) []*request {
	kept := active[:0]
	for _, r := range active {
		if r.cancel.Load() {
			m.finish(r, FinishCancelled, nil)
			continue
		}
		kept = append(kept, r)
	}
	return kept
}

// insert adds r to active, which is kept in slot id order.
func insert(active []*request, r *request) []*request {
	i, _ := slices.BinarySearchFunc(active, r.slot.ID, func(a *request, id int) int { return cmp.Compare(a.slot.ID, id) })
	return slices.Insert(active, i, r)
}

// fill builds the next batch and returns its token count: the pending token
// of every generating slot whose caller keeps up, and prompt tokens up to the
// batch size (one micro-batch while others generate, so a long prompt does
// not stall the streams). Tokens go in in slot id order: llama.cpp's
// non-unified KV puts a run of consecutive sequence ids into one
// micro-batch, in the order the batch holds them.
func (m *Model) fill(active []*request) int {
	gen := 0
	for _, r := range active {
		r.logit, r.inBatch = -1, false
		if r.hasTok && len(r.out) < cap(r.out)-1 {
			gen++
		}
	}
	budget := m.nBatch - gen
	if gen > 0 {
		budget = min(budget, m.nUbatch)
	}
	b := &m.batch
	b.Clear()
	for _, r := range active {
		s := r.slot
		if r.hasTok && len(r.out) < cap(r.out)-1 {
			m.add(s, r.pending, len(s.cache), true)
			s.cache = append(s.cache, r.pending)
			r.logit, r.inBatch, r.hasTok = b.NTokens-1, true, false
			continue
		}
		if r.next >= len(r.prompt) || budget <= 0 {
			continue
		}
		k := min(budget, len(r.prompt)-r.next)
		for i := r.next; i < r.next+k; i++ {
			last := i == len(r.prompt)-1
			m.add(s, r.prompt[i], i, last)
			if last {
				r.logit = b.NTokens - 1
			}
		}
		s.cache = append(s.cache, r.prompt[r.next:r.next+k]...)
		r.next += k
		r.inBatch = true
		budget -= k
	}
	return int(b.NTokens)
}

func (m *Model) add(s *Slot, tok llama.Token, pos int, logits bool) {
	if err := m.batch.Add(tok, llama.Pos(pos), s.seq, logits); err != nil {
		panic(fmt.Sprintf("llm: batch: %v", err)) // fill keeps within the batch: a bug
	}
}

// decodeAndSample decodes the batch, samples every request that got logits,
// and returns the requests still running.
func (m *Model) decodeAndSample(mem llama.Memory, active []*request) []*request {
	n := int64(m.batch.NTokens)
	seqs := int64(0)
	for _, r := range active {
		if r.inBatch {
			seqs++
		}
	}
	t0 := time.Now()
	rc, err := llama.Decode(m.lctx, m.batch)
	now := time.Now()
	c := &m.stats
	c.decodes.Add(1)
	c.tokens.Add(n)
	c.decodeNS.Add(int64(now.Sub(t0)))
	storeMax(&c.maxTokens, n)
	storeMax(&c.maxSeqs, seqs)
	if seqs > 1 {
		c.shared.Add(1)
	}
	kept := active[:0]
	for _, r := range active {
		if !r.inBatch {
			kept = append(kept, r)
			continue
		}
		if rc != 0 || err != nil {
			// The sequence's KV is in an unknown state: drop it whole.
			llama.MemorySeqRm(mem, llama.SeqId(r.slot.ID), -1, -1)
			r.slot.cache = r.slot.cache[:0]
			m.finish(r, FinishLength, fmt.Errorf("decode: llama_decode returned %d (%v)", rc, err))
			continue
		}
		if r.logit < 0 {
			kept = append(kept, r)
			continue
		}
		tok, serr := m.sample(r)
		if serr != nil {
			m.finish(r, FinishStop, serr)
			continue
		}
		var probs *tokenProbs
		if r.p.Logprobs {
			if logits, _ := llama.GetLogitsIth(m.lctx, r.logit, m.NVocab()); logits != nil {
				probs = logprobs(logits, tok, r.p.TopLogprobs)
			}
		}
		if r.gen == 0 {
			r.first = now
		}
		if !r.p.IgnoreEOS && llama.VocabIsEOG(m.vocab, tok) {
			m.finish(r, FinishStop, nil)
			continue
		}
		if r.grammar == 0 && r.p.GrammarTrigger != "" {
			if err := m.watchTrigger(r, tok); err != nil {
				m.finish(r, FinishStop, err)
				continue
			}
		}
		r.gen++
		r.last = now
		r.out <- event{tok: tok, probs: probs} // fill left room for it and the final event
		if (r.p.MaxTokens > 0 && r.gen >= r.p.MaxTokens) || len(r.slot.cache) >= m.CtxSize {
			m.finish(r, FinishLength, nil)
			continue
		}
		r.pending, r.hasTok = tok, true
		kept = append(kept, r)
	}
	return kept
}

// finish ends r: its slot keeps what was decoded as its cache.
func (m *Model) finish(r *request, reason string, err error) {
	r.freeSamplers()
	res := Result{CachedTokens: r.cached, CompletionTokens: r.gen, FinishReason: reason}
	if r.first.IsZero() {
		res.PromptDuration = time.Since(r.start)
	} else {
		res.PromptDuration = r.first.Sub(r.start)
		res.GenDuration = r.last.Sub(r.first)
	}
	r.out <- event{final: true, res: res, err: err}
}

// watchTrigger adds tok's text to r's tail and starts r's grammar when
// the text ends with its trigger word.
func (m *Model) watchTrigger(r *request, tok llama.Token) error {
	var buf [64]byte
	piece := buf[:]
	special := r.special[tok]
	n := llama.TokenToPiece(m.vocab, tok, piece, 0, special)
	if n < 0 {
		piece = make([]byte, -n)
		n = llama.TokenToPiece(m.vocab, tok, piece, 0, special)
	}
	if n <= 0 {
		return nil
	}
	trigger := r.p.GrammarTrigger
	r.tail = append(r.tail, piece[:n]...)
	if !bytes.HasSuffix(r.tail, []byte(trigger)) {
		if keep := len(trigger) - 1; len(r.tail) > keep {
			r.tail = append(r.tail[:0], r.tail[len(r.tail)-keep:]...)
		}
		return nil
	}
	r.tail = nil
	g, err := m.grammarSampler(r.p.Grammar)
	if err != nil {
		return err
	}
	r.grammar = g
	return nil
}

func (r *request) freeSamplers() {
	llama.SamplerFree(r.smpl)
	llama.SamplerFree(r.grammar)
	r.smpl, r.grammar = 0, 0
}

func (m *Model) finishAll(active []*request) {
	for _, r := range active {
		m.finish(r, FinishCancelled, ErrClosed)
	}
}

// Embed returns one L2-normalised vector per input, pooled as the model
// says (mean when it says nothing). The model must be loaded with
// ModelOptions.Embeddings. ctx ends the wait and the work between inputs.
func (m *Model) Embed(ctx context.Context, inputs [][]llama.Token) ([][]float32, error) {
	if !m.embeddings {
		return nil, fmt.Errorf("%w: start the worker with --embeddings", ErrNoEmbeddings)
	}
	if m.pooling == llama.PoolingTypeRank {
		return nil, fmt.Errorf("%w: it is a reranker (rank pooling)", ErrNoEmbeddings)
	}
	for i, in := range inputs {
		if len(in) == 0 {
			return nil, fmt.Errorf("embed input %d: empty", i)
		}
		if len(in) > m.CtxSize {
			return nil, fmt.Errorf("%w: input %d is %d tokens, context size is %d", ErrPromptTooLong, i, len(in), m.CtxSize)
		}
	}
	var cancel atomic.Bool
	e := &embedRequest{inputs: inputs, cancel: &cancel, out: make(chan embedResult, 1)}
	select {
	case m.embedCh <- e:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-m.quit:
		return nil, ErrClosed
	}
	select {
	case r := <-e.out:
		return r.vecs, r.err
	case <-ctx.Done():
		cancel.Store(true)
		<-e.out
		return nil, ctx.Err()
	}
}

// embed runs on the loop: one input at a time in sequence 0.
func (m *Model) embed(mem llama.Memory, e *embedRequest) {
	encoder := llama.ModelHasEncoder(m.model) && !llama.ModelHasDecoder(m.model)
	var vecs [][]float32
	for i, in := range e.inputs {
		if e.cancel.Load() {
			e.out <- embedResult{err: errors.New("cancelled")}
			return
		}
		llama.MemoryClear(mem, true)
		m.batch.Clear()
		for pos, tok := range in {
			if err := m.batch.Add(tok, llama.Pos(pos), []llama.SeqId{0}, true); err != nil {
				e.out <- embedResult{err: fmt.Errorf("embed input %d: %w", i, err)}
				return
			}
		}
		t0 := time.Now()
		var rc int32
		var err error
		if encoder {
			rc, err = llama.Encode(m.lctx, m.batch)
		} else {
			rc, err = llama.Decode(m.lctx, m.batch)
		}
		m.stats.decodes.Add(1)
		m.stats.tokens.Add(int64(len(in)))
		m.stats.decodeNS.Add(int64(time.Since(t0)))
		if rc != 0 || err != nil {
			e.out <- embedResult{err: fmt.Errorf("embed input %d: llama_decode returned %d (%v)", i, rc, err)}
			return
		}
		v, _ := llama.GetEmbeddingsSeq(m.lctx, 0, int32(m.nEmbd))
		if v == nil {
			e.out <- embedResult{err: fmt.Errorf("%w: llama.cpp returned no pooled vector", ErrNoEmbeddings)}
			return
		}
		vecs = append(vecs, normalize(v))
	}
	llama.MemoryClear(mem, true)
	e.out <- embedResult{vecs: vecs}
}

// normalize copies v scaled to unit length, as OpenAI's embeddings are.
func normalize(v []float32) []float32 {
	var sum float64
	for _, x := range v {
		sum += float64(x) * float64(x)
	}
	out := make([]float32, len(v))
	scale := 1.0
	if sum > 0 {
		scale = 1 / math.Sqrt(sum)
	}
	for i, x := range v {
		out[i] = float32(float64(x) * scale)
	}
	return out
}
