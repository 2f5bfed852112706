package chat_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/chat"
	"github.com/rbee-dev/rbee/internal/testmodel"
)

var weather = chat.Tool{
	Name:       "get_weather",
	Parameters: json.RawMessage(`{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}`),
	Raw:        json.RawMessage(`{"type":"function","function":{"name":"get_weather","description":"Weather now","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}`),
}

// roundTrip is a conversation with a call and its result.
var roundTrip = []chat.Message{
	{Role: "user", Content: "Weather in Paris?"},
	{Role: "assistant", ToolCalls: []chat.ToolCall{{ID: "abcDEF123", Name: "get_weather", Arguments: `{"city":"Paris"}`}}},
	{Role: "tool", ToolCallID: "abcDEF123", Name: "get_weather", Content: "21 C, sunny"},
}

func TestRender(t *testing.T) {
	tests := []struct {
		name   string
		src    string
		format chat.Format
		want   []string // in order
	}{
		{"qwen", testmodel.QwenTemplate, chat.Hermes, []string{
			"# Tools", `{"type": "function", "function": {"name": "get_weather", "description": "Weather now"`,
			"<|im_start|>user\nWeather in Paris?<|im_end|>",
			"<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>",
			"<|im_start|>user\n<tool_response>\n21 C, sunny\n</tool_response><|im_end|>", "<|im_start|>assistant\n"}},
		{"llama3", testmodel.LlamaTemplate, chat.Llama3, []string{
			"<s><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n", `"name": "get_weather"`, "Weather in Paris?<|eot_id|>",
			"<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}<|eot_id|>",
			"<|start_header_id|>ipython<|end_header_id|>\n\n\"21 C, sunny\"<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n"}},
		{"mistral", testmodel.MistralTemplate, chat.Mistral, []string{
			`<s>[AVAILABLE_TOOLS][{"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": {`,
			"[/AVAILABLE_TOOLS][INST]Weather in Paris?[/INST]",
			`[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcDEF123"}]</s>`,
			`[TOOL_RESULTS]{"content": 21 C, sunny, "call_id": "abcDEF123"}[/TOOL_RESULTS]`}},
		{"generic", testmodel.ChatMLTemplate, chat.Generic, []string{
			"<|im_start|>system\nYou can call any of the following tools to satisfy the user's requests: [" + string(weather.Raw) + "]",
			"Respond in JSON format",
			"<|im_start|>assistant\n{\"tool_calls\":[{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"},\"id\":\"abcDEF123\"}]}<|im_end|>",
			"<|im_start|>user\n{\"tool_response\":{\"tool\":\"get_weather\",\"tool_call_id\":\"abcDEF123\",\"content\":\"21 C, sunny\"}}<|im_end|>",
			"<|im_start|>assistant\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, err := chat.Compile(tt.src, "<s>", "</s>")
			if err != nil {
				t.Fatal(err)
			}
			if got := tmpl.Format(); got != tt.format {
				t.Errorf("format %v, want %v", got, tt.format)
			}
			got, err := tmpl.Render(roundTrip, []chat.Tool{weather}, true)
			if err != nil {
				t.Fatal(err)
			}
			rest := got
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("prompt lacks %q (in order); prompt:\n%s", w, got)
				}
				rest = rest[i+len(w):]
			}
		})
	}
}

// TestRenderRefused: a template's raise_exception is an error.
func TestRenderRefused(t *testing.T) {
	tmpl, err := chat.Compile(testmodel.MistralTemplate, "<s>", "</s>")
	if err != nil {
		t.Fatal(err)
	}
	_, err = tmpl.Render([]chat.Message{{Role: "user", Content: "a"}, {Role: "user", Content: "b"}}, nil, true)
	if err == nil || !strings.Contains(err.Error(), "alternate") {
		t.Errorf("got %v, want the template's exception about alternating roles", err)
	}
}

