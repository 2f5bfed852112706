package worker_test

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/rbee-dev/rbee/internal/testmodel"
)

// tokenA is the token of "a" in the test models' byte vocabulary.
var tokenA = fmt.Sprint(testmodel.ByteToken('a'))

// apiErr reads an OpenAI error body.
func apiErr(t *testing.T, body []byte) (code, param string) {
	t.Helper()
	var c chunk
	if err := json.Unmarshal(body, &c); err != nil || c.Error == nil {
		t.Fatalf("body is not an OpenAI error: %s", body)
	}
	if c.Error.Type == "" || c.Error.Message == "" {
		t.Errorf("error lacks type or message: %s", body)
	}
	if c.Error.Param != nil {
		param = *c.Error.Param
	}
	return c.Error.Code, param
}

// TestRefusedFields: a field the worker does not honour, or a value out of
// range, is a 400 that names the field.
func TestRefusedFields(t *testing.T) {
	t.Parallel()
	w := startWorker(t)
	chat := []map[string]any{{"role": "user", "content": "hi"}}
	tests := []struct {
		path  string
		field string
		value any
		code  string
	}{
		// Not honoured (yet).
		// The model has no chat template: tools need one (tools_test.go).
		{"/v1/chat/completions", "tools", []map[string]any{{"type": "function", "function": map[string]any{"name": "f"}}}, "unsupported_template"},
		{"/v1/chat/completions", "tool_choice", "required", "invalid_value"},
		{"/v1/chat/completions", "functions", []map[string]any{{"name": "f"}}, "unsupported_parameter"},
		{"/v1/chat/completions", "functions", []map[string]any{{"name": "f"}}, "unsupported_parameter"},
		{"/v1/chat/completions", "modalities", []string{"text", "audio"}, "unsupported_value"},
		{"/v1/chat/completions", "audio", map[string]any{"voice": "alloy"}, "unsupported_parameter"},
		{"/v1/chat/completions", "prediction", map[string]any{"type": "content", "content": "x"}, "unsupported_parameter"},
		{"/v1/chat/completions", "reasoning_effort", "low", "unsupported_parameter"},
		{"/v1/chat/completions", "web_search_options", map[string]any{}, "unsupported_parameter"},
		{"/v1/chat/completions", "mirostat", 2, "unsupported_parameter"},
		{"/v1/chat/completions", "prompt", "abc", "unsupported_parameter"},
		{"/v1/completions", "echo", true, "unsupported_value"},
		{"/v1/completions", "best_of", 3, "unsupported_value"},
		{"/v1/completions", "suffix", "xyz", "unsupported_value"},
		{"/v1/completions", "messages", chat, "unsupported_parameter"},
		{"/v1/completions", "top_logprobs", 2, "unsupported_parameter"},
		{"/v1/completions", "n_predict", 4, "unsupported_parameter"},
		// Out of range.
		{"/v1/completions", "min_p", 1.5, "invalid_value"},
		{"/v1/completions", "typical_p", 0, "invalid_value"},
		{"/v1/completions", "repeat_penalty", 0, "invalid_value"},
		{"/v1/completions", "repeat_last_n", -2, "invalid_value"},
		{"/v1/completions", "presence_penalty", 2.5, "invalid_value"},
		{"/v1/completions", "frequency_penalty", -3, "invalid_value"},
		{"/v1/completions", "logit_bias", map[string]any{tokenA: 101}, "invalid_value"},
		{"/v1/completions", "logit_bias", map[string]any{"x": 1}, "invalid_value"},
		{"/v1/completions", "logit_bias", map[string]any{"260": 1}, "invalid_value"},
		{"/v1/completions", "logprobs", 21, "invalid_value"},
		{"/v1/completions", "logprobs", -1, "invalid_value"},
		{"/v1/chat/completions", "top_logprobs", 21, "invalid_value"},
		{"/v1/chat/completions", "top_logprobs", 2, "invalid_value"}, // without logprobs: true
		{"/v1/completions", "n", 0, "invalid_value"},
		{"/v1/completions", "max_tokens", "ten", "invalid_json"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s %s=%v", tt.path, tt.field, tt.value), func(t *testing.T) {
			t.Parallel()
			body := map[string]any{tt.field: tt.value, "max_tokens": 2}
			if tt.field == "max_tokens" {
				body["max_tokens"] = tt.value
			}
			if strings.Contains(tt.path, "chat") {
				body["messages"] = chat
			} else {
				body["prompt"] = "abc"
			}
			resp, data := post(t, w.URL, tt.path, body)
			code, param := apiErr(t, data)
			if resp.StatusCode != 400 || code != tt.code || param != tt.field {
				t.Errorf("got %d code %q param %q, want 400 %q param %q: %s", resp.StatusCode, code, param, tt.code, tt.field, data)
			}
		})
	}
	// Fields real clients send that change nothing here are accepted.
	t.Run("harmless", func(t *testing.T) {
		body := map[string]any{"messages": chat, "max_tokens": 2, "user": "u1", "metadata": map[string]string{"k": "v"}, "store": false,
			"parallel_tool_calls": true, "service_tier": "auto", "response_format": map[string]any{"type": "text"}, "tools": []any{},
			"tool_choice": "none", "stream_options": map[string]any{"include_usage": true}, "modalities": []string{"text"}}
		resp, data := post(t, w.URL, "/v1/chat/completions", body)
		if resp.StatusCode != 200 {
			t.Errorf("got %d %s, want 200", resp.StatusCode, data)
		}
	})
}

