package chat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/ardanlabs/jinja"
)

// Message is one message of a conversation.
type Message struct {
	Role    string // system, user, assistant or tool
	Content string
	// ToolCalls are the calls an assistant message made.
	ToolCalls []ToolCall
	// ToolCallID is the call a tool message answers; Name the tool's name
	// when the caller sent it.
	ToolCallID string
	Name       string
}

// ToolCall is one call of a function: Arguments is a JSON object, as text.
type ToolCall struct {
	ID        string
	Name      string
	Arguments string
}

// Tool is a function the model may call. Raw is the tool as the caller
// sent it ({"type":"function","function":{…}}): templates show it to the
// model, members in the caller's order.
type Tool struct {
	Name       string
	Parameters json.RawMessage
	Strict     bool // OpenAI's strict mode for the parameters' schema
	Raw        json.RawMessage
}

// Template is a compiled chat template; safe for concurrent use.
type Template struct {
	src      string
	t        *jinja.Template
	bos, eos string
	format   Format
}

// Compile compiles a Jinja chat template. bos and eos are the texts of
// the model's begin and end of stream tokens, which templates write
// themselves.
func Compile(src, bos, eos string) (*Template, error) {
	t, err := jinja.Compile(src)
	if err != nil {
		return nil, fmt.Errorf("compile chat template: %w", err)
	}
	return &Template{src: src, t: t, bos: bos, eos: eos, format: Detect(src)}, nil
}

// Format is the tool-call syntax of the template's family.
func (t *Template) Format() Format { return t.format }

// Render writes the prompt for msgs, offering tools (none: no tools), and
// the start of the assistant's answer when addGenerationPrompt. With the
// generic format, the tools and the answer's JSON shape are described in
// a system message, and calls and results are written as JSON, as
// llama.cpp does for templates that know no tools.
func (t *Template) Render(msgs []Message, tools []Tool, addGenerationPrompt bool) (string, error) {
	if t.format == Generic && (len(tools) > 0 || hasToolMessages(msgs)) {
		msgs = genericMessages(msgs, tools)
		tools = nil
	}
	data := map[string]jinja.Value{
		"messages":              messagesValue(msgs),
		"add_generation_prompt": jinja.NewBool(addGenerationPrompt),
		"bos_token":             jinja.NewString(t.bos),
		"eos_token":             jinja.NewString(t.eos),
	}
	if len(tools) > 0 {
		items := make([]jinja.Value, len(tools))
		for i, tl := range tools {
			v, err := jsonValue(tl.Raw)
			if err != nil {
				return "", fmt.Errorf("tool %s: %w", tl.Name, err)
			}
			items[i] = v
		}
		data["tools"] = jinja.NewList(items)
	}
	out, err := t.t.RenderValues(data)
	if err != nil {
		return "", fmt.Errorf("render chat template: %w", err)
	}
	return out, nil
}

func hasToolMessages(msgs []Message) bool {
	for _, m := range msgs {
		if m.Role == "tool" || len(m.ToolCalls) > 0 {
			return true
		}
	}
	return false
}

// messagesValue turns msgs into what templates read: OpenAI's message
// objects, with each call's arguments as an object (templates write them
// with tojson), tool_calls only on messages that made calls.
func messagesValue(msgs []Message) jinja.Value {
	items := make([]jinja.Value, len(msgs))
	for i, m := range msgs {
		d := jinja.NewDict()
		dict := d.AsDict()
		dict.Set("role", jinja.NewString(m.Role))
		dict.Set("content", jinja.NewString(m.Content))
		if len(m.ToolCalls) > 0 {
			calls := make([]jinja.Value, len(m.ToolCalls))
			for j, c := range m.ToolCalls {
				fn := jinja.NewDict()
				fn.AsDict().Set("name", jinja.NewString(c.Name))
				args, err := jsonValue(json.RawMessage(c.Arguments))
				if err != nil || !args.IsDict() {
					args = jinja.NewString(c.Arguments)
				}
				fn.AsDict().Set("arguments", args)
				call := jinja.NewDict()
				call.AsDict().Set("id", jinja.NewString(c.ID))
				call.AsDict().Set("type", jinja.NewString("function"))
				call.AsDict().Set("function", fn)
				calls[j] = call
			}
			dict.Set("tool_calls", jinja.NewList(calls))
		}
		if m.ToolCallID != "" {
			dict.Set("tool_call_id", jinja.NewString(m.ToolCallID))
		}
		if m.Name != "" {
			dict.Set("name", jinja.NewString(m.Name))
		}
		items[i] = d
	}
	return jinja.NewList(items)
}

