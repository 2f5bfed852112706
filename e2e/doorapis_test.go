package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
	"github.com/rbee-dev/rbee/internal/testmodel"
)

// post sends a JSON body to the door and returns the status and body.
func (e *env) post(path, body string) (int, string) {
	e.t.Helper()
	resp, err := http.Post("http://"+e.queen+path, "application/json", strings.NewReader(body))
	if err != nil {
		e.t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (e *env) get(path string) (int, string) {
	e.t.Helper()
	resp, err := http.Get("http://" + e.queen + path)
	if err != nil {
		e.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestResponsesAPI drives POST /v1/responses with the official OpenAI Go
// SDK through the real door and a real worker: the text, streamed and
// not, is the worker's chat completion of the same messages, the events
// come in the Responses API's order, numbered, and fields the door cannot
// honour are refused by name.
func TestResponsesAPI(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// The random model answers a chat (the alphabet model ends one at
	// once: ChatML's prompt ends in a newline).
	if r := e.rbee("infer", "--model", longModel, "--temperature", "0", "--max-tokens", "1", "abc"); r.code != 0 {
		t.Fatalf("infer: exit %d\n%s", r.code, r.stderr)
	}
	ctx := context.Background()
	c := openai.NewClient(option.WithBaseURL("http://"+e.queen+"/v1/"), option.WithAPIKey("unused-on-loopback"), option.WithMaxRetries(0))
	// The reference: the same messages as a chat completion.
	want, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "random-3m.gguf", Temperature: openai.Float(0), MaxTokens: openai.Int(12),
		Messages: []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("be brief"), openai.UserMessage("abc")}})
	if err != nil || len(want.Choices) != 1 {
		t.Fatalf("chat: %v %+v", err, want)
	}
	wantText := want.Choices[0].Message.Content
	if wantText == "" {
		t.Fatal("the reference chat completion is empty: nothing to compare")
	}
	wantStatus := map[string]responses.ResponseStatus{"stop": "completed", "length": "incomplete"}[want.Choices[0].FinishReason]

	params := responses.ResponseNewParams{Model: "random-3m.gguf", Instructions: openai.String("be brief"), Temperature: openai.Float(0), MaxOutputTokens: openai.Int(12),
		Input: responses.ResponseNewParamsInputUnion{OfInputItemList: responses.ResponseInputParam{
			responses.ResponseInputItemParamOfMessage(responses.ResponseInputMessageContentListParam{responses.ResponseInputContentParamOfInputText("abc")}, responses.EasyInputMessageRoleUser)}}}
	resp, err := c.Responses.New(ctx, params)
	if err != nil {
		t.Fatalf("responses: %v", err)
	}
	if resp.OutputText() != wantText || resp.Status != wantStatus || resp.Model != "random-3m.gguf" || !strings.HasPrefix(resp.ID, "resp_") ||
		resp.Usage.OutputTokens != want.Usage.CompletionTokens || resp.Usage.InputTokens != want.Usage.PromptTokens {
		t.Errorf("response %q %s (model %q, id %q, usage %+v), want %q %s (usage %+v)", resp.OutputText(), resp.Status, resp.Model, resp.ID, resp.Usage, wantText, wantStatus, want.Usage)
	}
	if wantStatus == "incomplete" && resp.IncompleteDetails.Reason != "max_output_tokens" {
		t.Errorf("incomplete_details %+v", resp.IncompleteDetails)
	}

	stream := c.Responses.NewStreaming(ctx, params)
	var text strings.Builder
	var final responses.Response
	var seq []int64
	for stream.Next() {
		ev := stream.Current()
		seq = append(seq, ev.SequenceNumber)
		switch ev.Type {
		case "response.output_text.delta":
			text.WriteString(ev.Delta)
		case "response.completed", "response.incomplete":
			final = ev.Response
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("responses stream: %v", err)
	}
	if text.String() != wantText || final.OutputText() != wantText || final.Status != wantStatus || final.Usage.OutputTokens != want.Usage.CompletionTokens {
		t.Errorf("streamed %q, final %q %s (usage %+v), want %q %s", text.String(), final.OutputText(), final.Status, final.Usage, wantText, wantStatus)
	}
	for i, s := range seq {
		if s != int64(i) {
			t.Fatalf("sequence numbers %v", seq)
		}
	}

	// The events on the wire, in order, each with its event: line.
	r, err := http.Post("http://"+e.queen+"/v1/responses", "application/json", strings.NewReader(`{"model":"random-3m.gguf","instructions":"be brief","input":"abc","stream":true,"temperature":0,"max_output_tokens":5}`))
	if err != nil {
		t.Fatal(err)
	}
	var events []string
	sc := bufio.NewScanner(r.Body)
	for sc.Scan() {
		if typ, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
			if len(events) == 0 || events[len(events)-1] != typ {
				events = append(events, typ)
			}
		} else if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var ev struct{ Type string }
			if err := json.Unmarshal([]byte(d), &ev); err != nil || ev.Type != events[len(events)-1] {
				t.Errorf("data %s under event %s", d, events[len(events)-1])
			}
		}
	}
	r.Body.Close()
	inOrder(t, strings.Join(events, " "), "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
		"response.output_text.delta", "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.incomplete")
	if r.Header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("Content-Type %q", r.Header.Get("Content-Type"))
	}

	// What the door cannot honour is refused by name, never ignored.
	for _, tt := range []struct{ body, param string }{
		{`{"model":"random-3m.gguf","input":"abc","previous_response_id":"resp_1"}`, "previous_response_id"},
		{`{"model":"random-3m.gguf","input":"abc","tools":[{"type":"function","name":"f","parameters":{}}]}`, "tools"},
		{`{"model":"random-3m.gguf","input":"abc","store":true}`, "store"},
		{`{"model":"random-3m.gguf","input":"abc","reasoning":{"effort":"high"}}`, "reasoning"},
		{`{"model":"random-3m.gguf","input":"abc","max_output_tokens":0}`, "max_output_tokens"}, // the worker's refusal, renamed
	} {
		code, body := e.post("/v1/responses", tt.body)
		var eb struct {
			Error struct{ Param, Message string }
		}
		if err := json.Unmarshal([]byte(body), &eb); err != nil || code != http.StatusBadRequest || eb.Error.Param != tt.param {
			t.Errorf("%s: %d %s, want 400 naming %s", tt.body, code, body, tt.param)
		}
	}
	_, err = c.Responses.New(ctx, responses.ResponseNewParams{Model: "no-such-model", Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("abc")}})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound {
		t.Errorf("unknown model: %v, want 404", err)
	}
	_, mb := e.get("/metrics")
	if !strings.Contains(mb, `rbee_requests_total{model="random-3m.gguf",status="200"} 4`) || !strings.Contains(mb, `rbee_requests_total{model="random-3m.gguf",status="400"} 5`) {
		t.Errorf("metrics do not count the responses requests:\n%s", grepLines(mb, "rbee_requests_total"))
	}
	e.stopQueen()
}