// complete posts a completion and returns its first choice's text.
func complete(t *testing.T, url string, body map[string]any) string {
	t.Helper()
	resp, data := post(t, url, "/v1/completions", body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, data)
	}
	var c chunk
	if err := json.Unmarshal(data, &c); err != nil || len(c.Choices) == 0 {
		t.Fatalf("bad answer %s: %v", data, err)
	}
	return c.Choices[0].Text
}

// TestFieldsChangeOutput walks the sampling fields: on a random-weight
// model at temperature 1 with a fixed seed, each changes the text. The
// reference is the same request without the field, computed the same way
// (one slot, the whole prompt decoded each time), so equal texts would
// mean the field was ignored.
func TestFieldsChangeOutput(t *testing.T) {
	t.Parallel()
	w := startWorker(t, "--model", random3m, "--slots", "1", "--ctx-size", "512")
	base := func(extra map[string]any) map[string]any {
		b := map[string]any{"prompt": "Once upon a time", "temperature": 1, "seed": 42, "max_tokens": 24, "cache_prompt": false, "ignore_eos": true}
		for k, v := range extra {
			b[k] = v
		}
		return b
	}
	ref := complete(t, w.URL, base(nil))
	if again := complete(t, w.URL, base(nil)); again != ref {
		t.Fatalf("the same request gave %q then %q: the reference is not reproducible", ref, again)
	}
	if len(ref) < 8 {
		t.Fatalf("reference text %q is too short to take a stop string from", ref)
	}
	// A stop string: the first whole character after the fourth byte.
	i := 4
	for i < len(ref) && !utf8.RuneStart(ref[i]) {
		i++
	}
	_, size := utf8.DecodeRuneInString(ref[i:])
	stop := ref[i : i+size]

	tests := []struct {
		name       string
		extra, ref map[string]any // ref: the request it must differ from, besides the base
	}{
		{"temperature", map[string]any{"temperature": 0.3}, nil},
		{"top_k", map[string]any{"top_k": 3}, nil},
		{"top_p", map[string]any{"top_p": 0.2}, nil},
		{"min_p", map[string]any{"min_p": 0.9}, nil},
		{"typical_p", map[string]any{"typical_p": 0.2}, nil},
		{"repeat_penalty", map[string]any{"repeat_penalty": 1.8}, nil},
		{"repeat_last_n", map[string]any{"repeat_penalty": 1.8, "repeat_last_n": 2}, map[string]any{"repeat_penalty": 1.8}},
		{"presence_penalty", map[string]any{"presence_penalty": 2}, nil},
		{"frequency_penalty", map[string]any{"frequency_penalty": -2}, nil},
		{"logit_bias", map[string]any{"logit_bias": map[string]any{tokenA: 100}}, nil},
		{"seed", map[string]any{"seed": 43}, nil},
		{"stop", map[string]any{"stop": stop}, nil},
		{"max_tokens", map[string]any{"max_tokens": 3}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := complete(t, w.URL, base(tt.extra))
			if got == ref {
				t.Errorf("%s: same text as without it: %q", tt.name, got)
			}
			if tt.ref != nil {
				if other := complete(t, w.URL, base(tt.ref)); got == other {
					t.Errorf("%s: same text as %v: %q", tt.name, tt.ref, got)
				}
			}
			switch tt.name {
			case "logit_bias":
				if got != strings.Repeat("a", 24) {
					t.Errorf("logit_bias +100 on %q: got %q, want 24 a's", "a", got)
				}
			case "stop":
				if strings.Contains(got, stop) || !strings.HasPrefix(ref, got) {
					t.Errorf("stop %q: got %q of %q", stop, got, ref)
				}
			}
		})
	}
	t.Run("logit_bias bans", func(t *testing.T) {
		// The alphabet model continues "abc" with d; -100 on d stops that.
		got := complete(t, w.URL, base(map[string]any{"logit_bias": map[string]any{tokenA: -100, fmt.Sprint(testmodel.ByteToken('b')): 100}, "max_tokens": 4}))
		if got != "bbbb" {
			t.Errorf("got %q, want bbbb", got)
		}
	})
}

