package door

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/rbee-dev/rbee/queen/internal/reply"
)

// responsesFields are the fields of POST /v1/responses: honoured, harmless
// (bookkeeping for the caller's side), or accepted only when they ask for
// nothing. The README's table says the same for users.
var responsesFields = fieldCheck{
	honoured: []string{"model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "stream", "text",
		"tools", "tool_choice", "parallel_tool_calls"},
	harmless: []string{"user", "metadata", "service_tier", "prompt_cache_key", "prompt_cache_retention", "safety_identifier",
		"stream_options"},
	nothing: map[string][]string{
		"store": {"false"}, "include": {"[]"},
		"truncation": {`"disabled"`}, "background": {"false"}, "top_logprobs": {"0"}, "max_tool_calls": {},
		"previous_response_id": {}, "conversation": {}, "reasoning": {}, "prompt": {},
	},
	why: map[string]string{
		"store":                "this door keeps no responses to retrieve later; send store: false or leave it out",
		"previous_response_id": "this door keeps no responses; send the conversation's messages in input",
		"conversation":         "this door keeps no conversations; send the conversation's messages in input",
		"include":              "there is nothing more to include",
		"reasoning":            "the door's models have no reasoning settings",
		"prompt":               "the door keeps no prompt templates",
		"background":           "responses are answered in the foreground only",
		"truncation":           "the input is never truncated (a prompt longer than the context is an error)",
		"max_tool_calls":       "the number of tool calls is not bounded here (parallel_tool_calls: false asks for one at most)",
		"top_logprobs":         "log probabilities are not returned by /v1/responses (use /v1/chat/completions)",
	},
}

// responsesRename names the Responses API's fields for the chat
// completion's, in the worker's errors.
var responsesRename = map[string]string{"max_tokens": "max_output_tokens", "response_format": "text.format", "messages": "input"}

// responsesRequest is what the door reads of POST /v1/responses.
type responsesRequest struct {
	Model           string   `json:"model"`
	Instructions    *string  `json:"instructions"`
	MaxOutputTokens *int     `json:"max_output_tokens"`
	Temperature     *float64 `json:"temperature"`
	TopP            *float64 `json:"top_p"`
	Stream          bool     `json:"stream"`
	// Tools and ToolChoice are echoed in the response as sent.
	Tools             json.RawMessage `json:"tools"`
	ToolChoice        json.RawMessage `json:"tool_choice"`
	ParallelToolCalls *bool           `json:"parallel_tool_calls"`
	Text              *struct {
		Format    json.RawMessage `json:"format"`
		Verbosity *string         `json:"verbosity"`
	} `json:"text"`
}

// responses serves POST /v1/responses (OpenAI's Responses API, the part
// its SDKs and the Vercel AI SDK use for text): the input becomes a chat
// completion on the worker, routed like any other, and its answer a
// response object or the Responses API's stream of events.
func (dr *Door) responses(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r, oaiErrors{})
	if !ok {
		return
	}
	var raw map[string]json.RawMessage
	var req responsesRequest
	if json.Unmarshal(body, &raw) != nil || json.Unmarshal(body, &req) != nil || req.Model == "" {
		writeOAI(w, http.StatusBadRequest, "invalid_request_error", "invalid_body", "the body must be a JSON object naming a model")
		return
	}
	chat, refuse := responsesToChat(raw, req)
	api := &responsesAPI{req: req, id: "resp_" + randomHex(24), msgID: "msg_" + randomHex(24), created: time.Now().Unix(), text: json.RawMessage(`{"format":{"type":"text"}}`)}
	if req.Text != nil && req.Text.Format != nil {
		api.text, _ = json.Marshal(map[string]json.RawMessage{"format": req.Text.Format})
	}
	dr.serve(w, r, exchange{model: req.Model, endpoint: "chat/completions", body: chat, api: api, refuse: refuse})
}

