package worker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"

	"github.com/rbee-dev/rbee/chat"
	"github.com/rbee-dev/rbee/grammar"
	"github.com/rbee-dev/rbee/llm"
)

// toolUse is what a chat request's tools ask of the answer: the calls in
// it are read in format (nil: the answer is plain text).
type toolUse struct {
	format chat.Format
}

// toolRequest is a request's tools, checked.
type toolRequest struct {
	tools    []chat.Tool
	choice   string // none, auto, required, or function (named)
	named    string
	parallel bool
}

var toolName = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

// parseTools checks tools, tool_choice and parallel_tool_calls.
func parseTools(req *chatRequest) (toolRequest, *apiError) {
	tr := toolRequest{choice: "auto"}
	if req.ParallelToolCalls != nil {
		tr.parallel = *req.ParallelToolCalls
	}
	if raw := bytes.TrimSpace(req.Tools); len(raw) > 0 && string(raw) != "null" {
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return tr, invalid("tools", "invalid_value", "tools must be an array of {\"type\":\"function\",\"function\":{…}}")
		}
		for i, item := range items {
			t, e := parseTool(item, fmt.Sprintf("tools[%d]", i))
			if e != nil {
				return tr, e
			}
			if slices.ContainsFunc(tr.tools, func(o chat.Tool) bool { return o.Name == t.Name }) {
				return tr, invalid(fmt.Sprintf("tools[%d].function.name", i), "invalid_value", "tools[%d]: a second function named %q", i, t.Name)
			}
			tr.tools = append(tr.tools, t)
		}
	}
	if raw := bytes.TrimSpace(req.ToolChoice); len(raw) > 0 && string(raw) != "null" {
		var s string
		if err := json.Unmarshal(raw, &s); err == nil {
			if s != "none" && s != "auto" && s != "required" {
				return tr, invalid("tool_choice", "invalid_value", "tool_choice %q is not one of none, auto, required, or {\"type\":\"function\",\"function\":{\"name\":…}}", s)
			}
			tr.choice = s
		} else {
			var obj struct {
				Type     string `json:"type"`
				Function struct {
					Name string `json:"name"`
				} `json:"function"`
			}
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&obj); err != nil || obj.Type != "function" || obj.Function.Name == "" {
				return tr, invalid("tool_choice", "invalid_value", "tool_choice must be none, auto, required, or {\"type\":\"function\",\"function\":{\"name\":…}}")
			}
			if !slices.ContainsFunc(tr.tools, func(t chat.Tool) bool { return t.Name == obj.Function.Name }) {
				return tr, invalid("tool_choice", "invalid_value", "tool_choice names the function %q, which is not in tools", obj.Function.Name)
			}
			tr.choice, tr.named = "function", obj.Function.Name
		}
	}
	if tr.choice == "required" && len(tr.tools) == 0 {
		return tr, invalid("tool_choice", "invalid_value", "tool_choice required needs tools")
	}
	return tr, nil
}