// lpChunk is what the logprobs tests read.
type lpChunk struct {
	Choices []struct {
		Index    int    `json:"index"`
		Text     string `json:"text"`
		Logprobs *struct {
			Content []struct {
				Token       string  `json:"token"`
				Logprob     float64 `json:"logprob"`
				Bytes       []int   `json:"bytes"`
				TopLogprobs []struct {
					Token   string  `json:"token"`
					Logprob float64 `json:"logprob"`
					Bytes   []int   `json:"bytes"`
				} `json:"top_logprobs"`
			} `json:"content"`
			Tokens        []string             `json:"tokens"`
			TokenLogprobs []float64            `json:"token_logprobs"`
			TopLogprobs   []map[string]float64 `json:"top_logprobs"`
			TextOffset    []int                `json:"text_offset"`
		} `json:"logprobs"`
	} `json:"choices"`
}

// streamLP reads a stream's chunks as lpChunk.
func streamLP(t *testing.T, url, path string, body map[string]any) []lpChunk {
	t.Helper()
	s := openStream(t, url, path, body)
	defer s.close()
	var out []lpChunk
	for {
		data, err := s.next()
		if err != nil {
			t.Fatalf("stream ended without [DONE]: %v", err)
		}
		if data == "[DONE]" {
			return out
		}
		var c lpChunk
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// TestLogprobs: the alphabet model, forced by logit_bias to write "a"
// after the chat prompt, reports the log-probabilities of its raw logits:
// after "a" it would say "b" (logit 12 against 0 for every other token).
func TestLogprobs(t *testing.T) {
	t.Parallel()
	w := startWorker(t)
	const n = 4
	// log p("a") after "a": logit 0 against about 12 for b (the RMS norm's
	// epsilon takes a little off), 0 for the other 258.
	wantA := -math.Log(math.Exp(12) + 259)
	for _, top := range []int{0, 3, 20} {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("chat top=%d stream=%v", top, stream), func(t *testing.T) {
				body := map[string]any{"messages": []map[string]any{{"role": "user", "content": "x"}}, "max_tokens": n, "temperature": 0,
					"logit_bias": map[string]any{tokenA: 100}, "logprobs": true, "top_logprobs": top, "stream": stream}
				var chunks []lpChunk
				if stream {
					chunks = streamLP(t, w.URL, "/v1/chat/completions", body)
				} else {
					resp, data := post(t, w.URL, "/v1/chat/completions", body)
					if resp.StatusCode != 200 {
						t.Fatalf("status %d: %s", resp.StatusCode, data)
					}
					var c lpChunk
					if err := json.Unmarshal(data, &c); err != nil {
						t.Fatal(err)
					}
					chunks = []lpChunk{c}
				}
				var got int
				for _, c := range chunks {
					for _, ch := range c.Choices {
						if ch.Logprobs == nil {
							continue
						}
						for _, tok := range ch.Logprobs.Content {
							got++
							if tok.Token != "a" || len(tok.Bytes) != 1 || tok.Bytes[0] != 'a' {
								t.Errorf("token %d = %q %v, want a", got, tok.Token, tok.Bytes)
							}
							if len(tok.TopLogprobs) != top {
								t.Errorf("token %d: %d top_logprobs, want %d", got, len(tok.TopLogprobs), top)
							}
							if got > 1 {
								if math.Abs(tok.Logprob-wantA) > 0.05 {
									t.Errorf("token %d: logprob %g, want %g (the raw logits')", got, tok.Logprob, wantA)
								}
								if top > 0 && tok.TopLogprobs[0].Token != "b" {
									t.Errorf("token %d: most likely %q, want b", got, tok.TopLogprobs[0].Token)
								}
							}
							for i := 1; i < len(tok.TopLogprobs); i++ {
								if tok.TopLogprobs[i].Logprob > tok.TopLogprobs[i-1].Logprob {
									t.Errorf("token %d: top_logprobs not in order: %+v", got, tok.TopLogprobs)
								}
							}
						}
					}
				}
				if got != n {
					t.Errorf("%d tokens with logprobs, want %d", got, n)
				}
			})
		}
	}
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("completions stream=%v", stream), func(t *testing.T) {
			body := map[string]any{"prompt": "abc", "temperature": 0, "max_tokens": 5, "logprobs": 2, "stream": stream}
			var chunks []lpChunk
			if stream {
				chunks = streamLP(t, w.URL, "/v1/completions", body)
			} else {
				_, data := post(t, w.URL, "/v1/completions", body)
				var c lpChunk
				if err := json.Unmarshal(data, &c); err != nil {
					t.Fatal(err)
				}
				chunks = []lpChunk{c}
			}
			var text string
			var tokens []string
			var offsets []int
			for _, c := range chunks {
				for _, ch := range c.Choices {
					text += ch.Text
					if ch.Logprobs == nil {
						continue
					}
					lp := ch.Logprobs
					if len(lp.Tokens) != len(lp.TokenLogprobs) || len(lp.Tokens) != len(lp.TopLogprobs) || len(lp.Tokens) != len(lp.TextOffset) {
						t.Fatalf("logprobs arrays of different lengths: %+v", lp)
					}
					tokens = append(tokens, lp.Tokens...)
					offsets = append(offsets, lp.TextOffset...)
					for i, m := range lp.TopLogprobs {
						if len(m) != 2 {
							t.Errorf("top_logprobs %v: %d entries, want 2", m, len(m))
						}
						if lp.TokenLogprobs[i] > 0 || lp.TokenLogprobs[i] < -0.01 {
							t.Errorf("token %q: logprob %g, want near 0 (p ≈ 0.998)", lp.Tokens[i], lp.TokenLogprobs[i])
						}
					}
				}
			}
			if text != "defgh" || strings.Join(tokens, "") != text {
				t.Errorf("text %q, tokens %q, want defgh in 5 tokens", text, tokens)
			}
			for i := range offsets {
				if offsets[i] != i {
					t.Errorf("text_offset = %v, want 0..4", offsets)
					break
				}
			}
		})
	}
}