// ollamaLine is one line of /api/chat or /api/generate.
type ollamaLine struct {
	Model           string `json:"model"`
	CreatedAt       string `json:"created_at"`
	Message         struct{ Role, Content string }
	Response        string `json:"response"`
	Done            bool   `json:"done"`
	DoneReason      string `json:"done_reason"`
	TotalDuration   int64  `json:"total_duration"`
	PromptEvalCount int    `json:"prompt_eval_count"`
	EvalCount       int    `json:"eval_count"`
	EvalDuration    int64  `json:"eval_duration"`
	Error           string `json:"error"`
}

// TestOllamaAPI drives the door's Ollama routes as Ollama's clients do
// (plain HTTP, NDJSON): chat streamed, generate in one object (templated
// and raw), the model list, details, running models and version,
// embeddings, and refusals naming the field.
func TestOllamaAPI(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// The random model answers a chat (the alphabet model ends one at
	// once: ChatML's prompt ends in a newline).
	if r := e.rbee("infer", "--model", longModel, "--temperature", "0", "--max-tokens", "1", "abc"); r.code != 0 {
		t.Fatalf("infer: exit %d\n%s", r.code, r.stderr)
	}
	if r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 {
		t.Fatalf("infer: exit %d\n%s", r.code, r.stderr)
	}
	// The reference: the same messages as an OpenAI chat completion.
	code, body := e.post("/v1/chat/completions", `{"model":"random-3m.gguf","messages":[{"role":"user","content":"abc"}],"temperature":0,"max_tokens":12}`)
	var want struct {
		Choices []struct {
			Message      struct{ Content string }
			FinishReason string `json:"finish_reason"`
		}
		Usage struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
		}
	}
	if err := json.Unmarshal([]byte(body), &want); err != nil || code != 200 || len(want.Choices) != 1 {
		t.Fatalf("chat: %d %s", code, body)
	}
	wantText := want.Choices[0].Message.Content
	if wantText == "" {
		t.Fatal("the reference chat completion is empty: nothing to compare")
	}

	// /api/chat streams NDJSON by default.
	resp, err := http.Post("http://"+e.queen+"/api/chat", "application/json", strings.NewReader(
		`{"model":"random-3m.gguf","messages":[{"role":"user","content":"abc"}],"options":{"temperature":0,"num_predict":12},"keep_alive":"5m"}`))
	if err != nil {
		t.Fatal(err)
	}
	var lines []ollamaLine
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var l ollamaLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	resp.Body.Close()
	if resp.Header.Get("Content-Type") != "application/x-ndjson" || len(lines) < 2 {
		t.Fatalf("/api/chat: %s, %d lines", resp.Header.Get("Content-Type"), len(lines))
	}
	var text strings.Builder
	for i, l := range lines {
		text.WriteString(l.Message.Content)
		if l.Model != "random-3m.gguf" || l.Done != (i == len(lines)-1) || l.CreatedAt == "" || l.Message.Role != "assistant" {
			t.Errorf("line %d: %+v", i, l)
		}
	}
	last := lines[len(lines)-1]
	if text.String() != wantText || last.DoneReason != want.Choices[0].FinishReason || last.EvalCount != want.Usage.CompletionTokens ||
		last.PromptEvalCount != want.Usage.PromptTokens || last.TotalDuration <= 0 || last.EvalDuration <= 0 {
		t.Errorf("/api/chat: %q, last %+v; want %q (%s, usage %+v)", text.String(), last, wantText, want.Choices[0].FinishReason, want.Usage)
	}

	// /api/generate with stream false: one object; the prompt is templated
	// as a user message (the same answer), or sent raw.
	var g ollamaLine
	code, body = e.post("/api/generate", `{"model":"random-3m.gguf","prompt":"abc","stream":false,"options":{"temperature":0,"num_predict":12}}`)
	if err := json.Unmarshal([]byte(body), &g); err != nil || code != 200 || g.Response != wantText || !g.Done || g.EvalCount != want.Usage.CompletionTokens {
		t.Errorf("/api/generate: %d %s, want %q", code, body, wantText)
	}
	code, body = e.post("/api/generate", `{"model":"alphabet.gguf","prompt":"abc","raw":true,"stream":false,"options":{"temperature":0,"num_predict":30}}`)
	if err := json.Unmarshal([]byte(body), &g); err != nil || code != 200 || g.Response != alphabetRest {
		t.Errorf("/api/generate raw: %d %s, want %q", code, body, alphabetRest)
	}

	// The listing routes.
	code, body = e.get("/api/tags")
	var tags struct {
		Models []struct {
			Name, Digest string
			Size         int64
			Details      struct {
				Format, Family    string
				QuantizationLevel string `json:"quantization_level"`
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &tags); err != nil || code != 200 {
		t.Fatalf("/api/tags: %d %s", code, body)
	}
	found := false
	for _, m := range tags.Models {
		if m.Name == "random-3m.gguf" && m.Details.Format == "gguf" && len(m.Digest) == 64 && m.Size > 0 && m.Details.Family != "" {
			found = true
		}
	}
	if !found {
		t.Errorf("/api/tags lacks random-3m.gguf: %s", body)
	}
	if code, body = e.post("/api/show", `{"model":"random-3m.gguf"}`); code != 200 || !strings.Contains(body, `"general.architecture"`) {
		t.Errorf("/api/show: %d %s", code, body)
	}
	if code, body = e.get("/api/ps"); code != 200 || !strings.Contains(body, `"name":"random-3m.gguf"`) {
		t.Errorf("/api/ps: %d %s", code, body)
	}
	if code, body = e.get("/api/version"); code != 200 || !strings.Contains(body, `"version":"0.`) {
		t.Errorf("/api/version: %d %s", code, body)
	}

	// Embeddings go to an --embeddings replica, as /v1/embeddings do.
	code, body = e.post("/api/embed", `{"model":"alphabet.gguf","input":["abc","xyz"]}`)
	var emb struct {
		Model           string
		Embeddings      [][]float64
		PromptEvalCount int `json:"prompt_eval_count"`
	}
	if err := json.Unmarshal([]byte(body), &emb); err != nil || code != 200 || len(emb.Embeddings) != 2 ||
		len(emb.Embeddings[0]) != testmodel.AlphabetSpec.Embd || emb.PromptEvalCount == 0 || emb.Model != "alphabet.gguf" {
		t.Errorf("/api/embed: %d %.300s", code, body)
	}

	// format "json": honoured when the worker takes response_format
	// json_object, else refused naming format.
	jsonCode, _ := e.post("/v1/chat/completions", `{"model":"alphabet.gguf","messages":[{"role":"user","content":"abc"}],"max_tokens":4,"response_format":{"type":"json_object"}}`)
	code, body = e.post("/api/generate", `{"model":"alphabet.gguf","prompt":"abc","stream":false,"format":"json","options":{"num_predict":4}}`)
	if code != jsonCode || (code == http.StatusBadRequest && !strings.HasPrefix(body, `{"error":"format `)) {
		t.Errorf("format json: %d %s; the worker answers response_format json_object with %d", code, body, jsonCode)
	}
	// Refusals name the field, in Ollama's shape.
	for _, tt := range []struct{ path, body, want string }{
		{"/api/chat", `{"model":"alphabet.gguf","messages":[{"role":"user","content":"abc"}],"options":{"num_ctx":4096}}`, `option "num_ctx"`},
		{"/api/chat", `{"model":"alphabet.gguf","messages":[{"role":"user","content":"abc","images":["aGk="]}]}`, `messages[0].images`},
		{"/api/generate", `{"model":"alphabet.gguf","prompt":"abc","template":"{{ .Prompt }}"}`, `template`},
		{"/api/generate", `{"model":"alphabet.gguf","prompt":"abc","stream":false,"options":{"temperature":9}}`, `options.temperature`}, // the worker's, renamed
	} {
		code, body := e.post(tt.path, tt.body)
		var eb struct{ Error string }
		if err := json.Unmarshal([]byte(body), &eb); err != nil || code != http.StatusBadRequest || !strings.Contains(eb.Error, tt.want) {
			t.Errorf("%s %s: %d %s, want 400 naming %s", tt.path, tt.body, code, body, tt.want)
		}
	}
	if code, body = e.post("/api/chat", `{"model":"nope","messages":[]}`); code != http.StatusNotFound || !strings.HasPrefix(body, `{"error":"model \"nope\"`) {
		t.Errorf("unknown model: %d %s", code, body)
	}
	ok := 2 // generate raw, embed
	if jsonCode == http.StatusOK {
		ok += 2
	}
	_, mb := e.get("/metrics")
	if !strings.Contains(mb, `rbee_requests_total{model="random-3m.gguf",status="200"} 3`) || // the reference, chat, generate
		!strings.Contains(mb, fmt.Sprintf(`rbee_requests_total{model="alphabet.gguf",status="200"} %d`, ok)) {
		t.Errorf("metrics do not count the Ollama requests:\n%s", grepLines(mb, "rbee_requests_total"))
	}
	e.stopQueen()
}