// responsesToChat translates a Responses API request to the worker's chat
// completion, or says which field it cannot carry.
func responsesToChat(raw map[string]json.RawMessage, req responsesRequest) ([]byte, *fieldError) {
	if f := responsesFields.check(raw); f != nil {
		return nil, f
	}
	var msgs []map[string]any
	if req.Instructions != nil && *req.Instructions != "" {
		msgs = append(msgs, map[string]any{"role": "system", "content": *req.Instructions})
	}
	in, f := responsesInput(raw["input"])
	if f != nil {
		return nil, f
	}
	msgs = append(msgs, in...)
	chat := map[string]any{"model": req.Model, "messages": msgs}
	copyField(chat, "max_tokens", raw, "max_output_tokens")
	copyField(chat, "temperature", raw, "temperature")
	copyField(chat, "top_p", raw, "top_p")
	copyField(chat, "parallel_tool_calls", raw, "parallel_tool_calls")
	if f := responsesTools(chat, raw); f != nil {
		return nil, f
	}
	if _, set := chat["parallel_tool_calls"]; !set && chat["tools"] != nil {
		chat["parallel_tool_calls"] = true // the Responses API's default
	}
	if req.Stream {
		chat["stream"] = true
		chat["stream_options"] = map[string]bool{"include_usage": true}
	}
	if req.Text != nil {
		var sub map[string]json.RawMessage
		_ = json.Unmarshal(raw["text"], &sub)
		for k := range sub {
			if k != "format" && k != "verbosity" {
				return nil, &fieldError{param: "text." + k, code: "unsupported_parameter", msg: fmt.Sprintf("request field \"text.%s\" is not supported: text takes format", k)}
			}
		}
		if req.Text.Verbosity != nil {
			return nil, &fieldError{param: "text.verbosity", code: "unsupported_parameter", msg: "text.verbosity is not supported: the door's models have no verbosity setting"}
		}
		rf, f := responsesFormat(req.Text.Format)
		if f != nil {
			return nil, f
		}
		if rf != nil {
			chat["response_format"] = rf
		}
	}
	b, err := json.Marshal(chat)
	if err != nil {
		return nil, &fieldError{param: "input", code: "invalid_value", msg: err.Error()}
	}
	return b, nil
}

