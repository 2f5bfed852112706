package door

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
)

func jsonFields(t *testing.T, body string) map[string]json.RawMessage {
	t.Helper()
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(body), &raw); err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestResponsesToChat: the Responses API's input, instructions and
// limits become a chat completion; fields it cannot carry are refused by
// name.
func TestResponsesToChat(t *testing.T) {
	for _, tt := range []struct {
		name, body string
		want       string // the chat body, compact JSON
		param      string // the field refused
	}{
		{name: "string input", body: `{"model":"m","input":"hi","max_output_tokens":5,"temperature":0,"top_p":0.5}`,
			want: `{"max_tokens":5,"messages":[{"content":"hi","role":"user"}],"model":"m","temperature":0,"top_p":0.5}`},
		{name: "messages and instructions, streamed",
			body: `{"model":"m","instructions":"be brief","stream":true,"store":false,"input":[{"role":"user","content":[{"type":"input_text","text":"a"},{"type":"input_text","text":"b"}]},` +
				`{"type":"message","role":"assistant","id":"msg_1","content":[{"type":"output_text","text":"c","annotations":[]}]},{"role":"developer","content":"d"}]}`,
			want: `{"messages":[{"content":"be brief","role":"system"},{"content":"ab","role":"user"},{"content":"c","role":"assistant"},{"content":"d","role":"developer"}],"model":"m","stream":true,"stream_options":{"include_usage":true}}`},
		{name: "json schema", body: `{"model":"m","input":"x","text":{"format":{"type":"json_schema","name":"r","schema":{"type":"object"},"strict":true}}}`,
			want: `{"messages":[{"content":"x","role":"user"}],"model":"m","response_format":{"json_schema":{"name":"r","schema":{"type":"object"},"strict":true},"type":"json_schema"}}`},
		{name: "text format", body: `{"model":"m","input":"x","text":{"format":{"type":"text"}},"tools":[],"tool_choice":"auto","metadata":{"a":"b"}}`,
			want: `{"messages":[{"content":"x","role":"user"}],"model":"m","parallel_tool_calls":true,"tool_choice":"auto","tools":[]}`},
		{name: "tools, a call and its output",
			body: `{"model":"m","input":[{"role":"user","content":"w?"},{"type":"message","role":"assistant","content":[{"type":"output_text","text":"let me see"}]},` +
				`{"type":"function_call","id":"fc_1","call_id":"c1","name":"f","arguments":"{\"a\":1}","status":"completed"},{"type":"function_call","call_id":"c2","name":"f","arguments":"{}"},` +
				`{"type":"function_call_output","call_id":"c1","output":"21"},{"type":"function_call_output","call_id":"c2","output":[{"type":"input_text","text":"22"}]}],` +
				`"tools":[{"type":"function","name":"f","description":"d","parameters":{"type":"object"},"strict":true}],"tool_choice":{"type":"function","name":"f"},"parallel_tool_calls":true}`,
			want: `{"messages":[{"content":"w?","role":"user"},{"content":"let me see","role":"assistant","tool_calls":[{"function":{"arguments":"{\"a\":1}","name":"f"},"id":"c1","type":"function"},{"function":{"arguments":"{}","name":"f"},"id":"c2","type":"function"}]},` +
				`{"content":"21","role":"tool","tool_call_id":"c1"},{"content":"22","role":"tool","tool_call_id":"c2"}],"model":"m","parallel_tool_calls":true,` +
				`"tool_choice":{"function":{"name":"f"},"type":"function"},"tools":[{"function":{"description":"d","name":"f","parameters":{"type":"object"},"strict":true},"type":"function"}]}`},
		{name: "required", body: `{"model":"m","input":"x","tools":[{"type":"function","name":"f"}],"tool_choice":"required"}`,
			want: `{"messages":[{"content":"x","role":"user"}],"model":"m","parallel_tool_calls":true,"tool_choice":"required","tools":[{"function":{"name":"f"},"type":"function"}]}`},
		{name: "hosted tool", body: `{"model":"m","input":"x","tools":[{"type":"web_search"}]}`, param: "tools[0].type"},
		{name: "tool field", body: `{"model":"m","input":"x","tools":[{"type":"function","name":"f","colour":"red"}]}`, param: "tools[0].colour"},
		{name: "tool choice", body: `{"model":"m","input":"x","tool_choice":{"type":"allowed_tools","tools":[]}}`, param: "tool_choice"},
		{name: "call without id", body: `{"model":"m","input":[{"type":"function_call","name":"f","arguments":"{}"}]}`, param: "input[0]"},
		{name: "output without id", body: `{"model":"m","input":[{"type":"function_call_output","output":"x"}]}`, param: "input[0].call_id"},
		{name: "max tool calls", body: `{"model":"m","input":"x","max_tool_calls":2}`, param: "max_tool_calls"},
		{name: "previous response", body: `{"model":"m","input":"x","previous_response_id":"resp_1"}`, param: "previous_response_id"},
		{name: "store", body: `{"model":"m","input":"x","store":true}`, param: "store"},
		{name: "reasoning", body: `{"model":"m","input":"x","reasoning":{"effort":"low"}}`, param: "reasoning"},
		{name: "unknown", body: `{"model":"m","input":"x","frobnicate":1}`, param: "frobnicate"},
		{name: "image", body: `{"model":"m","input":[{"role":"user","content":[{"type":"input_image","image_url":"x"}]}]}`, param: "input[0].content[0]"},
		{name: "item reference", body: `{"model":"m","input":[{"type":"item_reference","id":"msg_1"}]}`, param: "input[0]"},
		{name: "no input", body: `{"model":"m"}`, param: "input"},
		{name: "text field", body: `{"model":"m","input":"x","text":{"colour":"red"}}`, param: "text.colour"},
		{name: "verbosity", body: `{"model":"m","input":"x","text":{"verbosity":"low"}}`, param: "text.verbosity"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			raw := jsonFields(t, tt.body)
			var req responsesRequest
			_ = json.Unmarshal([]byte(tt.body), &req)
			got, f := responsesToChat(raw, req)
			if tt.param != "" {
				if f == nil || f.param != tt.param {
					t.Fatalf("got %s, %+v; want field %s refused", got, f, tt.param)
				}
				return
			}
			if f != nil || compactJSON(got) != tt.want {
				t.Errorf("got %s %+v, want %s", got, f, tt.want)
			}
		})
	}
}

