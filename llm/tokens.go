package llm

import (
	"fmt"
	"strings"

	"github.com/hybridgroup/yzma/pkg/llama"
)

// TokenizeText turns text into tokens as llama-server's /tokenize does:
// addSpecial adds BOS (and EOS) as the model wants, parseSpecial reads
// special tokens written as text ("<s>") as those tokens.
func (m *Model) TokenizeText(text string, addSpecial, parseSpecial bool) ([]Token, error) {
	if i := strings.IndexByte(text, 0); i >= 0 {
		return nil, fmt.Errorf("%w at byte %d", ErrNUL, i)
	}
	return llama.Tokenize(m.vocab, text, addSpecial, parseSpecial), nil
}

// Detokenize turns tokens into text; special tokens are written as their
// text. Every token must be in the vocabulary (see NVocab).
func (m *Model) Detokenize(tokens []Token) (string, error) {
	n := m.NVocab()
	for i, t := range tokens {
		if t < 0 || int(t) >= n {
			return "", fmt.Errorf("token %d (at %d) is not in the vocabulary of %d tokens", t, i, n)
		}
	}
	return llama.Detokenize(m.vocab, tokens, false, true), nil
}