func TestParse(t *testing.T) {
	type call struct{ name, args string }
	tests := []struct {
		name    string
		f       chat.Format
		text    string
		content string
		calls   []call
	}{
		{"hermes", chat.Hermes, "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>", "Let me look.",
			[]call{{"get_weather", `{"city":"Paris"}`}}},
		{"hermes two calls, last unclosed", chat.Hermes, "<tool_call>{\"name\":\"a\",\"arguments\":{}}</tool_call>\n<tool_call>{\"name\":\"b\",\"arguments\":\"{\\\"x\\\":1}\"}", "",
			[]call{{"a", `{}`}, {"b", `{"x":1}`}}},
		{"hermes no call", chat.Hermes, "Sunny.", "Sunny.", nil},
		{"hermes broken call is content", chat.Hermes, "<tool_call>{\"name\":", "<tool_call>{\"name\":", nil},
		{"llama3 json", chat.Llama3, ` {"name": "get_weather", "parameters": {"city": "Oslo"}}`, "", []call{{"get_weather", `{"city":"Oslo"}`}}},
		{"llama3 python_tag", chat.Llama3, `<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}<|eom_id|>`, "", []call{{"get_weather", `{"city":"Oslo"}`}}},
		{"llama3 text", chat.Llama3, "It is {sunny}.", "It is {sunny}.", nil},
		{"mistral", chat.Mistral, `[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Rome"}, "id": "abcDEF123"}, {"name": "b", "arguments": {}}]`, "",
			[]call{{"get_weather", `{"city":"Rome"}`}, {"b", `{}`}}},
		{"generic call", chat.Generic, `{"tool_call": {"name": "get_weather", "arguments": {"city": "Rome"}}}`, "", []call{{"get_weather", `{"city":"Rome"}`}}},
		{"generic calls", chat.Generic, `{"tool_calls": [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"y": [1]}}]}`, "", []call{{"a", `{}`}, {"b", `{"y":[1]}`}}},
		{"generic response", chat.Generic, `{"response": "Sunny."}`, "Sunny.", nil},
		{"generic not JSON", chat.Generic, `Sunny.`, "Sunny.", nil},
		{"llama3 string arguments first", chat.Llama3, `{"name": "a", "parameters": "{\"x\":1}"}; {"name": "b", "parameters": {"y": 2}}`, "",
			[]call{{"a", `{"x":1}`}, {"b", `{"y":2}`}}},
		{"hermes arguments first, strings with braces", chat.Hermes,
			"<tool_call>\n{\"arguments\": {\"q\": \"a {b} \\\"c\\\" ]\", \"n\": [1, {\"k\": null}]}, \"name\": \"search\"}\n</tool_call>", "",
			[]call{{"search", `{"q":"a {b} \"c\" ]","n":[1,{"k":null}]}`}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			content, calls := tt.f.Parse(tt.text)
			if content != tt.content {
				t.Errorf("content %q, want %q", content, tt.content)
			}
			if len(calls) != len(tt.calls) {
				t.Fatalf("got %d calls %+v, want %d", len(calls), calls, len(tt.calls))
			}
			for i, c := range calls {
				if c.Name != tt.calls[i].name || c.Arguments != tt.calls[i].args {
					t.Errorf("call %d: got %s(%s), want %s(%s)", i, c.Name, c.Arguments, tt.calls[i].name, tt.calls[i].args)
				}
			}
			// Streamed in pieces of 3 bytes: the same calls, and the
			// content given out before them never holds a call's text.
			s := tt.f.NewStream()
			var sent strings.Builder
			ids := 0
			newID := func() string { ids++; return fmt.Sprint("id", ids) }
			type streamed struct{ id, name, args string }
			var deltas []streamed
			for i := 0; i < len(tt.text); i += 3 {
				sent.WriteString(s.Feed(tt.text[i:min(i+3, len(tt.text))]))
				for _, d := range s.Deltas(newID) {
					if d.Index == len(deltas) {
						deltas = append(deltas, streamed{id: d.ID, name: d.Name})
						if d.ID == "" || d.Name == "" || d.Arguments != "" {
							t.Errorf("a call's first delta %+v, want its id and name only", d)
						}
						continue
					}
					if d.Index != len(deltas)-1 || d.ID != "" || d.Name != "" {
						t.Fatalf("delta %+v after %d calls: want arguments of the last", d, len(deltas))
					}
					deltas[d.Index].args += d.Arguments
				}
			}
			rest, scalls := s.Finish()
			sent.WriteString(rest)
			if len(scalls) != len(calls) {
				t.Fatalf("streamed: %d calls, want %d", len(scalls), len(calls))
			}
			// The deltas said each call's name as it came, and its
			// arguments as the whole answer has them (those written as a
			// JSON string come whole at the end).
			// Calls after one whose arguments are a JSON string (given
			// whole at the end) wait for it.
			want := len(scalls)
			for i, d := range deltas {
				if d.args == "" && scalls[i].Arguments != "" {
					want = i + 1
					break
				}
			}
			if len(deltas) != want {
				t.Fatalf("deltas of %d calls %+v, want %d", len(deltas), deltas, want)
			}
			for i, d := range deltas {
				if d.name != scalls[i].Name || (d.args != "" && d.args != scalls[i].Arguments) {
					t.Errorf("call %d streamed as %s(%s), whole %s(%s)", i, d.name, d.args, scalls[i].Name, scalls[i].Arguments)
				}
			}
			if strings.TrimSpace(sent.String()) != content {
				t.Errorf("streamed content %q, want %q", sent.String(), content)
			}
		})
	}
}

func TestCallID(t *testing.T) {
	if id := chat.Hermes.CallID(); !strings.HasPrefix(id, "call_") || len(id) != 29 {
		t.Errorf("hermes id %q, want call_ and 24 hex digits", id)
	}
	if id := chat.Mistral.CallID(); len(id) != 9 {
		t.Errorf("mistral id %q, want 9 characters", id)
	}
}