// workerStream is a worker's chat stream: the pieces, a finish, usage.
func workerStream(finish string, pieces ...string) *http.Response {
	var b strings.Builder
	for _, p := range pieces {
		d, _ := json.Marshal(p)
		b.WriteString(`data: {"model":"/m/x.gguf","choices":[{"index":0,"delta":{"content":` + string(d) + `}}]}` + "\n\n")
	}
	b.WriteString(`data: {"model":"/m/x.gguf","choices":[{"index":0,"delta":{},"finish_reason":"` + finish + `"}]}` + "\n\n")
	b.WriteString(`data: {"model":"/m/x.gguf","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2},"timings":{"prompt_ms":1.5,"predicted_ms":2}}` + "\n\n")
	b.WriteString("data: [DONE]\n\n")
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/event-stream"}}, Body: io.NopCloser(strings.NewReader(b.String()))}
}

// sseEvents reads a Responses API stream: each event's type line and data.
func sseEvents(t *testing.T, body string) (types []string, data []map[string]any) {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if typ, ok := strings.CutPrefix(line, "event: "); ok {
			types = append(types, typ)
		}
		if d, ok := strings.CutPrefix(line, "data: "); ok {
			var m map[string]any
			if err := json.Unmarshal([]byte(d), &m); err != nil {
				t.Fatalf("data %q: %v", d, err)
			}
			data = append(data, m)
		}
	}
	return types, data
}

