package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/internal/testenv"
	"github.com/rbee-dev/rbee/internal/testmodel"
)

// TestOpenAIFrontDoor drives the queen's TCP port with the official
// OpenAI Go SDK: the models list names the fleet's models, completions
// streamed and not return the alphabet model's exact text, a model no
// hive knows is a 404, and the control routes stay off the door.
func TestOpenAIFrontDoor(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 {
		t.Fatalf("infer: exit %d\n%s", r.code, r.stderr)
	}
	ctx := context.Background()
	c := openai.NewClient(option.WithBaseURL("http://"+e.queen+"/v1/"), option.WithAPIKey("unused-on-loopback"), option.WithMaxRetries(0))

	page, err := c.Models.List(ctx)
	if err != nil {
		t.Fatalf("models list: %v", err)
	}
	var ids []string
	for _, m := range page.Data {
		ids = append(ids, m.ID)
	}
	if !slices.Contains(ids, "alphabet.gguf") {
		t.Errorf("models list %v, want alphabet.gguf", ids)
	}

	params := openai.CompletionNewParams{
		Model:       openai.CompletionNewParamsModel("alphabet.gguf"),
		Prompt:      openai.CompletionNewParamsPromptUnion{OfString: openai.String("abc")},
		Temperature: openai.Float(0),
		MaxTokens:   openai.Int(30),
	}
	comp, err := c.Completions.New(ctx, params)
	if err != nil {
		t.Fatalf("completion: %v", err)
	}
	if len(comp.Choices) != 1 || comp.Choices[0].Text != alphabetRest || comp.Model != "alphabet.gguf" {
		t.Errorf("completion %+v (model %q), want %q from alphabet.gguf", comp.Choices, comp.Model, alphabetRest)
	}

	streamed := params
	streamed.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream := c.Completions.NewStreaming(ctx, streamed)
	var text strings.Builder
	var usage int64
	for stream.Next() {
		usage = max(usage, stream.Current().Usage.CompletionTokens)
		if m := stream.Current().Model; m != "alphabet.gguf" {
			t.Errorf("a streamed chunk names model %q, want the name asked for", m)
		}
		for _, ch := range stream.Current().Choices {
			text.WriteString(ch.Text)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("streamed completion: %v", err)
	}
	if text.String() != alphabetRest {
		t.Errorf("streamed text %q, want %q", text.String(), alphabetRest)
	}
	if usage != int64(len(alphabetRest)) {
		t.Errorf("streamed usage: %d completion tokens, want %d (include_usage)", usage, len(alphabetRest))
	}

	// Chat, streamed and not, with usage: the same text as the worker's
	// own answer to the same request.
	ws := e.workers()
	if len(ws) != 1 {
		t.Fatalf("workers: %+v", ws)
	}
	direct := openai.NewClient(option.WithBaseURL("http://worker/v1/"), option.WithAPIKey("x"), option.WithMaxRetries(0),
		option.WithHTTPClient(unixHTTP(filepath.Join(e.home, ".rbee", "run", ws[0].ID+".sock"))))
	chat := openai.ChatCompletionNewParams{
		Model:       "alphabet.gguf",
		Messages:    []openai.ChatCompletionMessageParamUnion{openai.UserMessage("abc")},
		Temperature: openai.Float(0),
		MaxTokens:   openai.Int(12),
	}
	want, err := direct.Chat.Completions.New(ctx, chat)
	if err != nil || len(want.Choices) != 1 {
		t.Fatalf("chat from the worker directly: %v %+v", err, want)
	}
	got, err := c.Chat.Completions.New(ctx, chat)
	if err != nil || len(got.Choices) != 1 || got.Choices[0].Message.Content != want.Choices[0].Message.Content || got.Model != "alphabet.gguf" ||
		got.Usage.CompletionTokens != want.Usage.CompletionTokens {
		t.Errorf("chat through the door: %v %+v, want %q from alphabet.gguf (usage %+v)", err, got, want.Choices[0].Message.Content, want.Usage)
	}
	chatStream := chat
	chatStream.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	cs := c.Chat.Completions.NewStreaming(ctx, chatStream)
	var content strings.Builder
	var chatUsage int64
	for cs.Next() {
		ch := cs.Current()
		chatUsage = max(chatUsage, ch.Usage.CompletionTokens)
		if ch.Model != "alphabet.gguf" {
			t.Errorf("a chat chunk names model %q", ch.Model)
		}
		for _, c := range ch.Choices {
			content.WriteString(c.Delta.Content)
		}
	}
	if err := cs.Err(); err != nil || content.String() != want.Choices[0].Message.Content || chatUsage != want.Usage.CompletionTokens {
		t.Errorf("streamed chat: %v %q (usage %d), want %q (usage %d)", err, content.String(), chatUsage, want.Choices[0].Message.Content, want.Usage.CompletionTokens)
	}

	// Asked by its catalog id, the answer names the model that way too.
	var ms []hiveapi.Model
	if err := json.Unmarshal([]byte(e.rbee("model", "ls", "--json").stdout), &ms); err != nil || len(ms) != 1 {
		t.Fatalf("model ls: %v %+v", err, ms)
	}
	params.Model = openai.CompletionNewParamsModel(ms[0].ID)
	if comp, err := c.Completions.New(ctx, params); err != nil || comp.Model != ms[0].ID || comp.Choices[0].Text != alphabetRest {
		t.Errorf("by id: %v %+v, want model %q", err, comp, ms[0].ID)
	}

	params.Model = "no-such-model"
	_, err = c.Completions.New(ctx, params)
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound || !strings.Contains(apiErr.Message, "alphabet.gguf") {
		t.Errorf("unknown model: %v, want a 404 naming the known models", err)
	}
	// Bad bodies get OpenAI's error shape with the right status.
	for _, tt := range []struct {
		body string
		want int
	}{
		{`{"prompt":"abc"}`, http.StatusBadRequest},
		{`not json`, http.StatusBadRequest},
		{`{"model":"alphabet.gguf","prompt":"` + strings.Repeat("a", 9<<20) + `"}`, http.StatusRequestEntityTooLarge},
	} {
		resp, err := http.Post("http://"+e.queen+"/v1/completions", "application/json", strings.NewReader(tt.body))
		if err != nil {
			t.Fatal(err)
		}
		var eb struct {
			Error struct {
				Message string `json:"message"`
				Type    string `json:"type"`
			} `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&eb)
		resp.Body.Close()
		if resp.StatusCode != tt.want || eb.Error.Message == "" || eb.Error.Type == "" {
			t.Errorf("body %.40q: status %d %+v, want %d with an OpenAI error", tt.body, resp.StatusCode, eb, tt.want)
		}
	}
	// Prometheus metrics on the same port.
	resp, err := http.Get("http://" + e.queen + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`rbee_requests_total{model="alphabet.gguf",status="200"} 4`, `rbee_requests_total{model="unknown",status="404"} 1`,
		`rbee_time_to_first_token_seconds_bucket{model="alphabet.gguf"`, `rbee_hive_up{hive="localhost"} 1`, `rbee_device_memory_total_bytes{device="cpu",hive="localhost"}`} {
		if !strings.Contains(string(mb), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if ws := e.workers(); len(ws) != 1 {
		t.Errorf("%d workers after the door's requests, want the one warm worker", len(ws))
	}
	// Embeddings go to a worker started with --embeddings, beside it.
	emb, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "alphabet.gguf",
		Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"abc", "xyz"}}})
	if err != nil {
		t.Fatalf("embeddings: %v", err)
	}
	if len(emb.Data) != 2 || len(emb.Data[0].Embedding) != testmodel.AlphabetSpec.Embd || emb.Model != "alphabet.gguf" || emb.Usage.PromptTokens == 0 {
		t.Errorf("embeddings: %d vectors of %d, model %q, usage %+v", len(emb.Data), len(emb.Data[0].Embedding), emb.Model, emb.Usage)
	}
	var norm float64
	for _, v := range emb.Data[0].Embedding {
		norm += v * v
	}
	if math.Abs(norm-1) > 1e-3 {
		t.Errorf("embedding norm² %v, want 1 (normalised)", norm)
	}
	if ws := e.workers(); len(ws) != 2 || ws[0].Embeddings == ws[1].Embeddings {
		t.Errorf("workers after an embeddings request: %+v, want the completion worker and one --embeddings worker", ws)
	}
	// Completions still go to the completion worker.
	params.Model = "alphabet.gguf"
	if comp, err := c.Completions.New(ctx, params); err != nil || comp.Choices[0].Text != alphabetRest {
		t.Errorf("completion after embeddings: %v %+v", err, comp)
	}
	e.stopQueen()
}

// TestOpenAIKeys: with an API keys file the door answers only to its keys,
// a key limited to some models gets only those, and no key is logged.
func TestOpenAIKeys(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	keys := filepath.Join(e.home, "keys")
	const k1, k2 = "app1-0123456789abcdef", "app2-0123456789abcdef"
	if err := os.WriteFile(keys, []byte("# id key models\napp1 "+k1+" alphabet.gguf\napp2 "+k2+" other.gguf\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	q := testenv.Start(t, bins.Rbee, e.vars, "queen", "serve", "--api-keys", keys)
	if _, err := waitQueen(e); err != nil {
		t.Fatalf("%v\n%s", err, q.StderrText())
	}
	if r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 {
		t.Fatalf("the owner's keeper needs no key: exit %d\n%s", r.code, r.stderr)
	}
	ctx := context.Background()
	client := func(key string) *openai.Client {
		c := openai.NewClient(option.WithBaseURL("http://"+e.queen+"/v1/"), option.WithAPIKey(key), option.WithMaxRetries(0))
		return &c
	}
	params := openai.CompletionNewParams{Model: "alphabet.gguf", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("abc")},
		Temperature: openai.Float(0), MaxTokens: openai.Int(30)}
	status := func(err error) int {
		var apiErr *openai.Error
		if errors.As(err, &apiErr) {
			return apiErr.StatusCode
		}
		return 0
	}
	if _, err := client("wrong-key-0123456789").Completions.New(ctx, params); status(err) != http.StatusUnauthorized {
		t.Errorf("a wrong key: %v, want 401", err)
	}
	if _, err := client("wrong-key-0123456789").Models.List(ctx); status(err) != http.StatusUnauthorized {
		t.Errorf("models with a wrong key: %v, want 401", err)
	}
	if comp, err := client(k1).Completions.New(ctx, params); err != nil || comp.Choices[0].Text != alphabetRest {
		t.Errorf("app1's key on its model: %v", err)
	}
	if _, err := client(k2).Completions.New(ctx, params); status(err) != http.StatusForbidden {
		t.Errorf("app2's key on a model it may not use: %v, want 403", err)
	}
	page, err := client(k2).Models.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range page.Data {
		if m.ID == "alphabet.gguf" {
			t.Errorf("app2's model list shows a model it may not use")
		}
	}
	// The keys guard every door route: the Responses API, llama-server's
	// tokenizer and Ollama's routes (in Ollama's error shape) too.
	for _, tt := range []struct {
		path, key, body string
		want            int
	}{
		{"/api/tags", "", "", http.StatusUnauthorized},
		{"/tokenize", "", `{"model":"alphabet.gguf","content":"abc"}`, http.StatusUnauthorized},
		{"/v1/models/alphabet.gguf", "", "", http.StatusUnauthorized},
		{"/api/generate", k2, `{"model":"alphabet.gguf","prompt":"abc","raw":true,"stream":false}`, http.StatusForbidden},
		{"/v1/responses", k2, `{"model":"alphabet.gguf","input":"abc"}`, http.StatusForbidden},
		{"/api/generate", k1, `{"model":"alphabet.gguf","prompt":"abc","raw":true,"stream":false,"options":{"temperature":0}}`, http.StatusOK},
		{"/v1/models/alphabet.gguf", k1, "", http.StatusOK},
		{"/", "", "", http.StatusOK}, // Ollama's heartbeat, open as Ollama's is
		{"/api/pull", "", `{"model":"alphabet.gguf"}`, http.StatusUnauthorized},
		{"/api/pull", k2, `{"model":"alphabet.gguf"}`, http.StatusForbidden},
		{"/api/pull", k1, `{"model":"alphabet.gguf","stream":false}`, http.StatusOK},
	} {
		method, body := "GET", io.Reader(nil)
		if tt.body != "" {
			method, body = "POST", strings.NewReader(tt.body)
		}
		req, _ := http.NewRequest(method, "http://"+e.queen+tt.path, body)
		req.Header.Set("Content-Type", "application/json")
		if tt.key != "" {
			req.Header.Set("Authorization", "Bearer "+tt.key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		ollamaShape := strings.HasPrefix(string(b), `{"error":"`)
		if resp.StatusCode != tt.want || (tt.want != http.StatusOK && ollamaShape != strings.HasPrefix(tt.path, "/api/")) {
			t.Errorf("%s %s with key %q: %d %s, want %d", method, tt.path, tt.key, resp.StatusCode, b, tt.want)
		}
	}
	if resp, err := http.Get("http://" + e.queen + "/health"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("/health needs no key: %v", err)
	}
	// The request log: one JSON line a request, with the key's id only.
	logText, err := os.ReadFile(filepath.Join(e.home, ".rbee", "logs", "requests.log"))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, line := range strings.Split(strings.TrimSpace(string(logText)), "\n") {
		var entry struct {
			Model     string  `json:"model"`
			Replica   string  `json:"replica"`
			Key       string  `json:"key"`
			TokensIn  int     `json:"tokens_in"`
			TokensOut int     `json:"tokens_out"`
			TTFTMS    float64 `json:"ttft_ms"`
			Status    int     `json:"status"`
		}
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Fatalf("request log line %q: %v", line, err)
		}
		if entry.Key == "app1" && entry.Status == 200 && entry.TokensOut == len(alphabetRest) && entry.TokensIn > 0 && strings.HasPrefix(entry.Replica, "localhost/w-") && entry.TTFTMS > 0 {
			found = true
		}
	}
	if !found || strings.Contains(string(logText), k1) || !strings.Contains(string(logText), `"status":403`) {
		t.Errorf("request log lacks app1's request (or shows a key):\n%s", logText)
	}
	q.Stop(30 * time.Second)
	e.waitGone()
	if s := q.StderrText(); strings.Contains(s, k1) || strings.Contains(s, k2) {
		t.Error("the queen logged an API key")
	}
}

// unixHTTP is an HTTP client that reaches a unix socket (a worker's).
func unixHTTP(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
}