func parseTool(raw json.RawMessage, param string) (chat.Tool, *apiError) {
	var t struct {
		Type     string                     `json:"type"`
		Function map[string]json.RawMessage `json:"function"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil || t.Type != "function" || t.Function == nil {
		return chat.Tool{}, invalid(param, "invalid_value", "%s must be {\"type\":\"function\",\"function\":{\"name\":…,\"parameters\":{…}}} (function tools only)", param)
	}
	var name string
	if err := json.Unmarshal(t.Function["name"], &name); err != nil || !toolName.MatchString(name) {
		return chat.Tool{}, invalid(param+".function.name", "invalid_value", "%s.function.name must be 1 to 64 letters, digits, _ or -", param)
	}
	for k := range t.Function {
		if k != "name" && k != "description" && k != "parameters" && k != "strict" {
			return chat.Tool{}, invalid(param+".function."+k, "unsupported_parameter", "%s.function.%s is not supported (name, description, parameters and strict are)", param, k)
		}
	}
	var strict bool
	if s := t.Function["strict"]; s != nil && string(s) != "null" {
		if err := json.Unmarshal(s, &strict); err != nil {
			return chat.Tool{}, invalid(param+".function.strict", "invalid_value", "%s.function.strict must be true or false", param)
		}
	}
	return chat.Tool{Name: name, Parameters: t.Function["parameters"], Strict: strict, Raw: raw}, nil
}

// chatMessages checks the messages and turns them into the template's.
func chatMessages(in []chatMessage) ([]chat.Message, *apiError) {
	if len(in) == 0 {
		return nil, invalid("messages", "missing_messages", "messages is required and must not be empty")
	}
	msgs := make([]chat.Message, len(in))
	for i, msg := range in {
		p := fmt.Sprintf("messages[%d]", i)
		if !chatRoles[msg.Role] {
			return nil, invalid(p+".role", "invalid_value", "%s.role %q is not one of system, developer, user, assistant, tool", p, msg.Role)
		}
		if msg.Content.badPart != "" {
			return nil, invalid(p+".content", "unsupported_content", "%s.content has a part of type %q; this worker takes text parts only", p, msg.Content.badPart)
		}
		if j := strings.IndexByte(msg.Content.text, 0); j >= 0 {
			return nil, invalid(p+".content", "invalid_value",
				"%s.content contains a NUL byte (at byte %d), which the model's tokenizer cannot take", p, j)
		}
		role := msg.Role
		if role == "developer" {
			role = "system"
		}
		m := chat.Message{Role: role, Content: msg.Content.text}
		if len(msg.ToolCalls) > 0 && role != "assistant" {
			return nil, invalid(p+".tool_calls", "invalid_value", "%s: only assistant messages carry tool_calls", p)
		}
		for j, c := range msg.ToolCalls {
			cp := fmt.Sprintf("%s.tool_calls[%d]", p, j)
			if c.Type != "" && c.Type != "function" || c.Function.Name == "" {
				return nil, invalid(cp, "invalid_value", "%s must be {\"id\":…,\"type\":\"function\",\"function\":{\"name\":…,\"arguments\":…}}", cp)
			}
			args := string(bytes.TrimSpace(c.Function.Arguments))
			var s string
			if json.Unmarshal(c.Function.Arguments, &s) == nil {
				args = s
			}
			if args == "" || args == "null" {
				args = "{}"
			}
			m.ToolCalls = append(m.ToolCalls, chat.ToolCall{ID: c.ID, Name: c.Function.Name, Arguments: args})
		}
		if role == "tool" {
			if msg.ToolCallID == "" {
				return nil, invalid(p+".tool_call_id", "invalid_value", "%s: a tool message needs the tool_call_id of the call it answers", p)
			}
			m.ToolCallID, m.Name = msg.ToolCallID, msg.Name
			if m.Name == "" {
				m.Name = callName(in[:i], msg.ToolCallID)
			}
		}
		msgs[i] = m
	}
	return msgs, nil
}

// callName finds the function of call id in the messages before.
func callName(before []chatMessage, id string) string {
	for i := len(before) - 1; i >= 0; i-- {
		for _, c := range before[i].ToolCalls {
			if c.ID == id {
				return c.Function.Name
			}
		}
	}
	return ""
}

// chatPrompt renders the request's conversation: with the model's own
// template through Jinja when it renders, else with llama.cpp's built-in
// templating (plain conversations only). It sets the tools' grammar on
// req, and returns how to read calls out of the answer (nil: none).
func (s *Server) chatPrompt(m *llm.Model, req *chatRequest) (string, *toolUse, *apiError) {
	msgs, e := chatMessages(req.Messages)
	if e != nil {
		return "", nil, e
	}
	tr, e := parseTools(req)
	if e != nil {
		return "", nil, e
	}
	offer := len(tr.tools) > 0 && tr.choice != "none"
	needJinja := offer || slices.ContainsFunc(msgs, func(m chat.Message) bool { return m.Role == "tool" || len(m.ToolCalls) > 0 })
	tmpl, tmplErr := s.template()
	if tmpl == nil {
		if needJinja {
			param := "tools"
			if !offer {
				param = "messages"
			}
			return "", nil, invalid(param, "unsupported_template", "tool calling needs the model's chat template rendered with Jinja, and %v", tmplErr)
		}
		return s.builtinPrompt(m, msgs)
	}
	var offered []chat.Tool
	if offer {
		offered = tr.tools
	}
	prompt, err := tmpl.Render(msgs, offered, true)
	if err != nil {
		if needJinja {
			return "", nil, invalid("messages", "chat_template", "the model's chat template refused the conversation: %v", err)
		}
		s.log.Warn("chat template: Jinja failed, using llama.cpp's built-in templating", "err", err)
		return s.builtinPrompt(m, msgs)
	}
	if ct := m.ChatTemplate(); ct.AddBOS && ct.BOS != "" {
		prompt = strings.TrimPrefix(prompt, ct.BOS) // the tokenizer adds it
	}
	if !offer {
		return prompt, nil, nil
	}
	f := tmpl.Format()
	req.preserve = f.Markers()
	grammarTools := tr.tools
	if tr.choice == "function" {
		i := slices.IndexFunc(tr.tools, func(t chat.Tool) bool { return t.Name == tr.named })
		grammarTools = tr.tools[i : i+1]
	}
	g, err := f.Grammar(grammarTools, tr.choice != "auto", tr.parallel)
	if err != nil {
		var se *grammar.SchemaError
		if errors.As(err, &se) {
			return "", nil, invalid("tools", "unsupported_schema", "tools: the parameters of %v", err)
		}
		return "", nil, invalid("tools", "invalid_value", "tools: %v", err)
	}
	if g != "" {
		if req.gbnf != "" {
			return "", nil, invalid(req.gbnfField, "invalid_value", "%s cannot go with tools and tool_choice %s: both set the answer's grammar", req.gbnfField, tr.choice)
		}
		if req.IgnoreEOS {
			return "", nil, invalid("ignore_eos", "invalid_value", "ignore_eos cannot go with tools: once the call is complete, the grammar allows only the end of stream")
		}
		req.gbnf, req.gbnfField = g, "tools"
	} else if tr.choice == "auto" && req.gbnf == "" && !req.IgnoreEOS {
		// The model chooses; once it opens a call, the call follows the
		// tools' schemas (llama-server's lazy grammar). Calls the model
		// writes freely were all read before: several are allowed unless
		// the request says otherwise. Tools whose schemas the grammar
		// cannot take leave the calls unconstrained, read as written.
		parallel := req.ParallelToolCalls == nil || *req.ParallelToolCalls
		trigger, lazy, err := f.LazyGrammar(grammarTools, parallel)
		if err == nil && lazy != "" {
			err = m.CheckGrammar(lazy)
		}
		switch {
		case err != nil:
			s.log.Info("tools: calls are read as the model writes them, without a grammar", "reason", err)
		case lazy != "":
			req.gbnf, req.gbnfField, req.gbnfTrigger = lazy, "tools", trigger
		}
	}
	return prompt, &toolUse{format: f}, nil
}

func (s *Server) builtinPrompt(m *llm.Model, msgs []chat.Message) (string, *toolUse, *apiError) {
	lm := make([]llm.Message, len(msgs))
	for i, msg := range msgs {
		lm[i] = llm.Message{Role: msg.Role, Content: msg.Content}
	}
	prompt, err := m.ApplyChat(lm)
	if err != nil {
		return "", nil, &apiError{Status: http.StatusInternalServerError, Type: "server_error", Code: "chat_template", Message: err.Error()}
	}
	return prompt, nil, nil
}

// applyTemplate answers POST /apply-template (llama-server's route): the
// prompt a chat request renders to, {"prompt": …}.
func (s *Server) applyTemplate(w http.ResponseWriter, r *http.Request) {
	m := s.ready(w)
	if m == nil {
		return
	}
	var req chatRequest
	fields, e := decodeBody(w, r, &req)
	if e == nil {
		e = onlyFields(fields, "messages", "tools", "tool_choice", "parallel_tool_calls", "model")
	}
	var prompt string
	if e == nil {
		prompt, _, e = s.chatPrompt(m, &req)
	}
	if e != nil {
		writeError(w, e)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"prompt": prompt})
}