// TestResponsesStream: the worker's chat stream becomes the Responses
// API's events, in order, numbered, each naming its own type; a stop at
// the limit is an incomplete response.
func TestResponsesStream(t *testing.T) {
	for _, finish := range []string{"stop", "length"} {
		rec := httptest.NewRecorder()
		a := &responsesAPI{req: responsesRequest{Model: "m", Stream: true}, id: "resp_1", msgID: "msg_1", text: json.RawMessage(`{"format":{"type":"text"}}`)}
		var use tokenUse
		if !a.answer(rec, workerStream(finish, "ab", "c"), &use) {
			t.Fatal("not complete")
		}
		end := map[string]string{"stop": "response.completed", "length": "response.incomplete"}[finish]
		types, data := sseEvents(t, rec.Body.String())
		want := []string{"response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
			"response.output_text.delta", "response.output_text.delta", "response.output_text.done", "response.content_part.done",
			"response.output_item.done", end}
		if !reflect.DeepEqual(types, want) {
			t.Fatalf("%s: events %v, want %v", finish, types, want)
		}
		for i, d := range data {
			if d["type"] != types[i] || d["sequence_number"] != float64(i) {
				t.Errorf("%s: event %d: type %v seq %v", finish, i, d["type"], d["sequence_number"])
			}
		}
		if data[4]["delta"] != "ab" || data[4]["item_id"] != "msg_1" || data[6]["text"] != "abc" {
			t.Errorf("%s: deltas %v, done %v", finish, data[4], data[6])
		}
		resp := data[len(data)-1]["response"].(map[string]any)
		status := map[string]string{"stop": "completed", "length": "incomplete"}[finish]
		if resp["status"] != status || resp["id"] != "resp_1" || resp["model"] != "m" {
			t.Errorf("%s: final response %v", finish, resp)
		}
		if finish == "length" && resp["incomplete_details"].(map[string]any)["reason"] != "max_output_tokens" {
			t.Errorf("incomplete_details %v", resp["incomplete_details"])
		}
		u := resp["usage"].(map[string]any)
		if u["input_tokens"] != 4.0 || u["output_tokens"] != 2.0 || u["total_tokens"] != 6.0 || use.PromptTokens != 4 || use.CompletionTokens != 2 {
			t.Errorf("usage %v, counted %+v", u, use)
		}
		out := resp["output"].([]any)[0].(map[string]any)["content"].([]any)[0].(map[string]any)
		if out["type"] != "output_text" || out["text"] != "abc" {
			t.Errorf("output %v", out)
		}
	}
}

