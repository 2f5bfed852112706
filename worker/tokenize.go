package worker

import (
	"errors"
	"net/http"
	"unicode/utf8"

	"github.com/rbee-dev/rbee/llm"
)

// tokenizeRequest is llama-server's POST /tokenize body. Model is for a
// router in front (the queen's door picks the worker by it).
type tokenizeRequest struct {
	Model        string  `json:"model"`
	Content      *string `json:"content"`
	AddSpecial   bool    `json:"add_special"`
	ParseSpecial *bool   `json:"parse_special"` // default true
	WithPieces   bool    `json:"with_pieces"`
}

// tokenPiece is a token with its text: a string when the bytes are valid
// UTF-8, else the bytes as numbers (as llama-server does).
type tokenPiece struct {
	ID    llm.Token `json:"id"`
	Piece any       `json:"piece"`
}

func (s *Server) tokenizeHandler(w http.ResponseWriter, r *http.Request) {
	m := s.ready(w)
	if m == nil {
		return
	}
	var req tokenizeRequest
	fields, e := decodeBody(w, r, &req)
	if e == nil {
		e = onlyFields(fields, "model", "content", "add_special", "parse_special", "with_pieces")
	}
	if e == nil && req.Content == nil {
		e = invalid("content", "missing_content", "content is required")
	}
	if e != nil {
		writeError(w, e)
		return
	}
	// Counted (no slot needed): Close waits for it before freeing the
	// tokenizer.
	s.active.Add(1)
	defer s.active.Done()
	toks, err := m.TokenizeText(*req.Content, req.AddSpecial, req.ParseSpecial == nil || *req.ParseSpecial)
	if err != nil {
		code := "invalid_value"
		if !errors.Is(err, llm.ErrNUL) {
			code = "tokenize_failed"
		}
		writeError(w, invalid("content", code, "content: %v", err))
		return
	}
	if !req.WithPieces {
		if toks == nil {
			toks = []llm.Token{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"tokens": toks})
		return
	}
	out := make([]tokenPiece, len(toks))
	for i, t := range toks {
		b := m.TokenBytes(t)
		out[i] = tokenPiece{ID: t, Piece: string(b)}
		if !utf8.Valid(b) {
			out[i].Piece = byteInts(b)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"tokens": out})
}

// detokenizeRequest is llama-server's POST /detokenize body.
type detokenizeRequest struct {
	Model  string      `json:"model"`
	Tokens []llm.Token `json:"tokens"`
}

func (s *Server) detokenizeHandler(w http.ResponseWriter, r *http.Request) {
	m := s.ready(w)
	if m == nil {
		return
	}
	var req detokenizeRequest
	fields, e := decodeBody(w, r, &req)
	if e == nil {
		e = onlyFields(fields, "model", "tokens")
	}
	if e != nil {
		writeError(w, e)
		return
	}
	s.active.Add(1)
	defer s.active.Done()
	text, err := m.Detokenize(req.Tokens)
	if err != nil {
		writeError(w, invalid("tokens", "invalid_value", "tokens: %v", err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"content": text})
}
