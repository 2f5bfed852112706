package worker_test

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/internal/testenv"
	"github.com/rbee-dev/rbee/internal/testmodel"
)

// toolFamilies are random-weight models whose GGUF carries a
// tool-calling family's chat template.
var toolFamilies = []struct {
	name, tmpl, format string
}{
	{"qwen", testmodel.QwenTemplate, "hermes"},
	{"llama3", testmodel.LlamaTemplate, "llama3"},
	{"mistral", testmodel.MistralTemplate, "mistral"},
	{"chatml", testmodel.ChatMLTemplate, "generic"},
}

// toolModel writes testmodel.Small with chat template tmpl.
func toolModel(t *testing.T, name, tmpl string) string {
	t.Helper()
	s := testmodel.Small
	s.Name, s.ChatTmpl = "random-3m-"+name, tmpl
	path, err := testenv.WriteModel(t.TempDir(), s.Name+".gguf", testmodel.Random(s))
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// Every argument is bounded, so that a random-weight model under the
// grammar completes the call within max_tokens.
const (
	weatherParams = `{"type":"object","properties":{"city":{"enum":["Paris","Oslo","Rome"]},"days":{"type":"integer","minimum":1,"maximum":7},
		"unit":{"type":"string","enum":["C","F"]}},"required":["city","days","unit"],"additionalProperties":false}`
	timeParams = `{"type":"object","properties":{"zone":{"enum":["UTC","CET"]}},"required":["zone"]}`
)

func toolDefs() []map[string]any {
	return []map[string]any{
		{"type": "function", "function": map[string]any{"name": "get_weather", "description": "The weather in a city", "parameters": json.RawMessage(weatherParams)}},
		{"type": "function", "function": map[string]any{"name": "get_time", "parameters": json.RawMessage(timeParams)}},
	}
}

type gotCall struct {
	ID, Type, Name, Arguments string
	Pieces                    int // deltas that carried a piece of the arguments
}

// toolAnswer posts a chat request and returns the first choice's
// content, calls and finish reason; streamed, the calls are put together
// from their deltas.
func toolAnswer(t *testing.T, url string, body map[string]any, stream bool) (string, []gotCall, string) {
	t.Helper()
	type callJSON struct {
		Index    int    `json:"index"`
		ID       string `json:"id"`
		Type     string `json:"type"`
		Function struct {
			Name      string  `json:"name"`
			Arguments *string `json:"arguments"`
		} `json:"function"`
	}
	type choice struct {
		Message *struct {
			Content   *string    `json:"content"`
			ToolCalls []callJSON `json:"tool_calls"`
		} `json:"message"`
		Delta *struct {
			Content   string     `json:"content"`
			ToolCalls []callJSON `json:"tool_calls"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	}
	type answer struct {
		Choices []choice `json:"choices"`
		Error   any      `json:"error"`
	}
	if !stream {
		resp, data := post(t, url, "/v1/chat/completions", body)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, data)
		}
		var a answer
		if err := json.Unmarshal(data, &a); err != nil || len(a.Choices) != 1 || a.Choices[0].Message == nil {
			t.Fatalf("bad answer %s: %v", data, err)
		}
		m := a.Choices[0].Message
		var calls []gotCall
		for _, c := range m.ToolCalls {
			calls = append(calls, gotCall{ID: c.ID, Type: c.Type, Name: c.Function.Name, Arguments: *c.Function.Arguments})
		}
		content := ""
		if m.Content != nil {
			content = *m.Content
		} else if len(calls) == 0 {
			t.Errorf("content null without tool calls: %s", data)
		}
		return content, calls, *a.Choices[0].FinishReason
	}
	body["stream"] = true
	s := openStream(t, url, "/v1/chat/completions", body)
	defer s.close()
	var content strings.Builder
	var calls []gotCall
	finish := ""
	for {
		data, err := s.next()
		if err == io.EOF {
			t.Fatal("stream ended without [DONE]")
		}
		if err != nil {
			t.Fatal(err)
		}
		if data == "[DONE]" {
			break
		}
		var a answer
		if err := json.Unmarshal([]byte(data), &a); err != nil || a.Error != nil {
			t.Fatalf("bad chunk %s: %v", data, err)
		}
		for _, ch := range a.Choices {
			if ch.FinishReason != nil {
				finish = *ch.FinishReason
			}
			if ch.Delta == nil {
				continue
			}
			content.WriteString(ch.Delta.Content)
			for _, d := range ch.Delta.ToolCalls {
				switch {
				case d.Index == len(calls):
					if d.ID == "" || d.Type != "function" || d.Function.Name == "" {
						t.Errorf("a call's first delta lacks id, type or name: %s", data)
					}
					calls = append(calls, gotCall{ID: d.ID, Type: d.Type, Name: d.Function.Name})
				case d.Index == len(calls)-1 && d.ID == "" && d.Function.Name == "":
				default:
					t.Fatalf("delta of call %d out of order (%d calls so far): %s", d.Index, len(calls), data)
				}
				if d.Function.Arguments != nil {
					calls[d.Index].Arguments += *d.Function.Arguments
					if *d.Function.Arguments != "" {
						calls[d.Index].Pieces++
					}
				}
			}
		}
	}
	return content.String(), calls, finish
}

// TestToolCalls: for each family's template, tool_choice required and a
// named function make even a random-weight model call a tool, in the
// family's syntax (the grammar), and the worker reads the call back into
// OpenAI's tool_calls: a known function, arguments that fit its schema,
// finish_reason tool_calls; streamed, as deltas that add up to the same.
func TestToolCalls(t *testing.T) {
	t.Parallel()
	schemas := map[string]string{"get_weather": weatherParams, "get_time": timeParams}
	for _, fam := range toolFamilies {
		t.Run(fam.name, func(t *testing.T) {
			t.Parallel()
			w := startWorker(t, "--model", toolModel(t, fam.name, fam.tmpl), "--slots", "2", "--ctx-size", "2048")
			if code, h := health(t, w.URL); code != 200 || h["tool_format"] != fam.format {
				t.Errorf("health tool_format %v, want %q", h["tool_format"], fam.format)
			}
			choices := []struct {
				name   string
				choice any
				want   string // the function called; "" any
			}{
				{"required", "required", ""},
				{"named", map[string]any{"type": "function", "function": map[string]any{"name": "get_time"}}, "get_time"},
			}
			for _, tc := range choices {
				for _, stream := range []bool{false, true} {
					t.Run(fmt.Sprintf("%s stream=%t", tc.name, stream), func(t *testing.T) {
						t.Parallel()
						body := map[string]any{"temperature": 0, "max_tokens": 600, "tools": toolDefs(), "tool_choice": tc.choice,
							"messages": []map[string]any{{"role": "user", "content": "What is the weather in Paris?"}}}
						content, calls, finish := toolAnswer(t, w.URL, body, stream)
						if finish != "tool_calls" {
							t.Fatalf("finish_reason %q, want tool_calls (content %q)", finish, content)
						}
						if len(calls) != 1 {
							t.Fatalf("got %d calls %+v, want 1", len(calls), calls)
						}
						c := calls[0]
						t.Logf("call %s %s(%s), content %q", c.ID, c.Name, c.Arguments, content)
						if tc.want != "" && c.Name != tc.want {
							t.Errorf("called %q, want %q", c.Name, tc.want)
						}
						schema, ok := schemas[c.Name]
						if !ok {
							t.Fatalf("called %q, which is not a tool", c.Name)
						}
						validate(t, validator(t, schema), c.Arguments)
						if stream && c.Pieces < 2 {
							t.Errorf("the arguments came in %d delta(s), want them in pieces as they are generated", c.Pieces)
						}
						if c.Type != "function" {
							t.Errorf("type %q, want function", c.Type)
						}
						if fam.format == "mistral" && len(c.ID) != 9 || fam.format != "mistral" && !strings.HasPrefix(c.ID, "call_") {
							t.Errorf("id %q, want call_… (9 letters and digits for mistral)", c.ID)
						}
					})
				}
			}
		})
	}
}

// TestLazyToolGrammar: with tool_choice auto the model writes freely,
// and once it opens a call (its family's opening tag, one token as in
// real models' vocabularies) the call follows the tools' schemas, as
// llama-server's lazy grammar makes it. A logit bias makes the random
// model open a call at once and keeps pushing the tag: without the lazy
// grammar it writes the tag over and over and no call is read.
func TestLazyToolGrammar(t *testing.T) {
	t.Parallel()
	schemas := map[string]string{"get_weather": weatherParams, "get_time": timeParams}
	// Qwen's <tool_call> is an added token written as text, Mistral's
	// [TOOL_CALLS] a control token that llama.cpp leaves out of text
	// unless the answer asks to keep it.
	for _, fam := range []struct {
		name, tmpl, tag string
		control         bool
	}{
		{"qwen", testmodel.QwenTemplate, "<tool_call>", false},
		{"mistral", testmodel.MistralTemplate, "[TOOL_CALLS]", true},
	} {
		t.Run(fam.name, func(t *testing.T) {
			t.Parallel()
			spec := testmodel.Small
			spec.Name, spec.ChatTmpl = "random-3m-lazy-"+fam.name, fam.tmpl
			if fam.control {
				spec.Control = []string{fam.tag}
			} else {
				spec.Tokens = []string{fam.tag}
			}
			path, err := testenv.WriteModel(t.TempDir(), spec.Name+".gguf", testmodel.Random(spec))
			if err != nil {
				t.Fatal(err)
			}
			w := startWorker(t, "--model", path, "--slots", "2", "--ctx-size", "2048")
			for _, stream := range []bool{false, true} {
				t.Run(fmt.Sprintf("stream=%t", stream), func(t *testing.T) {
					t.Parallel()
					body := map[string]any{"temperature": 0, "max_tokens": 300, "tools": toolDefs(), "tool_choice": "auto", "parallel_tool_calls": false,
						"logit_bias": map[string]float64{strconv.Itoa(testmodel.VocabSize): 100},
						"messages":   []map[string]any{{"role": "user", "content": "What is the weather in Paris?"}}}
					content, calls, finish := toolAnswer(t, w.URL, body, stream)
					if finish != "tool_calls" || len(calls) != 1 {
						t.Fatalf("finish %q, calls %+v, content %q: want one call", finish, calls, content)
					}
					schema, ok := schemas[calls[0].Name]
					if !ok {
						t.Fatalf("called %q, which is not a tool", calls[0].Name)
					}
					validate(t, validator(t, schema), calls[0].Arguments)
				})
			}
			// A tool whose schema the grammar cannot take: the calls are
			// read as written, the request is served.
			odd := []map[string]any{{"type": "function", "function": map[string]any{"name": "tag",
				"parameters": json.RawMessage(`{"type":"object","properties":{"tags":{"type":"array","items":{"type":"string"},"uniqueItems":true}}}`)}}}
			resp, data := post(t, w.URL, "/v1/chat/completions", map[string]any{"temperature": 0, "max_tokens": 8, "tools": odd, "tool_choice": "auto",
				"messages": []map[string]any{{"role": "user", "content": "Tag it."}}})
			if resp.StatusCode != 200 {
				t.Errorf("auto with a schema the grammar cannot take: %d %s", resp.StatusCode, data)
			}
		})
	}
}

// TestToolRoundTrip: an assistant's calls and the tools' results render
// into the prompt in the template's own syntax (POST /apply-template), and
// a chat request with them is served.
func TestToolRoundTrip(t *testing.T) {
	t.Parallel()
	w := startWorker(t, "--model", toolModel(t, "qwen", testmodel.QwenTemplate), "--ctx-size", "2048")
	msgs := []map[string]any{
		{"role": "user", "content": "Weather in Paris?"},
		{"role": "assistant", "content": nil, "tool_calls": []map[string]any{{"id": "call_1", "type": "function",
			"function": map[string]any{"name": "get_weather", "arguments": `{"city":"Paris","days":1,"unit":"C"}`}}}},
		{"role": "tool", "tool_call_id": "call_1", "content": "21 C, sunny"},
	}
	resp, data := post(t, w.URL, "/apply-template", map[string]any{"messages": msgs, "tools": toolDefs()})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, data)
	}
	var got struct {
		Prompt string `json:"prompt"`
	}
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	rest := got.Prompt
	for _, want := range []string{
		// The tool as sent, members in the sender's order (Go's maps: sorted).
		"<tools>\n{\"function\": {\"description\": \"The weather in a city\", \"name\": \"get_weather\", \"parameters\": {\"type\": \"object\"",
		"<|im_start|>user\nWeather in Paris?<|im_end|>\n",
		"<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 1, \"unit\": \"C\"}}\n</tool_call><|im_end|>\n",
		"<|im_start|>user\n<tool_response>\n21 C, sunny\n</tool_response><|im_end|>\n",
		"<|im_start|>assistant\n",
	} {
		i := strings.Index(rest, want)
		if i < 0 {
			t.Fatalf("prompt lacks %q (in order); prompt:\n%s", want, got.Prompt)
		}
		rest = rest[i+len(want):]
	}
	if rest != "" {
		t.Errorf("prompt ends with %q after the generation prompt", rest)
	}
	body := map[string]any{"messages": msgs, "tools": toolDefs(), "max_tokens": 5, "temperature": 0}
	if resp, data := post(t, w.URL, "/v1/chat/completions", body); resp.StatusCode != 200 {
		t.Errorf("chat with tool results: status %d: %s", resp.StatusCode, data)
	}
}

// TestToolsRefused: what the worker cannot do with tools is a 400 naming
// the field.
func TestToolsRefused(t *testing.T) {
	t.Parallel()
	w := startWorker(t, "--model", toolModel(t, "qwen", testmodel.QwenTemplate), "--ctx-size", "1024")
	plain := startWorker(t, "--model", random3m, "--ctx-size", "1024")
	user := []map[string]any{{"role": "user", "content": "hi"}}
	tests := []struct {
		name  string
		url   string
		body  map[string]any
		param string
	}{
		{"unknown named function", w.URL, map[string]any{"messages": user, "tools": toolDefs(),
			"tool_choice": map[string]any{"type": "function", "function": map[string]any{"name": "nope"}}}, "tool_choice"},
		{"bad tool_choice", w.URL, map[string]any{"messages": user, "tools": toolDefs(), "tool_choice": "always"}, "tool_choice"},
		{"required without tools", w.URL, map[string]any{"messages": user, "tool_choice": "required"}, "tool_choice"},
		{"not a function tool", w.URL, map[string]any{"messages": user, "tools": []map[string]any{{"type": "web_search"}}}, "tools[0]"},
		{"unknown function field", w.URL, map[string]any{"messages": user, "tools": []map[string]any{{"type": "function",
			"function": map[string]any{"name": "f", "returns": "x"}}}}, "tools[0].function.returns"},
		{"schema the grammar cannot take", w.URL, map[string]any{"messages": user, "tool_choice": "required", "tools": []map[string]any{{"type": "function",
			"function": map[string]any{"name": "f", "parameters": map[string]any{"type": "object", "patternProperties": map[string]any{}}}}}}, "tools"},
		{"strict with additionalProperties", w.URL, map[string]any{"messages": user, "tool_choice": "required", "tools": []map[string]any{{"type": "function",
			"function": map[string]any{"name": "f", "strict": true, "parameters": map[string]any{"type": "object", "additionalProperties": true}}}}}, "tools"},
		{"response_format beside a forced call", w.URL, map[string]any{"messages": user, "tools": toolDefs(), "tool_choice": "required",
			"response_format": map[string]any{"type": "json_object"}}, "response_format"},
		{"deprecated functions", w.URL, map[string]any{"messages": user, "functions": []map[string]any{{"name": "f"}}}, "functions"},
		{"tool message without its call id", w.URL, map[string]any{"messages": []map[string]any{{"role": "tool", "content": "x"}}}, "messages[0].tool_call_id"},
		{"model without a template", plain.URL, map[string]any{"messages": user, "tools": toolDefs()}, "tools"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, data := post(t, tt.url, "/v1/chat/completions", tt.body)
			var e struct {
				Error struct {
					Param   string `json:"param"`
					Message string `json:"message"`
				} `json:"error"`
			}
			_ = json.Unmarshal(data, &e)
			if resp.StatusCode != 400 || e.Error.Param != tt.param {
				t.Errorf("got %d param %q, want 400 naming %q: %s", resp.StatusCode, e.Error.Param, tt.param, data)
			}
		})
	}
	// tool_choice none renders no tools and reads no calls.
	resp, data := post(t, w.URL, "/apply-template", map[string]any{"messages": user, "tools": toolDefs(), "tool_choice": "none"})
	if resp.StatusCode != 200 || strings.Contains(string(data), "get_weather") {
		t.Errorf("tool_choice none: got %d %s, want a prompt without the tools", resp.StatusCode, data)
	}
}