// TestResponsesToolCalls: the worker's tool calls become function_call
// items after the message, whole or streamed as the Responses API's
// events (the item added, its arguments in deltas, done).
func TestResponsesToolCalls(t *testing.T) {
	stream := "data: " + `{"choices":[{"index":0,"delta":{"role":"assistant","content":"hm"}}]}` + "\n\n" +
		"data: " + `{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get","arguments":""}}]}}]}` + "\n\n" +
		"data: " + `{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"x\":"}}]}}]}` + "\n\n" +
		"data: " + `{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}}]}` + "\n\n" +
		"data: " + `{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"put","arguments":"{}"}}]}}]}` + "\n\n" +
		"data: " + `{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}` + "\n\n" +
		"data: " + `{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":9}}` + "\n\ndata: [DONE]\n\n"
	rec := httptest.NewRecorder()
	a := &responsesAPI{req: responsesRequest{Model: "m", Stream: true, Tools: json.RawMessage(`[{"type":"function","name":"get"},{"type":"function","name":"put"}]`)},
		id: "resp_1", msgID: "msg_1", text: json.RawMessage(`{"format":{"type":"text"}}`)}
	if !a.answer(rec, &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader(stream))}, &tokenUse{}) {
		t.Fatal("not complete")
	}
	types, data := sseEvents(t, rec.Body.String())
	want := []string{"response.created", "response.in_progress",
		"response.output_item.added", "response.content_part.added", "response.output_text.delta",
		"response.output_text.done", "response.content_part.done", "response.output_item.done",
		"response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.delta",
		"response.function_call_arguments.done", "response.output_item.done",
		"response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.done", "response.output_item.done",
		"response.completed"}
	if !reflect.DeepEqual(types, want) {
		t.Fatalf("events\n%v, want\n%v", types, want)
	}
	if it := data[8]["item"].(map[string]any); it["type"] != "function_call" || it["call_id"] != "call_a" || it["name"] != "get" || data[8]["output_index"] != 1.0 {
		t.Errorf("first call added: %v", data[8])
	}
	if data[11]["arguments"] != `{"x":1}` || data[11]["output_index"] != 1.0 || data[15]["arguments"] != "{}" || data[15]["output_index"] != 2.0 {
		t.Errorf("arguments done: %v, %v", data[11], data[15])
	}
	final := data[len(data)-1]["response"].(map[string]any)
	out := final["output"].([]any)
	if len(out) != 3 || out[0].(map[string]any)["type"] != "message" || out[1].(map[string]any)["arguments"] != `{"x":1}` ||
		out[2].(map[string]any)["call_id"] != "call_b" || out[2].(map[string]any)["status"] != "completed" || final["status"] != "completed" {
		t.Errorf("final output %v", out)
	}
	if tools := final["tools"].([]any); len(tools) != 2 {
		t.Errorf("tools echoed %v", final["tools"])
	}

	// Whole: only the call (no text, no empty message).
	rec = httptest.NewRecorder()
	a = &responsesAPI{req: responsesRequest{Model: "m"}, id: "resp_2", msgID: "msg_2"}
	body := `{"choices":[{"index":0,"message":{"role":"assistant","content":"","tool_calls":[{"id":"call_c","type":"function","function":{"name":"get","arguments":"{\"x\":2}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}`
	a.answer(rec, &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader(body))}, &tokenUse{})
	var r struct {
		Status string
		Output []respCall
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil || r.Status != "completed" || len(r.Output) != 1 || r.Output[0].Type != "function_call" ||
		r.Output[0].CallID != "call_c" || r.Output[0].Arguments != `{"x":2}` || !strings.HasPrefix(r.Output[0].ID, "fc_") {
		t.Errorf("whole: %s", rec.Body)
	}
}

// TestResponsesErrors: the worker's refusal names the Responses API's
// field; a stream cut short says so with an error event.
func TestResponsesErrors(t *testing.T) {
	rec := httptest.NewRecorder()
	a := &responsesAPI{req: responsesRequest{Model: "m"}}
	resp := &http.Response{StatusCode: 400, Body: io.NopCloser(strings.NewReader(
		`{"error":{"message":"max_tokens must be at least 1, got 0","type":"invalid_request_error","param":"max_tokens","code":"invalid_value"}}`))}
	a.answer(rec, resp, &tokenUse{})
	var e struct{ Error workerError }
	if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || rec.Code != 400 || deref(e.Error.Param) != "max_output_tokens" ||
		!strings.Contains(e.Error.Message, "max_output_tokens must be") {
		t.Errorf("%d %s", rec.Code, rec.Body)
	}

	rec = httptest.NewRecorder()
	a = &responsesAPI{req: responsesRequest{Model: "m", Stream: true}}
	cut := &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader(`data: {"choices":[{"delta":{"content":"a"}}]}` + "\n\n"))}
	if a.answer(rec, cut, &tokenUse{}) {
		t.Fatal("a stream without [DONE] reported complete")
	}
	a.broken(rec, "worker_crashed", "gone")
	types, data := sseEvents(t, rec.Body.String())
	if n := len(types); n < 2 || types[n-2] != "error" || types[n-1] != "response.failed" || data[n-2]["code"] != "worker_crashed" {
		t.Errorf("events %v", types)
	}
}

