package worker_test

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/rbee-dev/rbee/internal/testmodel"
)

// alphabetFrom is what the alphabet model continues after prompt's last
// letter.
func alphabetFrom(last byte) string {
	abc := "abcdefghijklmnopqrstuvwxyz"
	if last >= 'A' && last <= 'Z' {
		abc = strings.ToUpper(abc)
	}
	return abc[strings.IndexByte(abc, last)+1:]
}

// longGreedy asks for n tokens past the end of the alphabet: ignore_eos
// keeps the stream going on end-of-stream tokens, whose text is empty, so
// the text is exact and the stream runs n decode steps.
func longGreedy(prompt string, n int) map[string]any {
	return greedy(prompt, map[string]any{"stream": true, "ignore_eos": true, "max_tokens": n, "stream_options": map[string]any{"include_usage": true}})
}

type streamResult struct {
	text   string
	finish string
	usage  int
	done   bool
}

func readResult(t *testing.T, s *sseStream) streamResult {
	t.Helper()
	text, chunks, done := s.readAll(t, false)
	r := streamResult{text: text, done: done}
	// The finish chunk, then (with include_usage) the usage chunk.
	for _, c := range chunks {
		if len(c.Choices) > 0 && c.Choices[0].FinishReason != nil {
			r.finish = *c.Choices[0].FinishReason
		}
		if c.Usage != nil {
			r.usage = c.Usage.CompletionTokens
		}
	}
	return r
}

// TestConcurrentStreamsShareBatches runs four greedy streams at once, each
// on its own prompt: each gets exactly its own continuation (no sequence
// leaks into another), and the worker reports decodes that held all four.
func TestConcurrentStreamsShareBatches(t *testing.T) {
	t.Parallel()
	const n = 1000 // decode steps per stream: far longer than it takes to start the others
	w := startWorker(t, "--slots", "4", "--ctx-size", "4096")
	prompts := []string{"abc", "ghi", "mno", "ABC"}
	results := make([]streamResult, len(prompts))
	var wg sync.WaitGroup
	for i, p := range prompts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := openStream(t, w.URL, "/v1/completions", longGreedy(p, n))
			defer s.close()
			results[i] = readResult(t, s)
		}()
	}
	wg.Wait()
	for i, p := range prompts {
		want := alphabetFrom(p[len(p)-1])
		if r := results[i]; r.text != want || r.finish != "length" || r.usage != n || !r.done {
			t.Errorf("stream %q: got %q finish %q tokens %d done %v, want %q length %d", p, r.text, r.finish, r.usage, r.done, want, n)
		}
	}
	_, h := health(t, w.URL)
	if got := num(h, "batches", "max_seqs"); got != 4 {
		t.Errorf("batches.max_seqs = %v, want 4 (the streams were not decoded together): %v", got, h["batches"])
	}
	if got := num(h, "batches", "shared_decodes"); got < n/2 {
		t.Errorf("batches.shared_decodes = %v, want most of the %d steps shared", got, n)
	}
	if decodes, tokens := num(h, "batches", "decodes"), num(h, "batches", "tokens"); decodes >= tokens {
		t.Errorf("decodes = %v for %v tokens: nothing was batched", decodes, tokens)
	}
}

// TestCancelOneStream closes one of three running streams: the other two
// finish with their exact text.
func TestCancelOneStream(t *testing.T) {
	t.Parallel()
	const n = 1000
	w := startWorker(t, "--slots", "3", "--ctx-size", "4096")
	prompts := []string{"abc", "ghi", "ABC"}
	streams := make([]*sseStream, len(prompts))
	for i, p := range prompts {
		streams[i] = openStream(t, w.URL, "/v1/completions", longGreedy(p, n))
		if _, err := streams[i].next(); err != nil {
			t.Fatal(err)
		}
	}
	streams[1].close() // the client of "ghi" goes away mid-stream
	for _, i := range []int{0, 2} {
		// The first chunk was read above; the rest is the continuation after it.
		r := readResult(t, streams[i])
		streams[i].close()
		want := alphabetFrom(prompts[i][len(prompts[i])-1])[1:]
		if r.text != want || r.finish != "length" || r.usage != n {
			t.Errorf("stream %q: got %q finish %q tokens %d, want %q length %d", prompts[i], r.text, r.finish, r.usage, want, n)
		}
	}
	h := waitHealth(t, w.URL, "all slots free", func(h map[string]any) bool { return num(h, "slots_busy") == 0 })
	if got := num(h, "requests", "cancelled"); got != 1 {
		t.Errorf("cancelled = %v, want 1", got)
	}
	if got := num(h, "requests", "served"); got != 2 {
		t.Errorf("served = %v, want 2", got)
	}
}