// TestChoices: n asks for several choices, a prompt array for one (or n)
// per prompt.
func TestChoices(t *testing.T) {
	t.Parallel()
	w := startWorker(t)
	tests := []struct {
		name  string
		body  map[string]any
		chat  bool
		wants []string
	}{
		{"n=2", greedy("abc", map[string]any{"n": 2}), false, []string{alphabetRest, alphabetRest}},
		{"prompts", greedy("", map[string]any{"prompt": []string{"abc", "uvw"}}), false, []string{alphabetRest, "xyz"}},
		{"prompts n=2", greedy("", map[string]any{"prompt": []string{"abc", "uvw"}, "n": 2}), false, []string{alphabetRest, alphabetRest, "xyz", "xyz"}},
		{"chat n=3", map[string]any{"messages": []map[string]any{{"role": "user", "content": "x"}}, "n": 3, "max_tokens": 3,
			"temperature": 0, "logit_bias": map[string]any{tokenA: 100}}, true, []string{"aaa", "aaa", "aaa"}},
	}
	for _, tt := range tests {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s stream=%v", tt.name, stream), func(t *testing.T) {
				path := "/v1/completions"
				if tt.chat {
					path = "/v1/chat/completions"
				}
				body := map[string]any{"stream": stream}
				for k, v := range tt.body {
					body[k] = v
				}
				got := make([]string, len(tt.wants))
				finished := make([]int, len(tt.wants))
				var chunks []chunk
				if stream {
					s := openStream(t, w.URL, path, body)
					_, chunks, _ = s.readAll(t, tt.chat)
					s.close()
				} else {
					resp, data := post(t, w.URL, path, body)
					if resp.StatusCode != 200 {
						t.Fatalf("status %d: %s", resp.StatusCode, data)
					}
					var c chunk
					if err := json.Unmarshal(data, &c); err != nil {
						t.Fatal(err)
					}
					if len(c.Choices) != len(tt.wants) {
						t.Fatalf("%d choices, want %d: %s", len(c.Choices), len(tt.wants), data)
					}
					if c.Usage == nil || c.Usage.CompletionTokens == 0 {
						t.Errorf("usage = %+v", c.Usage)
					}
					chunks = []chunk{c}
				}
				for _, c := range chunks {
					for _, ch := range c.Choices {
						if ch.Index < 0 || ch.Index >= len(got) {
							t.Fatalf("choice index %d out of range", ch.Index)
						}
						switch {
						case ch.Message != nil:
							got[ch.Index] += ch.Message.Content
						case ch.Delta != nil:
							got[ch.Index] += ch.Delta.Content
						default:
							got[ch.Index] += ch.Text
						}
						if ch.FinishReason != nil {
							finished[ch.Index]++
						}
					}
				}
				for i := range got {
					if got[i] != tt.wants[i] || finished[i] != 1 {
						t.Errorf("choice %d: %q finished %d times, want %q once", i, got[i], finished[i], tt.wants[i])
					}
				}
			})
		}
	}
	t.Run("seeded choices differ", func(t *testing.T) {
		// At temperature 2 the alphabet model's next letter is less sure; the
		// choices of one seeded request each get their own draws.
		_, data := post(t, w.URL, "/v1/completions", map[string]any{"prompt": "a", "temperature": 2, "seed": 1, "n": 8, "max_tokens": 24, "ignore_eos": true})
		var c chunk
		if err := json.Unmarshal(data, &c); err != nil || len(c.Choices) != 8 {
			t.Fatalf("bad answer %s", data)
		}
		seen := map[string]bool{}
		for _, ch := range c.Choices {
			seen[ch.Text] = true
		}
		if len(seen) < 2 {
			t.Errorf("8 seeded choices all said %q", c.Choices[0].Text)
		}
	})
}