// TestOllamaToWorker: Ollama's chat and generate requests, options and
// format become the worker's; unknown options and fields are refused by
// name.
func TestOllamaToWorker(t *testing.T) {
	for _, tt := range []struct {
		name, body string
		chat       bool
		endpoint   string
		want       string
		param      string
	}{
		{name: "chat", chat: true, endpoint: "chat/completions",
			body: `{"model":"m","messages":[{"role":"user","content":"hi"}],"keep_alive":"5m","options":{"temperature":0,"num_predict":7,"stop":["x"],"seed":3}}`,
			want: `{"max_tokens":7,"messages":[{"content":"hi","role":"user"}],"model":"m","seed":3,"stop":["x"],"stream":true,"stream_options":{"include_usage":true},"temperature":0}`},
		{name: "generate", endpoint: "chat/completions", body: `{"model":"m","prompt":"p","system":"s","stream":false,"options":{"num_predict":-1,"top_k":5}}`,
			want: `{"messages":[{"content":"s","role":"system"},{"content":"p","role":"user"}],"model":"m","top_k":5}`},
		{name: "raw generate", endpoint: "completions", body: `{"model":"m","prompt":"p","raw":true,"stream":false,"format":"json"}`,
			want: `{"model":"m","prompt":"p","response_format":{"type":"json_object"}}`},
		{name: "unknown option", chat: true, body: `{"model":"m","messages":[],"options":{"num_ctx":4096}}`, param: "options.num_ctx"},
		{name: "images", chat: true, body: `{"model":"m","messages":[{"role":"user","content":"x","images":["aGk="]}]}`, param: "messages[0].images"},
		{name: "tools", chat: true, endpoint: "chat/completions",
			body: `{"model":"m","stream":false,"tools":[{"type":"function","function":{"name":"get","parameters":{"type":"object"}}}],"messages":[{"role":"user","content":"w?"},` +
				`{"role":"assistant","content":"","tool_calls":[{"function":{"name":"put","arguments":{}}},{"function":{"name":"get","arguments":{"x":1}}}]},` +
				`{"role":"tool","content":"got","tool_name":"get"},{"role":"tool","content":"put"}]}`,
			want: `{"messages":[{"content":"w?","role":"user"},{"content":"","role":"assistant","tool_calls":[{"function":{"arguments":{},"name":"put"},"id":"call_1_0","type":"function"},` +
				`{"function":{"arguments":{"x":1},"name":"get"},"id":"call_1_1","type":"function"}]},{"content":"got","name":"get","role":"tool","tool_call_id":"call_1_1"},` +
				`{"content":"put","name":"put","role":"tool","tool_call_id":"call_1_0"}],"model":"m","parallel_tool_calls":true,"tools":[{"type":"function","function":{"name":"get","parameters":{"type":"object"}}}]}`},
		{name: "a tool result of no call", chat: true, endpoint: "chat/completions", body: `{"model":"m","stream":false,"messages":[{"role":"tool","content":"21"}]}`,
			want: `{"messages":[{"content":"21","role":"tool","tool_call_id":"call_0"}],"model":"m"}`},
		{name: "tool name on a user", chat: true, body: `{"model":"m","messages":[{"role":"user","content":"x","tool_name":"f"}]}`, param: "messages[0].tool_name"},
		{name: "template", body: `{"model":"m","prompt":"p","template":"{{.Prompt}}"}`, param: "template"},
		{name: "bad format", body: `{"model":"m","prompt":"p","format":"yaml"}`, param: "format"},
		{name: "unknown", body: `{"model":"m","prompt":"p","frobnicate":true}`, param: "frobnicate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			raw := jsonFields(t, tt.body)
			var head ollamaHead
			_ = json.Unmarshal([]byte(tt.body), &head)
			ep, got, f := ollamaToWorker(raw, head, tt.chat, head.Stream == nil || *head.Stream)
			if tt.param != "" {
				if f == nil || f.param != tt.param {
					t.Fatalf("got %s, %+v; want field %s refused", got, f, tt.param)
				}
				return
			}
			if f != nil || ep != tt.endpoint || compactJSON(got) != tt.want {
				t.Errorf("got %s %s %+v, want %s %s", ep, got, f, tt.endpoint, tt.want)
			}
		})
	}
}