// jsonValue decodes JSON into a template value, keeping the order of an
// object's members (tojson writes them back in that order).
func jsonValue(raw json.RawMessage) (jinja.Value, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	v, err := decodeValue(dec)
	if err != nil {
		return jinja.Undefined(), fmt.Errorf("decode JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return jinja.Undefined(), fmt.Errorf("decode JSON: data after the value")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder) (jinja.Value, error) {
	tok, err := dec.Token()
	if err != nil {
		return jinja.Undefined(), err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			d := jinja.NewDict()
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return jinja.Undefined(), err
				}
				v, err := decodeValue(dec)
				if err != nil {
					return jinja.Undefined(), err
				}
				d.AsDict().Set(k.(string), v)
			}
			_, err := dec.Token()
			return d, err
		case '[':
			var items []jinja.Value
			for dec.More() {
				v, err := decodeValue(dec)
				if err != nil {
					return jinja.Undefined(), err
				}
				items = append(items, v)
			}
			_, err := dec.Token()
			return jinja.NewList(items), err
		}
		return jinja.Undefined(), fmt.Errorf("unexpected %v", t)
	default:
		return jinja.FromGoValue(t), nil
	}
}

// genericMessages prepares msgs for a template that knows no tools, as
// llama.cpp's generic format does: a system message tells the model the
// tools and that it answers in JSON; an assistant's calls become its
// content, {"tool_calls":[…]}; a tool's result a user message
// {"tool_response":{…}}.
func genericMessages(msgs []Message, tools []Tool) []Message {
	var sb strings.Builder
	if len(tools) > 0 {
		sb.WriteString("You can call any of the following tools to satisfy the user's requests: [")
		for i, t := range tools {
			if i > 0 {
				sb.WriteString(", ")
			}
			sb.Write(compact(t.Raw))
		}
		sb.WriteString("]\n\n")
	}
	sb.WriteString(genericInstruction)
	out := make([]Message, 0, len(msgs)+1)
	if len(msgs) > 0 && msgs[0].Role == "system" {
		out = append(out, Message{Role: "system", Content: msgs[0].Content + "\n\n" + sb.String()})
		msgs = msgs[1:]
	} else {
		out = append(out, Message{Role: "system", Content: sb.String()})
	}
	for _, m := range msgs {
		switch {
		case len(m.ToolCalls) > 0:
			calls := make([]genericCall, len(m.ToolCalls))
			for i, c := range m.ToolCalls {
				calls[i] = genericCall{Name: c.Name, Arguments: json.RawMessage(argsJSON(c.Arguments)), ID: c.ID}
			}
			b, _ := json.Marshal(struct {
				ToolCalls []genericCall `json:"tool_calls"`
			}{calls})
			m = Message{Role: "assistant", Content: string(b)}
		case m.Role == "tool":
			type response struct {
				Tool       string `json:"tool,omitempty"`
				ToolCallID string `json:"tool_call_id,omitempty"`
				Content    string `json:"content"`
			}
			b, _ := json.Marshal(struct {
				ToolResponse response `json:"tool_response"`
			}{response{m.Name, m.ToolCallID, m.Content}})
			m = Message{Role: "user", Content: string(b)}
		}
		out = append(out, m)
	}
	return out
}

type genericCall struct {
	Name      string          `json:"name"`
	Arguments json.RawMessage `json:"arguments"`
	ID        string          `json:"id,omitempty"`
}

// genericInstruction is llama.cpp's generic-format instruction.
const genericInstruction = "Respond in JSON format, either with `tool_call` (a request to call tools) or with `response` reply to the user's request"

// argsJSON returns arguments when they are JSON, else them as a JSON string.
func argsJSON(args string) string {
	if json.Valid([]byte(args)) {
		return args
	}
	b, _ := json.Marshal(args)
	return string(b)
}

func compact(raw json.RawMessage) []byte {
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil {
		return raw
	}
	return buf.Bytes()
}
