package worker

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"

	"github.com/rbee-dev/rbee/llm"
)

// embeddingInput accepts OpenAI's input forms: a string, an array of
// strings, an array of token ids, or an array of arrays of token ids.
type embeddingInput struct {
	texts  []string
	tokens [][]llm.Token
}

func (in *embeddingInput) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		in.texts = []string{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err == nil {
		in.texts = many
		return nil
	}
	var ids []int32
	if err := json.Unmarshal(b, &ids); err == nil {
		in.tokens = [][]llm.Token{toTokens(ids)}
		return nil
	}
	var idss [][]int32
	if err := json.Unmarshal(b, &idss); err == nil {
		for _, ids := range idss {
			in.tokens = append(in.tokens, toTokens(ids))
		}
		return nil
	}
	return errors.New("want a string, an array of strings, or an array of token ids")
}

func toTokens(ids []int32) []llm.Token {
	out := make([]llm.Token, len(ids))
	for i, id := range ids {
		out[i] = llm.Token(id)
	}
	return out
}

type embeddingRequest struct {
	Model          string          `json:"model"`
	Input          *embeddingInput `json:"input"`
	EncodingFormat string          `json:"encoding_format"`
	Dimensions     *int            `json:"dimensions"`
	User           string          `json:"user"`
}

type embeddingData struct {
	Object    string `json:"object"`
	Index     int    `json:"index"`
	Embedding any    `json:"embedding"` // []float32, or a base64 string of little-endian float32s
}

type embeddingResponse struct {
	Object string          `json:"object"`
	Data   []embeddingData `json:"data"`
	Model  string          `json:"model"`
	Usage  struct {
		PromptTokens int `json:"prompt_tokens"`
		TotalTokens  int `json:"total_tokens"`
	} `json:"usage"`
}

// maxEmbeddingInputs bounds the inputs of one request.
const maxEmbeddingInputs = 2048

func (s *Server) embeddings(w http.ResponseWriter, r *http.Request) {
	m := s.ready(w)
	if m == nil {
		return
	}
	if !m.Embeddings() {
		writeError(w, invalid("model", "model_not_embedding",
			"this worker serves completions; embeddings need a worker started with --embeddings"))
		return
	}
	var req embeddingRequest
	fields, e := decodeBody(w, r, &req)
	if e == nil {
		e = onlyFields(fields, "model", "input", "encoding_format", "dimensions", "user")
	}
	if e != nil {
		writeError(w, e)
		return
	}
	if e := req.validate(m); e != nil {
		writeError(w, e)
		return
	}
	// Admitted before tokenizing: Close waits for admitted requests before
	// it frees the model the tokenizer reads.
	if !s.admit(w) {
		return
	}
	defer s.leave()
	inputs := req.Input.tokens
	for i, text := range req.Input.texts {
		toks, e := s.tokenize(m, fmt.Sprintf("input[%d]", i), text)
		if e != nil {
			writeError(w, e)
			return
		}
		inputs = append(inputs, toks)
	}
	vecs, err := m.Embed(r.Context(), inputs)
	if err != nil {
		if r.Context().Err() != nil {
			s.cancelled.Add(1)
			return
		}
		code, status := "embedding_failed", http.StatusInternalServerError
		if errors.Is(err, llm.ErrNoEmbeddings) {
			code, status = "model_not_embedding", http.StatusBadRequest
		}
		writeError(w, &apiError{Status: status, Type: "invalid_request_error", Code: code, Message: err.Error()})
		return
	}
	s.served.Add(1)
	resp := embeddingResponse{Object: "list", Model: s.cfg.ModelName, Data: make([]embeddingData, len(vecs))}
	for i, v := range vecs {
		d := embeddingData{Object: "embedding", Index: i, Embedding: v}
		if req.EncodingFormat == "base64" {
			d.Embedding = encodeFloats(v)
		}
		resp.Data[i] = d
		resp.Usage.PromptTokens += len(inputs[i])
	}
	resp.Usage.TotalTokens = resp.Usage.PromptTokens
	writeJSON(w, http.StatusOK, resp)
}

func (req *embeddingRequest) validate(m *llm.Model) *apiError {
	if req.Input == nil || len(req.Input.texts)+len(req.Input.tokens) == 0 {
		return invalid("input", "missing_input", "input is required: a string or an array of strings")
	}
	if n := len(req.Input.texts) + len(req.Input.tokens); n > maxEmbeddingInputs {
		return invalid("input", "invalid_value", "at most %d inputs per request, got %d", maxEmbeddingInputs, n)
	}
	for i, t := range req.Input.texts {
		if strings.TrimSpace(t) == "" {
			return invalid("input", "invalid_value", "input[%d] is empty", i)
		}
	}
	for i, toks := range req.Input.tokens {
		if len(toks) == 0 {
			return invalid("input", "invalid_value", "input[%d] is empty", i)
		}
		if len(toks) > m.CtxSize {
			return invalid("input", "context_length_exceeded", "input[%d] is %d tokens; this worker's context holds %d", i, len(toks), m.CtxSize)
		}
		for _, t := range toks {
			if t < 0 || int(t) >= m.NVocab() {
				return invalid("input", "invalid_value", "input[%d] holds token %d; the vocabulary has %d", i, t, m.NVocab())
			}
		}
	}
	switch req.EncodingFormat {
	case "", "float", "base64":
	default:
		return invalid("encoding_format", "invalid_value", "encoding_format %q is not float or base64", req.EncodingFormat)
	}
	if req.Dimensions != nil && *req.Dimensions != m.NEmbd() {
		return invalid("dimensions", "unsupported_value", "this model's embeddings have %d dimensions; dimensions=%d is not supported", m.NEmbd(), *req.Dimensions)
	}
	return nil
}

func encodeFloats(v []float32) string {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return base64.StdEncoding.EncodeToString(b)
}