// TestPromptCache: a request that extends an earlier one decodes only its
// new tokens, goes to the slot holding its prefix, and answers exactly what
// it answers with the cache off.
func TestPromptCache(t *testing.T) {
	t.Parallel()
	w := startWorker(t, "--slots", "2", "--ctx-size", "256")
	type answer struct {
		text          string
		prompt, cache int
		promptN       int
	}
	ask := func(prompt string, extra map[string]any) answer {
		t.Helper()
		resp, body := post(t, w.URL, "/v1/completions", greedy(prompt, extra))
		if resp.StatusCode != 200 {
			t.Fatalf("%q: %d %s", prompt, resp.StatusCode, body)
		}
		var c struct {
			Choices []struct {
				Text string `json:"text"`
			} `json:"choices"`
			Usage struct {
				PromptTokens        int `json:"prompt_tokens"`
				PromptTokensDetails struct {
					CachedTokens int `json:"cached_tokens"`
				} `json:"prompt_tokens_details"`
			} `json:"usage"`
			Timings struct {
				CacheN  int `json:"cache_n"`
				PromptN int `json:"prompt_n"`
			} `json:"timings"`
		}
		if err := json.Unmarshal(body, &c); err != nil {
			t.Fatal(err)
		}
		if c.Timings.CacheN != c.Usage.PromptTokensDetails.CachedTokens {
			t.Errorf("%q: timings.cache_n %d != usage cached_tokens %d", prompt, c.Timings.CacheN, c.Usage.PromptTokensDetails.CachedTokens)
		}
		return answer{c.Choices[0].Text, c.Usage.PromptTokens, c.Usage.PromptTokensDetails.CachedTokens, c.Timings.PromptN}
	}
	tests := []struct {
		name, prompt string
		noCache      bool
		wantCached   int
	}{
		{"first, lower", "abcdefghij", false, 0},
		{"first, upper: another slot", "ABCDEFGHIJ", false, 0},
		// BOS + 13 letters are cached (the 10 prompt letters and 3 generated
		// ones); the last prompt token is decoded again for its logits.
		{"extends lower", "abcdefghijklm", false, 13},
		{"extends upper", "ABCDEFGHIJKLM", false, 13},
		{"cache off", "abcdefghijklm", true, 0},
		{"shorter prefix", "abcdefg", false, 7},
	}
	for _, tt := range tests {
		extra := map[string]any{}
		if tt.noCache {
			extra["cache_prompt"] = false
		}
		got := ask(tt.prompt, extra)
		want := alphabetFrom(tt.prompt[len(tt.prompt)-1])
		if got.text != want {
			t.Errorf("%s: text %q, want %q", tt.name, got.text, want)
		}
		if got.cache != tt.wantCached || got.prompt != len(tt.prompt)+1 || got.promptN != got.prompt-got.cache {
			t.Errorf("%s: prompt %d cached %d decoded %d, want %d cached %d", tt.name, got.prompt, got.cache, got.promptN, len(tt.prompt)+1, tt.wantCached)
		}
	}
	_, h := health(t, w.URL)
	if got := num(h, "batches", "cache_hits"); got != 3 {
		t.Errorf("batches.cache_hits = %v, want 3", got)
	}
}