// TestTokenize covers /tokenize, /detokenize and GET /v1/models/{id}.
func TestTokenize(t *testing.T) {
	t.Parallel()
	w := startWorker(t)
	a, b, c := testmodel.ByteToken('a'), testmodel.ByteToken('b'), testmodel.ByteToken('c')
	var tok struct {
		Tokens []int `json:"tokens"`
	}
	resp, data := post(t, w.URL, "/tokenize", map[string]any{"content": "abc"})
	if err := json.Unmarshal(data, &tok); err != nil || resp.StatusCode != 200 || fmt.Sprint(tok.Tokens) != fmt.Sprint([]int{a, b, c}) {
		t.Errorf("tokenize abc = %d %s, want %v", resp.StatusCode, data, []int{a, b, c})
	}
	_, data = post(t, w.URL, "/tokenize", map[string]any{"content": "abc", "add_special": true, "model": "alphabet"})
	if err := json.Unmarshal(data, &tok); err != nil || fmt.Sprint(tok.Tokens) != fmt.Sprint([]int{testmodel.TokenBOS, a, b, c}) {
		t.Errorf("tokenize abc add_special = %s, want BOS first", data)
	}
	var pieces struct {
		Tokens []struct {
			ID    int `json:"id"`
			Piece any `json:"piece"`
		} `json:"tokens"`
	}
	_, data = post(t, w.URL, "/tokenize", map[string]any{"content": "ab", "with_pieces": true})
	if err := json.Unmarshal(data, &pieces); err != nil || len(pieces.Tokens) != 2 || pieces.Tokens[0].ID != a || pieces.Tokens[0].Piece != "a" || pieces.Tokens[1].Piece != "b" {
		t.Errorf("tokenize with_pieces = %s", data)
	}
	var detok struct {
		Content string `json:"content"`
	}
	resp, data = post(t, w.URL, "/detokenize", map[string]any{"tokens": []int{a, b, c}})
	if err := json.Unmarshal(data, &detok); err != nil || resp.StatusCode != 200 || detok.Content != "abc" {
		t.Errorf("detokenize = %d %s, want abc", resp.StatusCode, data)
	}
	resp, data = post(t, w.URL, "/detokenize", map[string]any{"tokens": []int{a, testmodel.VocabSize}})
	if code, param := apiErr(t, data); resp.StatusCode != 400 || param != "tokens" {
		t.Errorf("detokenize out of vocabulary = %d %s %s", resp.StatusCode, code, param)
	}
	resp, data = post(t, w.URL, "/tokenize", map[string]any{"content": "a", "extra": 1})
	if _, param := apiErr(t, data); resp.StatusCode != 400 || param != "extra" {
		t.Errorf("tokenize with an unknown field = %d %s", resp.StatusCode, data)
	}

	for _, tt := range []struct {
		id   string
		code int
	}{{"alphabet", 200}, {"other", 404}} {
		resp, err := http.Get(w.URL + "/v1/models/" + tt.id)
		if err != nil {
			t.Fatal(err)
		}
		var m struct {
			ID     string `json:"id"`
			Object string `json:"object"`
			Error  *struct {
				Type string `json:"type"`
				Code string `json:"code"`
			} `json:"error"`
		}
		err = json.NewDecoder(resp.Body).Decode(&m)
		resp.Body.Close()
		if err != nil || resp.StatusCode != tt.code {
			t.Errorf("GET /v1/models/%s: %d (%v), want %d", tt.id, resp.StatusCode, err, tt.code)
		}
		if tt.code == 200 && (m.ID != tt.id || m.Object != "model") {
			t.Errorf("GET /v1/models/%s: %+v", tt.id, m)
		}
		if tt.code == 404 && (m.Error == nil || m.Error.Type == "" || m.Error.Code != "model_not_found") {
			t.Errorf("GET /v1/models/%s: %+v, want an OpenAI error", tt.id, m)
		}
	}
}
