package llm

import (
	"context"
	"errors"

	"github.com/hybridgroup/yzma/pkg/llama"
)

// ErrClosed means the model was closed while a call waited on it.
var ErrClosed = errors.New("model closed")

// Slot is one sequence of the shared context, owned by one request at a
// time. Between requests it keeps the KV cache of its last sequence, so a
// request that shares a prefix with it decodes only what is new.
type Slot struct {
	ID int
	m  *Model
	// cache holds the tokens whose KV the context holds for this slot's
	// sequence. The decode loop writes it while a request runs; Acquire
	// reads it (under slotMu) only while the slot is free.
	cache []llama.Token
	seq   []llama.SeqId // {ID}, for llama_batch
}

type waiter struct {
	prompt []llama.Token
	got    chan *Slot // buffered 1
}

// Acquire takes the free slot whose cache shares the longest prefix with
// prompt (the least recently used among equals), waiting in line until one
// frees. ctx bounds the wait only.
func (m *Model) Acquire(ctx context.Context, prompt []llama.Token) (*Slot, error) {
	m.slotMu.Lock()
	if len(m.free) > 0 && len(m.waiters) == 0 {
		s := m.takeBest(prompt)
		m.slotMu.Unlock()
		return s, nil
	}
	w := &waiter{prompt: prompt, got: make(chan *Slot, 1)}
	m.waiters = append(m.waiters, w)
	m.slotMu.Unlock()
	select {
	case s := <-w.got:
		return s, nil
	case <-ctx.Done():
	case <-m.quit:
	}
	m.slotMu.Lock()
	for i, x := range m.waiters {
		if x == w {
			m.waiters = append(m.waiters[:i], m.waiters[i+1:]...)
			break
		}
	}
	m.slotMu.Unlock()
	select {
	case s := <-w.got: // handed a slot just as the wait ended: pass it on
		m.Release(s)
	default:
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, ErrClosed
}

// takeBest removes and returns the best free slot for prompt. slotMu is held.
// A slot's cached prefix counts when reusing it loses nothing (its whole
// cache is a prefix of the prompt) or covers at least half the prompt (as
// llama-server's slot similarity does), so a shared BOS or system prompt
// does not evict a conversation another slot holds. Among equals an empty
// slot wins, then the lowest id: llama.cpp puts only consecutive sequence
// ids of a batch into one micro-batch (non-unified KV), so busy slots
// packed at the low ids decode together.
func (m *Model) takeBest(prompt []llama.Token) *Slot {
	best, bestN := 0, -1
	for i, s := range m.free {
		n := 0
		if m.canReuse {
			n = commonPrefix(s.cache, prompt)
			if n < len(s.cache) && 2*n < len(prompt) {
				n = 0
			}
		}
		b := m.free[best]
		better := n > bestN
		if n == bestN {
			emptyS, emptyB := len(s.cache) == 0, len(b.cache) == 0
			better = (emptyS && !emptyB) || (emptyS == emptyB && s.ID < b.ID)
		}
		if better {
			best, bestN = i, n
		}
	}
	s := m.free[best]
	m.free = append(m.free[:best], m.free[best+1:]...)
	return s
}

// Release returns a slot taken with Acquire: to the first waiter in line,
// else to the free list.
func (m *Model) Release(s *Slot) {
	m.slotMu.Lock()
	defer m.slotMu.Unlock()
	if len(m.waiters) > 0 {
		w := m.waiters[0]
		m.waiters = m.waiters[1:]
		w.got <- s
		return
	}
	m.free = append(m.free, s)
}

func commonPrefix(a, b []llama.Token) int {
	n := min(len(a), len(b))
	for i := range n {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}