func TestEmbeddings(t *testing.T) {
	t.Parallel()
	w := startWorker(t, "--embeddings", "--ctx-size", "128")
	_, h := health(t, w.URL)
	if h["embeddings"] != true || num(h, "n_embd") != float64(testmodel.AlphabetSpec.Embd) {
		t.Fatalf("health: embeddings %v n_embd %v", h["embeddings"], h["n_embd"])
	}
	type embResp struct {
		Object string `json:"object"`
		Data   []struct {
			Object    string          `json:"object"`
			Index     int             `json:"index"`
			Embedding json.RawMessage `json:"embedding"`
		} `json:"data"`
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
			TotalTokens  int `json:"total_tokens"`
		} `json:"usage"`
	}
	embed := func(body any) ([][]float32, embResp) {
		t.Helper()
		resp, data := post(t, w.URL, "/v1/embeddings", body)
		if resp.StatusCode != 200 {
			t.Fatalf("embeddings: %d %s", resp.StatusCode, data)
		}
		var r embResp
		if err := json.Unmarshal(data, &r); err != nil {
			t.Fatal(err)
		}
		var out [][]float32
		for _, d := range r.Data {
			var v []float32
			if err := json.Unmarshal(d.Embedding, &v); err != nil {
				var s string
				if err := json.Unmarshal(d.Embedding, &s); err != nil {
					t.Fatalf("embedding is neither floats nor base64: %s", d.Embedding)
				}
				b, err := base64.StdEncoding.DecodeString(s)
				if err != nil {
					t.Fatal(err)
				}
				for i := 0; i+4 <= len(b); i += 4 {
					v = append(v, math.Float32frombits(binary.LittleEndian.Uint32(b[i:])))
				}
			}
			out = append(out, v)
		}
		return out, r
	}
	one, r := embed(map[string]any{"input": "hello world"})
	if r.Object != "list" || len(one) != 1 || r.Data[0].Object != "embedding" || r.Usage.PromptTokens != 12 || r.Usage.TotalTokens != 12 {
		t.Fatalf("response shape: %+v", r)
	}
	if len(one[0]) != testmodel.AlphabetSpec.Embd {
		t.Fatalf("vector has %d dimensions, want the model's %d", len(one[0]), testmodel.AlphabetSpec.Embd)
	}
	var norm float64
	for _, x := range one[0] {
		norm += float64(x) * float64(x)
	}
	if math.Abs(norm-1) > 1e-4 {
		t.Errorf("|v|² = %v, want 1 (normalised)", norm)
	}
	two, _ := embed(map[string]any{"input": []string{"hello world", "xyz"}})
	b64, _ := embed(map[string]any{"input": "hello world", "encoding_format": "base64"})
	if len(two) != 2 || !equal(two[0], one[0]) || !equal(b64[0], one[0]) {
		t.Errorf("same input, different vectors: %v / %v / %v", one[0][:4], two[0][:4], b64[0][:4])
	}
	if equal(two[1], one[0]) {
		t.Error("different inputs, same vector")
	}

	resp, body := post(t, w.URL, "/v1/completions", greedy("abc", nil))
	if resp.StatusCode != 400 || !strings.Contains(string(body), "unsupported_endpoint") {
		t.Errorf("completion on an embeddings worker: %d %s", resp.StatusCode, body)
	}
	resp, body = post(t, w.URL, "/v1/embeddings", `{"input":"a\u0000b"}`)
	if resp.StatusCode != 400 || !strings.Contains(string(body), "NUL") {
		t.Errorf("NUL input: %d %s", resp.StatusCode, body)
	}
}

func TestEmbeddingsRefusedByCompletionWorker(t *testing.T) {
	t.Parallel()
	w := startWorker(t)
	resp, body := post(t, w.URL, "/v1/embeddings", `{"input":"abc"}`)
	var e chunk
	if err := json.Unmarshal(body, &e); err != nil || e.Error == nil || resp.StatusCode != 400 || e.Error.Code != "model_not_embedding" {
		t.Errorf("got %d %s, want 400 model_not_embedding", resp.StatusCode, body)
	}
}