// TestOllamaStream: the worker's stream becomes NDJSON lines that each
// TestOllamaToolCalls: the worker's tool calls come back in Ollama's
// shape (arguments an object), streamed as one line once whole, and the
// answer is done with "stop".
func TestOllamaToolCalls(t *testing.T) {
	stream := "data: " + `{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get","arguments":""}}]}}]}` + "\n\n" +
		"data: " + `{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"x\":1}"}}]}}]}` + "\n\n" +
		"data: " + `{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}` + "\n\n" +
		"data: " + `{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":9}}` + "\n\ndata: [DONE]\n\n"
	type line struct {
		Message struct {
			Content   string
			ToolCalls []struct {
				ID       string
				Function struct {
					Name      string
					Arguments map[string]any
				}
			} `json:"tool_calls"`
		}
		Done       bool
		DoneReason string `json:"done_reason"`
	}
	rec := httptest.NewRecorder()
	a := &ollamaAPI{model: "m", chat: true, stream: true}
	if !a.answer(rec, &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader(stream))}, &tokenUse{}) {
		t.Fatal("not complete")
	}
	lines := strings.Split(strings.TrimSpace(rec.Body.String()), "\n")
	var got []line
	for _, l := range lines {
		var r line
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		got = append(got, r)
	}
	if len(got) != 2 || len(got[0].Message.ToolCalls) != 1 || got[0].Message.ToolCalls[0].Function.Name != "get" ||
		got[0].Message.ToolCalls[0].Function.Arguments["x"] != 1.0 || got[0].Message.ToolCalls[0].ID != "call_a" || !got[1].Done || got[1].DoneReason != "stop" {
		t.Errorf("stream: %s", rec.Body)
	}

	rec = httptest.NewRecorder()
	a = &ollamaAPI{model: "m", chat: true}
	body := `{"choices":[{"index":0,"message":{"role":"assistant","content":"","tool_calls":[{"id":"call_c","type":"function","function":{"name":"get","arguments":"{\"x\":2}"}}]},"finish_reason":"tool_calls"}]}`
	a.answer(rec, &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader(body))}, &tokenUse{})
	var r line
	if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil || !r.Done || r.DoneReason != "stop" || len(r.Message.ToolCalls) != 1 || r.Message.ToolCalls[0].Function.Arguments["x"] != 2.0 {
		t.Errorf("whole: %s", rec.Body)
	}
}

// parse, pieces first, then done with the counts and durations.
func TestOllamaStream(t *testing.T) {
	for _, chat := range []bool{true, false} {
		rec := httptest.NewRecorder()
		a := &ollamaAPI{model: "m", chat: chat, stream: true}
		var use tokenUse
		if !a.answer(rec, workerStream("length", "ab", "c"), &use) {
			t.Fatal("not complete")
		}
		lines := strings.Split(strings.TrimSpace(rec.Body.String()), "\n")
		if len(lines) != 3 || rec.Header().Get("Content-Type") != "application/x-ndjson" {
			t.Fatalf("chat=%v: %q", chat, lines)
		}
		var text string
		for i, l := range lines {
			var r struct {
				Model              string
				Message            struct{ Role, Content string }
				Response           string
				Done               bool
				DoneReason         string `json:"done_reason"`
				PromptEvalCount    int    `json:"prompt_eval_count"`
				EvalCount          int    `json:"eval_count"`
				PromptEvalDuration int64  `json:"prompt_eval_duration"`
				EvalDuration       int64  `json:"eval_duration"`
			}
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				t.Fatalf("line %q: %v", l, err)
			}
			text += r.Message.Content + r.Response
			if r.Model != "m" || r.Done != (i == 2) || (chat && r.Message.Role != "assistant") {
				t.Errorf("chat=%v line %d: %s", chat, i, l)
			}
			if i == 2 && (r.DoneReason != "length" || r.PromptEvalCount != 4 || r.EvalCount != 2 || r.PromptEvalDuration != 1500000 || r.EvalDuration != 2000000) {
				t.Errorf("chat=%v last line %s", chat, l)
			}
		}
		if text != "abc" || use.CompletionTokens != 2 {
			t.Errorf("chat=%v: text %q, use %+v", chat, text, use)
		}
	}
	// The worker's refusal names Ollama's field, in Ollama's shape.
	rec := httptest.NewRecorder()
	resp := &http.Response{StatusCode: 400, Body: io.NopCloser(strings.NewReader(
		`{"error":{"message":"response_format {\"type\":\"json_object\"} is not supported yet","type":"invalid_request_error","param":"response_format","code":"unsupported_value"}}`))}
	(&ollamaAPI{model: "m", stream: true}).answer(rec, resp, &tokenUse{})
	var e struct{ Error string }
	if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || rec.Code != 400 || !strings.HasPrefix(e.Error, "format ") {
		t.Errorf("%d %s", rec.Code, rec.Body)
	}
}

