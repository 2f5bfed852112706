package worker

import (
	"encoding/json"
	"fmt"
	"strings"
)

// apiError is the OpenAI error shape: {"error":{"message","type","param","code"}}.
type apiError struct {
	Status  int     `json:"-"`
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    string  `json:"code"`
}

func (e *apiError) Error() string { return e.Message }

func invalid(param, code, format string, args ...any) *apiError {
	p := param
	var pp *string
	if p != "" {
		pp = &p
	}
	return &apiError{Status: 400, Type: "invalid_request_error", Param: pp, Code: code, Message: fmt.Sprintf(format, args...)}
}

// stringList accepts a JSON string or array of strings (OpenAI's "stop" and
// "prompt" take both).
type stringList []string

func (s *stringList) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*s = nil
		return nil
	}
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = stringList{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("want a string or an array of strings")
	}
	*s = many
	return nil
}

// sampling holds the request fields both endpoints share.
type sampling struct {
	Model       string     `json:"model"`
	MaxTokens   *int       `json:"max_tokens"`
	Temperature *float64   `json:"temperature"`
	TopP        *float64   `json:"top_p"`
	TopK        *int       `json:"top_k"`
	Seed        *int64     `json:"seed"`
	Stop        stringList `json:"stop"`
	Stream      bool       `json:"stream"`
	N           *int       `json:"n"`
	IgnoreEOS   bool       `json:"ignore_eos"` // llama-server's extension, for benchmarks
	// CachePrompt false decodes the whole prompt even when a slot holds a
	// prefix of it (llama-server's extension; default true).
	CachePrompt *bool `json:"cache_prompt"`
}

type completionRequest struct {
	sampling
	Prompt *stringList `json:"prompt"`
}

type chatContent struct{ text string }

// UnmarshalJSON accepts a string or an array of {"type":"text","text":...}
// parts; other part types (images) are refused.
func (c *chatContent) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	if err := json.Unmarshal(b, &c.text); err == nil {
		return nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(b, &parts); err != nil {
		return fmt.Errorf("want a string or an array of content parts")
	}
	var sb strings.Builder
	for _, p := range parts {
		if p.Type != "text" {
			return fmt.Errorf("content part type %q not supported (text only)", p.Type)
		}
		sb.WriteString(p.Text)
	}
	c.text = sb.String()
	return nil
}

type chatMessage struct {
	Role    string      `json:"role"`
	Content chatContent `json:"content"`
}

type chatRequest struct {
	sampling
	Messages            []chatMessage `json:"messages"`
	MaxCompletionTokens *int          `json:"max_completion_tokens"`
}

var chatRoles = map[string]bool{"system": true, "developer": true, "user": true, "assistant": true, "tool": true}

const maxStops = 4

// validate checks the shared fields and fills defaults.
func (s *sampling) validate() *apiError {
	if s.N != nil && *s.N != 1 {
		return invalid("n", "unsupported_value", "n=%d is not supported; this worker returns one choice (n=1)", *s.N)
	}
	if s.MaxTokens != nil && *s.MaxTokens < 1 {
		return invalid("max_tokens", "invalid_value", "max_tokens must be at least 1, got %d", *s.MaxTokens)
	}
	if s.Temperature != nil && (*s.Temperature < 0 || *s.Temperature > 2) {
		return invalid("temperature", "invalid_value", "temperature must be between 0 and 2, got %g", *s.Temperature)
	}
	if s.TopP != nil && (*s.TopP <= 0 || *s.TopP > 1) {
		return invalid("top_p", "invalid_value", "top_p must be in (0, 1], got %g", *s.TopP)
	}
	if s.TopK != nil && *s.TopK < 0 {
		return invalid("top_k", "invalid_value", "top_k must be 0 (off) or more, got %d", *s.TopK)
	}
	if s.Seed != nil && (*s.Seed < 0 || *s.Seed > 1<<32-1) {
		return invalid("seed", "invalid_value", "seed must be between 0 and 4294967295, got %d", *s.Seed)
	}
	if len(s.Stop) > maxStops {
		return invalid("stop", "invalid_value", "at most %d stop strings, got %d", maxStops, len(s.Stop))
	}
	for _, st := range s.Stop {
		if st == "" {
			return invalid("stop", "invalid_value", "stop strings must not be empty")
		}
	}
	return nil
}

// Response shapes (OpenAI's).

type usage struct {
	PromptTokens        int            `json:"prompt_tokens"`
	CompletionTokens    int            `json:"completion_tokens"`
	TotalTokens         int            `json:"total_tokens"`
	PromptTokensDetails *promptDetails `json:"prompt_tokens_details,omitempty"`
}

type promptDetails struct {
	CachedTokens int `json:"cached_tokens"` // taken from the slot's cache, not decoded
}

// timings follows llama-server's field names: prompt_n counts the prompt
// tokens decoded, cache_n those taken from the slot's cache.
type timings struct {
	CacheN             int     `json:"cache_n"`
	PromptN            int     `json:"prompt_n"`
	PromptMS           float64 `json:"prompt_ms"`
	PromptPerSecond    float64 `json:"prompt_per_second"`
	PredictedN         int     `json:"predicted_n"`
	PredictedMS        float64 `json:"predicted_ms"`
	PredictedPerSecond float64 `json:"predicted_per_second"`
}

type completionChoice struct {
	Index        int     `json:"index"`
	Text         string  `json:"text"`
	Logprobs     any     `json:"logprobs"`
	FinishReason *string `json:"finish_reason"`
}

type chatDelta struct {
	Role    string `json:"role,omitempty"`
	Content string `json:"content,omitempty"`
}

// chatMessageOut is a response's message: content is always there, a
// string, empty when the model said nothing.
type chatMessageOut struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type chatChoice struct {
	Index        int             `json:"index"`
	Message      *chatMessageOut `json:"message,omitempty"`
	Delta        *chatDelta      `json:"delta,omitempty"`
	Logprobs     any             `json:"logprobs"`
	FinishReason *string         `json:"finish_reason"`
}

type response struct {
	ID      string   `json:"id"`
	Object  string   `json:"object"`
	Created int64    `json:"created"`
	Model   string   `json:"model"`
	Choices any      `json:"choices"`
	Usage   *usage   `json:"usage,omitempty"`
	Timings *timings `json:"timings,omitempty"`
}