// responsesFormat maps text.format to the chat completion's
// response_format (nil for text); the worker refuses what it cannot do.
func responsesFormat(raw json.RawMessage) (any, *fieldError) {
	if raw == nil || compactJSON(raw) == "null" {
		return nil, nil
	}
	var f struct {
		Type        string          `json:"type"`
		Name        string          `json:"name"`
		Description string          `json:"description"`
		Schema      json.RawMessage `json:"schema"`
		Strict      *bool           `json:"strict"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, &fieldError{param: "text.format", code: "invalid_value", msg: "text.format must be an object with a type"}
	}
	switch f.Type {
	case "text":
		return nil, nil
	case "json_object":
		return map[string]string{"type": "json_object"}, nil
	case "json_schema":
		js := map[string]any{"name": f.Name, "schema": f.Schema}
		if f.Description != "" {
			js["description"] = f.Description
		}
		if f.Strict != nil {
			js["strict"] = *f.Strict
		}
		return map[string]any{"type": "json_schema", "json_schema": js}, nil
	}
	return nil, &fieldError{param: "text.format", code: "unsupported_value", msg: fmt.Sprintf("text.format type %q is not supported (text, json_object, json_schema)", f.Type)}
}

// responsesInput turns input (a string, or a list of items: messages,
// the model's function calls and their outputs) into chat messages.
func responsesInput(raw json.RawMessage) ([]map[string]any, *fieldError) {
	if raw == nil || compactJSON(raw) == "null" {
		return nil, &fieldError{param: "input", code: "missing_required_parameter", msg: "input is required: a string or a list of messages"}
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return []map[string]any{{"role": "user", "content": s}}, nil
	}
	var items []struct {
		Type      string          `json:"type"`
		Role      string          `json:"role"`
		Content   json.RawMessage `json:"content"`
		CallID    string          `json:"call_id"`
		Name      string          `json:"name"`
		Arguments string          `json:"arguments"`
		Output    json.RawMessage `json:"output"`
	}
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, &fieldError{param: "input", code: "invalid_value", msg: "input must be a string or a list of items (messages, function_call, function_call_output)"}
	}
	var msgs []map[string]any
	for i, it := range items {
		at := fmt.Sprintf("input[%d]", i)
		switch it.Type {
		case "", "message":
		case "function_call":
			// The model's call, as a chat assistant message's tool_calls
			// (calls in a row, and the text before them, make one turn).
			if it.CallID == "" || it.Name == "" {
				return nil, &fieldError{param: at, code: "invalid_value", msg: at + ": a function_call item needs call_id and name"}
			}
			call := map[string]any{"id": it.CallID, "type": "function", "function": map[string]string{"name": it.Name, "arguments": it.Arguments}}
			if n := len(msgs); n > 0 && msgs[n-1]["role"] == "assistant" {
				calls, _ := msgs[n-1]["tool_calls"].([]any)
				msgs[n-1]["tool_calls"] = append(calls, call)
				continue
			}
			msgs = append(msgs, map[string]any{"role": "assistant", "content": "", "tool_calls": []any{call}})
			continue
		case "function_call_output":
			if it.CallID == "" {
				return nil, &fieldError{param: at + ".call_id", code: "invalid_value", msg: at + ": a function_call_output item needs the call_id it answers"}
			}
			out, f := responsesContent(it.Output, at+".output")
			if f != nil {
				return nil, f
			}
			msgs = append(msgs, map[string]any{"role": "tool", "tool_call_id": it.CallID, "content": out})
			continue
		default:
			return nil, &fieldError{param: at, code: "unsupported_value",
				msg: fmt.Sprintf("%s: item type %q is not supported; messages, function_call and function_call_output are (this door keeps no items to refer to; with the Vercel AI SDK set providerOptions.openai.store to false)", at, it.Type)}
		}
		switch it.Role {
		case "user", "system", "developer", "assistant":
		default:
			return nil, &fieldError{param: at + ".role", code: "invalid_value", msg: fmt.Sprintf("%s.role %q: want user, system, developer or assistant", at, it.Role)}
		}
		text, f := responsesContent(it.Content, at+".content")
		if f != nil {
			return nil, f
		}
		msgs = append(msgs, map[string]any{"role": it.Role, "content": text})
	}
	return msgs, nil
}

// responsesTools sets the chat completion's tools and tool_choice from
// the Responses API's (function tools, flat: {type, name, description,
// parameters, strict}).
func responsesTools(chat map[string]any, raw map[string]json.RawMessage) *fieldError {
	if t := raw["tools"]; t != nil && compactJSON(t) != "null" {
		var tools []map[string]json.RawMessage
		if err := json.Unmarshal(t, &tools); err != nil {
			return &fieldError{param: "tools", code: "invalid_value", msg: "tools must be a list of {\"type\":\"function\",\"name\":…,\"parameters\":{…}}"}
		}
		out := make([]any, 0, len(tools))
		for i, tool := range tools {
			at := fmt.Sprintf("tools[%d]", i)
			var typ string
			_ = json.Unmarshal(tool["type"], &typ)
			if typ != "function" {
				return &fieldError{param: at + ".type", code: "unsupported_value",
					msg: fmt.Sprintf("%s.type %q is not supported: the door runs no hosted tools; the model calls functions (type function) that the client runs", at, typ)}
			}
			fn := map[string]json.RawMessage{}
			for k, v := range tool {
				switch k {
				case "type":
				case "name", "description", "parameters", "strict":
					fn[k] = v
				default:
					return &fieldError{param: at + "." + k, code: "unsupported_parameter", msg: fmt.Sprintf("%s.%s is not supported (name, description, parameters and strict are)", at, k)}
				}
			}
			out = append(out, map[string]any{"type": "function", "function": fn})
		}
		chat["tools"] = out
	}
	tc := raw["tool_choice"]
	if tc == nil || compactJSON(tc) == "null" {
		return nil
	}
	var s string
	if json.Unmarshal(tc, &s) == nil {
		chat["tool_choice"] = s // none, auto, required: the worker checks
		return nil
	}
	var obj struct {
		Type string `json:"type"`
		Name string `json:"name"`
	}
	if err := json.Unmarshal(tc, &obj); err != nil || obj.Type != "function" || obj.Name == "" {
		return &fieldError{param: "tool_choice", code: "unsupported_value", msg: "tool_choice must be none, auto, required or {\"type\":\"function\",\"name\":…}"}
	}
	chat["tool_choice"] = map[string]any{"type": "function", "function": map[string]string{"name": obj.Name}}
	return nil
}

// responsesContent is a message's text: a string, or text parts
// (input_text, and output_text in the assistant's turns).
func responsesContent(raw json.RawMessage, at string) (string, *fieldError) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	if raw == nil {
		return "", &fieldError{param: at, code: "missing_required_parameter", msg: at + " is required"}
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", &fieldError{param: at, code: "invalid_value", msg: at + " must be a string or a list of content parts"}
	}
	var text string
	for j, p := range parts {
		if p.Type != "input_text" && p.Type != "output_text" {
			return "", &fieldError{param: fmt.Sprintf("%s[%d]", at, j), code: "unsupported_content",
				msg: fmt.Sprintf("%s[%d]: content type %q is not supported; the door's models take text (input_text)", at, j, p.Type)}
		}
		text += p.Text
	}
	return text, nil
}

// The Responses API's objects, as the SDKs read them.
type (
	respObject struct {
		ID                 string            `json:"id"`
		Object             string            `json:"object"`
		CreatedAt          int64             `json:"created_at"`
		Status             string            `json:"status"`
		Background         bool              `json:"background"`
		Error              *respError        `json:"error"`
		IncompleteDetails  *respIncomplete   `json:"incomplete_details"`
		Instructions       *string           `json:"instructions"`
		MaxOutputTokens    *int              `json:"max_output_tokens"`
		Model              string            `json:"model"`
		Output             []any             `json:"output"` // respMessage and respCall items
		ParallelToolCalls  bool              `json:"parallel_tool_calls"`
		PreviousResponseID *string           `json:"previous_response_id"`
		Reasoning          map[string]any    `json:"reasoning"`
		Store              bool              `json:"store"`
		Temperature        float64           `json:"temperature"`
		Text               json.RawMessage   `json:"text"`
		ToolChoice         json.RawMessage   `json:"tool_choice"`
		Tools              json.RawMessage   `json:"tools"`
		TopP               float64           `json:"top_p"`
		Truncation         string            `json:"truncation"`
		Usage              *respUsage        `json:"usage"`
		Metadata           map[string]string `json:"metadata"`
	}
	respError struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	respIncomplete struct {
		Reason string `json:"reason"`
	}
	respMessage struct {
		ID      string     `json:"id"`
		Type    string     `json:"type"` // message
		Status  string     `json:"status"`
		Role    string     `json:"role"`
		Content []respPart `json:"content"`
	}
	// respCall is a function call the model made: the client runs it and
	// sends a function_call_output item with its call_id.
	respCall struct {
		ID        string `json:"id"`
		Type      string `json:"type"` // function_call
		Status    string `json:"status"`
		CallID    string `json:"call_id"`
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	}
	respPart struct {
		Type        string `json:"type"`
		Text        string `json:"text"`
		Annotations []any  `json:"annotations"`
		Logprobs    []any  `json:"logprobs"`
	}
	respUsage struct {
		InputTokens        int            `json:"input_tokens"`
		InputTokensDetails map[string]int `json:"input_tokens_details"`
		OutputTokens       int            `json:"output_tokens"`
		OutputDetails      map[string]int `json:"output_tokens_details"`
		TotalTokens        int            `json:"total_tokens"`
	}
)

// responsesAPI writes the worker's chat completion as a response object,
// or its stream as the Responses API's events: text as a message item,
// each tool call as a function_call item after it.
type responsesAPI struct {
	oaiErrors
	req          responsesRequest
	id, msgID    string
	created      int64
	text         json.RawMessage // the response's text config: the format asked for
	seq          int             // the stream's next sequence_number
	started      bool            // the stream's first events went out
	out          string          // the message's text so far
	finishReason string
	usage        *respUsage
	// The stream's output items: those done, the message while its text
	// comes (msgOpen), the call whose arguments come (call, by the
	// worker's index callIndex).
	items     []any
	msgOpen   bool
	call      *respCall
	callIndex int
	closed    int // calls (by the worker's index) closed: below it
}

func (a *responsesAPI) answer(w http.ResponseWriter, resp *http.Response, use *tokenUse) bool {
	if resp.StatusCode != http.StatusOK {
		e := workerFailure(resp, responsesRename)
		a.fail(w, resp.StatusCode, e.Type, e.Code, deref(e.Param), e.Message)
		return true
	}
	if !a.req.Stream {
		var ans chatAnswer
		if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&ans); err != nil {
			return false
		}
		ans.count(use)
		a.out, a.finishReason = ans.text(), ans.finish()
		a.setUsage(&ans)
		calls := ans.calls()
		if a.out != "" || len(calls) == 0 {
			a.items = append(a.items, a.message())
		}
		for _, c := range calls {
			a.items = append(a.items, respCall{ID: "fc_" + randomHex(24), Type: "function_call", Status: "completed", CallID: c.ID, Name: c.Name, Arguments: c.Arguments})
		}
		reply.JSON(w, http.StatusOK, a.object())
		return true
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	a.started = true
	obj := a.object()
	obj.Status, obj.Output, obj.Usage = "in_progress", []any{}, nil
	a.event(w, "response.created", map[string]any{"response": obj})
	a.event(w, "response.in_progress", map[string]any{"response": obj})
	flush(w)
	failed := false
	done, _ := readSSE(resp.Body, func(data []byte) error {
		var ev chatAnswer
		if json.Unmarshal(data, &ev) != nil {
			return nil
		}
		if ev.Error != nil {
			failed = true
			renameParam(ev.Error, responsesRename)
			a.fail1(w, ev.Error.Code, ev.Error.Message, deref(ev.Error.Param))
			return nil
		}
		ev.count(use)
		a.setUsage(&ev)
		if f := ev.finish(); f != "" {
			a.finishReason = f
		}
		if d := ev.text(); d != "" {
			a.closeCall(w)
			a.openMessage(w)
			a.out += d
			a.event(w, "response.output_text.delta", map[string]any{"item_id": a.msgID, "output_index": len(a.items), "content_index": 0, "delta": d, "logprobs": []any{}})
		}
		for _, d := range ev.callDeltas() {
			a.callDelta(w, d)
		}
		flush(w)
		return nil
	})
	if !done {
		return false
	}
	if failed {
		return true
	}
	a.closeCall(w)
	if len(a.items) == 0 {
		a.openMessage(w) // an empty answer is an empty message
	}
	a.closeMessage(w)
	obj = a.object()
	end := "response.completed"
	if obj.Status == "incomplete" {
		end = "response.incomplete"
	}
	a.event(w, end, map[string]any{"response": obj})
	flush(w)
	return true
}

// openMessage starts the message item, once.
func (a *responsesAPI) openMessage(w http.ResponseWriter) {
	if a.msgOpen {
		return
	}
	a.msgOpen = true
	a.event(w, "response.output_item.added", map[string]any{"output_index": len(a.items),
		"item": respMessage{ID: a.msgID, Type: "message", Status: "in_progress", Role: "assistant", Content: []respPart{}}})
	a.event(w, "response.content_part.added", map[string]any{"item_id": a.msgID, "output_index": len(a.items), "content_index": 0, "part": textPart("")})
}

// closeMessage ends the open message item.
func (a *responsesAPI) closeMessage(w http.ResponseWriter) {
	if !a.msgOpen {
		return
	}
	a.msgOpen = false
	at := len(a.items)
	a.event(w, "response.output_text.done", map[string]any{"item_id": a.msgID, "output_index": at, "content_index": 0, "text": a.out, "logprobs": []any{}})
	a.event(w, "response.content_part.done", map[string]any{"item_id": a.msgID, "output_index": at, "content_index": 0, "part": textPart(a.out)})
	m := a.message()
	a.items = append(a.items, m)
	a.event(w, "response.output_item.done", map[string]any{"output_index": at, "item": m})
}

// callDelta carries a piece of a tool call: a new call (its id and name)
// ends the message or the call before it; its arguments come as deltas.
func (a *responsesAPI) callDelta(w http.ResponseWriter, d toolCallWire) {
	if d.Index < a.closed {
		return // a call already closed: the worker streams calls in order
	}
	if a.call == nil || d.Index != a.callIndex {
		a.closeMessage(w)
		a.closeCall(w)
		a.call, a.callIndex = &respCall{ID: "fc_" + randomHex(24), Type: "function_call", Status: "in_progress", CallID: d.ID, Name: d.Function.Name}, d.Index
		a.event(w, "response.output_item.added", map[string]any{"output_index": len(a.items), "item": *a.call})
	}
	if d.Function.Arguments != "" {
		a.call.Arguments += d.Function.Arguments
		a.event(w, "response.function_call_arguments.delta", map[string]any{"item_id": a.call.ID, "output_index": len(a.items), "delta": d.Function.Arguments})
	}
}

// closeCall ends the call whose arguments were coming.
func (a *responsesAPI) closeCall(w http.ResponseWriter) {
	if a.call == nil {
		return
	}
	c := *a.call
	a.call, a.closed = nil, a.callIndex+1
	c.Status = "completed"
	at := len(a.items)
	a.event(w, "response.function_call_arguments.done", map[string]any{"item_id": c.ID, "output_index": at, "name": c.Name, "arguments": c.Arguments})
	a.items = append(a.items, c)
	a.event(w, "response.output_item.done", map[string]any{"output_index": at, "item": c})
}

// message is the message item as it stands.
func (a *responsesAPI) message() respMessage {
	status := "completed"
	if a.finishReason == "length" {
		status = "incomplete"
	}
	return respMessage{ID: a.msgID, Type: "message", Status: status, Role: "assistant", Content: []respPart{textPart(a.out)}}
}

// broken ends a stream with an error event and the failed response; an
// answer not yet started gets a 503.
func (a *responsesAPI) broken(w http.ResponseWriter, code, msg string) {
	if !a.started {
		a.fail(w, http.StatusServiceUnavailable, "server_error", code, "", msg)
		return
	}
	a.fail1(w, code, msg, "")
}

// fail1 ends a stream with OpenAI's error event and response.failed.
func (a *responsesAPI) fail1(w http.ResponseWriter, code, msg, param string) {
	var p any
	if param != "" {
		p = param
	}
	a.event(w, "error", map[string]any{"code": code, "message": msg, "param": p})
	obj := a.object()
	obj.Status, obj.Error, obj.IncompleteDetails = "failed", &respError{Code: code, Message: msg}, nil
	a.event(w, "response.failed", map[string]any{"response": obj})
	flush(w)
}

// event writes one event of the stream, numbered.
func (a *responsesAPI) event(w http.ResponseWriter, typ string, fields map[string]any) {
	fields["type"] = typ
	fields["sequence_number"] = a.seq
	a.seq++
	b, _ := json.Marshal(fields)
	_, _ = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", typ, b)
}

func (a *responsesAPI) setUsage(ans *chatAnswer) {
	if u := ans.Usage; u != nil {
		cached := 0
		if u.PromptTokensDetails != nil {
			cached = u.PromptTokensDetails.CachedTokens
		}
		a.usage = &respUsage{InputTokens: u.PromptTokens, InputTokensDetails: map[string]int{"cached_tokens": cached},
			OutputTokens: u.CompletionTokens, OutputDetails: map[string]int{"reasoning_tokens": 0}, TotalTokens: u.PromptTokens + u.CompletionTokens}
	}
}

// object is the response as it stands: completed, or incomplete when the
// worker stopped at max_output_tokens; its output the items done and the
// one under way.
func (a *responsesAPI) object() respObject {
	o := respObject{ID: a.id, Object: "response", CreatedAt: a.created, Status: "completed", Instructions: a.req.Instructions,
		MaxOutputTokens: a.req.MaxOutputTokens, Model: a.req.Model, Reasoning: map[string]any{"effort": nil, "summary": nil},
		Temperature: 1, Text: a.text, ToolChoice: json.RawMessage(`"auto"`), Tools: json.RawMessage(`[]`), TopP: 1, Truncation: "disabled",
		Usage: a.usage, Metadata: map[string]string{}}
	if a.req.Temperature != nil {
		o.Temperature = *a.req.Temperature
	}
	if a.req.TopP != nil {
		o.TopP = *a.req.TopP
	}
	if t := a.req.Tools; t != nil && compactJSON(t) != "null" {
		o.Tools = t
	}
	if t := a.req.ToolChoice; t != nil && compactJSON(t) != "null" {
		o.ToolChoice = t
	}
	o.ParallelToolCalls = true // the Responses API's default
	if p := a.req.ParallelToolCalls; p != nil {
		o.ParallelToolCalls = *p
	}
	if a.finishReason == "length" {
		o.Status = "incomplete"
		o.IncompleteDetails = &respIncomplete{Reason: "max_output_tokens"}
	}
	o.Output = append([]any{}, a.items...)
	if a.msgOpen {
		o.Output = append(o.Output, a.message())
	}
	if a.call != nil {
		o.Output = append(o.Output, *a.call)
	}
	return o
}

func textPart(text string) respPart {
	return respPart{Type: "output_text", Text: text, Annotations: []any{}, Logprobs: []any{}}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// randomHex is n random bytes in hex (ids of responses and items).
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