func TestHumanParams(t *testing.T) {
	for n, want := range map[uint64]string{0: "", 999: "999", 1500: "1.5K", 135_270_000: "135.3M", 8_030_261_248: "8.0B"} {
		if got := humanParams(n); got != want {
			t.Errorf("humanParams(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestDoorResponsesAndOllamaRoutes: the new routes go through the door
// like the others (a replica answers, the metrics count them under the
// model, a key limited to another model is refused in the route's own
// error shape), and Ollama's listing routes describe the fleet's models.
func TestDoorResponsesAndOllamaRoutes(t *testing.T) {
	t.Parallel()
	f := newFakeFleet(t, map[string][]string{"h1": {"w1"}})
	h := newTestDoor(t, f)
	post := func(path, body string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", path, strings.NewReader(body)))
		return rec
	}
	rec := post("/v1/responses", `{"model":"alpha","input":"hi"}`)
	var r struct {
		respObject
		Output []respMessage `json:"output"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil || rec.Code != 200 || r.Status != "completed" || r.Model != "alpha" ||
		len(r.Output) != 1 || r.Output[0].Content[0].Text != "from h1/w1" || r.Usage.TotalTokens != 5 || !strings.HasPrefix(r.ID, "resp_") {
		t.Errorf("responses: %d %s", rec.Code, rec.Body)
	}
	rec = post("/api/chat", `{"model":"alpha","messages":[{"role":"user","content":"hi"}],"stream":false}`)
	var c struct {
		Model   string
		Message struct{ Content string }
		Done    bool
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &c); err != nil || rec.Code != 200 || c.Message.Content != "from h1/w1" || !c.Done || c.Model != "alpha" {
		t.Errorf("api/chat: %d %s", rec.Code, rec.Body)
	}
	// Refused fields: 400 naming them, after the model is known (counted
	// under it), in each API's shape.
	rec = post("/v1/responses", `{"model":"alpha","input":"hi","tools":[{"type":"web_search"}]}`)
	if rec.Code != 400 || !strings.Contains(rec.Body.String(), `"param":"tools[0].type"`) {
		t.Errorf("responses with tools: %d %s", rec.Code, rec.Body)
	}
	rec = post("/api/generate", `{"model":"alpha","prompt":"hi","options":{"mirostat":1}}`)
	if rec.Code != 400 || !strings.Contains(rec.Body.String(), `{"error":"option \"mirostat\" is not supported`) {
		t.Errorf("generate with mirostat: %d %s", rec.Code, rec.Body)
	}
	// Ollama's heartbeat, pull of a model the fleet holds, management.
	for _, method := range []string{"GET", "HEAD"} {
		rec = httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, "/", nil))
		if want := map[string]string{"GET": "Ollama is running", "HEAD": ""}[method]; rec.Code != 200 || rec.Body.String() != want {
			t.Errorf("%s /: %d %q", method, rec.Code, rec.Body)
		}
	}
	if rec = post("/api/pull", `{"model":"alpha"}`); rec.Code != 200 || strings.TrimSpace(rec.Body.String()) != `{"status":"success"}` {
		t.Errorf("pull of a model the fleet holds: %d %s", rec.Code, rec.Body)
	}
	if rec = post("/api/pull", `{"model":"hf:a/b:x.gguf","stream":false}`); rec.Code != 404 || !strings.Contains(rec.Body.String(), "rbee model pull") {
		t.Errorf("pull of another model: %d %s", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("DELETE", "/api/delete", strings.NewReader(`{"model":"alpha"}`)))
	if rec.Code != 501 || !strings.Contains(rec.Body.String(), "rbee model rm") {
		t.Errorf("delete: %d %s", rec.Code, rec.Body)
	}
	rec = post("/api/chat", `{"model":"nope","messages":[]}`)
	if rec.Code != 404 || !strings.HasPrefix(rec.Body.String(), `{"error":"model \"nope\" is not on any hive`) {
		t.Errorf("unknown model: %d %s", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{`rbee_requests_total{model="alpha",status="200"} 2`, `rbee_requests_total{model="alpha",status="400"} 2`,
		`rbee_requests_total{model="unknown",status="404"} 1`} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/api/tags", nil))
	var tags struct{ Models []ollamaModel }
	if err := json.Unmarshal(rec.Body.Bytes(), &tags); err != nil || len(tags.Models) != 2 || tags.Models[0].Name != "alpha" ||
		tags.Models[0].Digest != alphaSHA || tags.Models[0].Details.Format != "gguf" || tags.Models[0].Size != 1<<20 {
		t.Errorf("tags: %s", rec.Body)
	}
	if rec := post("/api/show", `{"model":"alpha.gguf"}`); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"capabilities":["completion","tools","embedding"]`) {
		t.Errorf("show: %d %s", rec.Code, rec.Body)
	}
	if rec := post("/api/show", `{"model":"beta"}`); rec.Code != 404 || rec.Body.String() != `{"error":"model 'beta' not found"}`+"\n" {
		t.Errorf("show beta: %d %s", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/api/ps", nil))
	if !strings.Contains(rec.Body.String(), `"name":"alpha"`) || !strings.Contains(rec.Body.String(), `"size_vram":0`) {
		t.Errorf("ps: %s", rec.Body)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/api/version", nil))
	if rec.Body.String() != `{"version":"`+ollamaVersion+`"}`+"\n" {
		t.Errorf("version: %s", rec.Body)
	}

	// A key for another model: Ollama's shape on its routes, OpenAI's on
	// the others.
	g := Guard("", []APIKey{{ID: "app", key: "0123456789abcdef0123", Models: []string{"beta"}}}, testLog(), h)
	for path, want := range map[string]string{"/api/chat": `{"error":"this API key`, "/v1/responses": `{"error":{"code":"model_not_allowed"`} {
		req := httptest.NewRequest("POST", path, strings.NewReader(`{"model":"alpha","input":"x","messages":[]}`))
		req.Header.Set("Authorization", "Bearer 0123456789abcdef0123")
		rec = httptest.NewRecorder()
		g.ServeHTTP(rec, req)
		if rec.Code != 403 || !strings.HasPrefix(rec.Body.String(), want) {
			t.Errorf("%s with a key for beta: %d %s", path, rec.Code, rec.Body)
		}
	}
	rec = httptest.NewRecorder()
	g.ServeHTTP(rec, httptest.NewRequest("GET", "/api/tags", nil))
	if rec.Code != 401 || !strings.HasPrefix(rec.Body.String(), `{"error":"this queen needs an API key`) {
		t.Errorf("tags without a key: %d %s", rec.Code, rec.Body)
	}
}