func equal(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestBadInputKeepsWorkerUp sends what once killed or stalled the worker —
// a NUL byte in a prompt, a prompt thousands of times the context — and
// array-form chat content, then checks the worker still serves.
func TestBadInputKeepsWorkerUp(t *testing.T) {
	t.Parallel()
	w := startWorker(t, "--ctx-size", "256")
	huge := strings.Repeat("abcdefgh ", 700_000) // 6.3 MB, under the body limit
	tests := []struct {
		name, path, body string
		status           int
		code             string
	}{
		{"nul prompt", "/v1/completions", `{"prompt":"ab\u0000c"}`, 400, "invalid_value"},
		{"nul chat", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x\u0000"}]}`, 400, "invalid_value"},
		{"nul chat part", "/v1/chat/completions", `{"messages":[{"role":"user","content":[{"type":"text","text":"x\u0000"}]}]}`, 400, "invalid_value"},
		{"huge prompt", "/v1/completions", `{"prompt":"` + huge + `"}`, 400, "context_length_exceeded"},
		{"huge chat", "/v1/chat/completions", `{"messages":[{"role":"user","content":"` + huge + `"}]}`, 400, "context_length_exceeded"},
	}
	for _, tt := range tests {
		resp, body := post(t, w.URL, tt.path, tt.body)
		var e chunk
		if err := json.Unmarshal(body, &e); err != nil || e.Error == nil || resp.StatusCode != tt.status || e.Error.Code != tt.code {
			t.Errorf("%s: got %d %.300s, want %d %s", tt.name, resp.StatusCode, body, tt.status, tt.code)
		}
	}

	// Array-form content is used, not dropped, and the response always
	// carries message.content as a string (empty here: the alphabet model
	// ends the stream after the ChatML prompt's newline).
	resp, body := post(t, w.URL, "/v1/chat/completions", map[string]any{"temperature": 0, "messages": []map[string]any{
		{"role": "user", "content": []map[string]string{{"type": "text", "text": "abc"}, {"type": "text", "text": "def"}}},
	}})
	if resp.StatusCode != 200 {
		t.Fatalf("array content: %d %s", resp.StatusCode, body)
	}
	var c struct {
		Choices []struct {
			Message map[string]any `json:"message"`
		} `json:"choices"`
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(body, &c); err != nil {
		t.Fatal(err)
	}
	if content, ok := c.Choices[0].Message["content"].(string); !ok {
		t.Errorf("message.content missing or not a string: %s", body)
	} else if content != "" {
		t.Errorf("content = %q, want empty", content)
	}
	// Plain-string content gives the same prompt length: the parts were used.
	_, plain := post(t, w.URL, "/v1/chat/completions", map[string]any{"temperature": 0, "messages": []map[string]any{
		{"role": "user", "content": "abcdef"},
	}})
	var p struct {
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
		} `json:"usage"`
	}
	json.Unmarshal(plain, &p)
	if c.Usage.PromptTokens != p.Usage.PromptTokens || p.Usage.PromptTokens == 0 {
		t.Errorf("array content prompt_tokens %d, string content %d: parts not used", c.Usage.PromptTokens, p.Usage.PromptTokens)
	}

	if code, h := health(t, w.URL); code != http.StatusOK || h["status"] != "ready" {
		t.Fatalf("worker not ready after bad input: %d %v", code, h)
	}
	resp, body = post(t, w.URL, "/v1/completions", greedy("abc", nil))
	if resp.StatusCode != 200 || !strings.Contains(string(body), alphabetRest) {
		t.Fatalf("completion after bad input: %d %s", resp.StatusCode, body)
	}
	for _, crash := range []string{"goroutine ", "SIGABRT", "panic:"} {
		if strings.Contains(w.StderrText(), crash) {
			t.Errorf("stderr holds a crash (%q):\n%s", crash, w.StderrText())
		}
	}
}

// TestNextTurnFindsItsSlot: an agent sends its next turn the moment the
// answer ends; the slot holding the conversation must already be free
// then (it was freed only after the last byte went out: a turn sent at
// once went to the other, empty slot and decoded everything again).
func TestNextTurnFindsItsSlot(t *testing.T) {
	t.Parallel()
	w := startWorker(t, "--slots", "2", "--ctx-size", "256")
	ask := func(prompt string) int {
		t.Helper()
		resp, body := post(t, w.URL, "/v1/completions", greedy(prompt, map[string]any{"max_tokens": 2}))
		if resp.StatusCode != 200 {
			t.Fatalf("%q: %d %s", prompt, resp.StatusCode, body)
		}
		var c struct {
			Usage struct {
				PromptTokensDetails struct {
					CachedTokens int `json:"cached_tokens"`
				} `json:"prompt_tokens_details"`
			} `json:"usage"`
		}
		if err := json.Unmarshal(body, &c); err != nil {
			t.Fatal(err)
		}
		return c.Usage.PromptTokensDetails.CachedTokens
	}
	misses := 0
	for i := range 60 {
		first := string(rune('a'+i%13)) + "bcdefghij"
		// Streamed, as agents ask: the next turn goes out the moment
		// [DONE] is read, before the response's end.
		st := openStream(t, w.URL, "/v1/completions", greedy(first, map[string]any{"max_tokens": 2, "stream": true}))
		for {
			data, err := st.next()
			if err != nil {
				t.Fatalf("stream: %v", err)
			}
			if data == "[DONE]" {
				break
			}
		}
		// At once: the prompt extends the first, whose slot holds it.
		got := ask(first + "klm")
		st.close()
		if got < len(first) {
			misses++
		}
	}
	if misses > 0 {
		t.Errorf("%d of 60 next turns sent at once missed their slot's cache", misses)
	}
}
