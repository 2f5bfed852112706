package door

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/queen/fleet"
	"github.com/rbee-dev/rbee/queen/internal/reply"
)

// ollamaVersion is the Ollama release whose API the door's /api routes
// follow (docs/api.md); clients gate features on it.
const ollamaVersion = "0.9.0"

// ollamaOptions maps Ollama's options (Modelfile parameters) to the
// worker's request fields; any other option is refused.
var ollamaOptions = map[string]string{
	"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": "seed", "num_predict": "max_tokens",
	"stop": "stop", "min_p": "min_p", "repeat_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
	"frequency_penalty": "frequency_penalty", "typical_p": "typical_p", "repeat_last_n": "repeat_last_n",
}

// ollamaRename names Ollama's fields for the worker's, in its errors.
var ollamaRename = func() map[string]string {
	m := map[string]string{"response_format": "format"}
	for o, f := range ollamaOptions {
		m[f] = "options." + o
	}
	return m
}()

var (
	ollamaShared = []string{"model", "format", "options", "stream", "keep_alive"}
	// ollamaChatFields and ollamaGenerateFields are the fields of
	// /api/chat and /api/generate (the README's table says the same).
	ollamaChatFields = fieldCheck{
		honoured: append([]string{"messages", "tools"}, ollamaShared...),
		nothing:  map[string][]string{"think": {"false"}},
		why:      map[string]string{"think": "the door's models do not think aloud"},
	}
	ollamaGenerateFields = fieldCheck{
		honoured: append([]string{"prompt", "system", "raw"}, ollamaShared...),
		nothing: map[string][]string{"suffix": {`""`}, "images": {"[]"}, "template": {`""`}, "context": {"[]"},
			"think": {"false"}},
		why: map[string]string{"suffix": "no fill-in-the-middle", "images": "the door's models take text",
			"template": "the model's own chat template is used (or raw: true)", "context": "no context is returned; send the conversation to /api/chat",
			"think": "the door's models do not think aloud"},
	}
	ollamaEmbedFields = fieldCheck{
		honoured: []string{"model", "input", "dimensions", "keep_alive"},
		nothing:  map[string][]string{"truncate": {"false"}, "options": {"{}"}},
		why: map[string]string{"truncate": "an input longer than the context is an error; send truncate: false",
			"options": "embeddings take no options"},
	}
)

// ollamaErrors writes Ollama's error shape, {"error": "message"}.
type ollamaErrors struct{}

func (ollamaErrors) fail(w http.ResponseWriter, status int, _, _, _, msg string) {
	reply.JSON(w, status, map[string]string{"error": msg})
}

// refuse answers a door request the guards refuse, in the shape of the
// API its path belongs to.
func refuse(w http.ResponseWriter, r *http.Request, status int, typ, code, msg string) {
	if strings.HasPrefix(r.URL.Path, "/api/") {
		ollamaErrors{}.fail(w, status, typ, code, "", msg)
		return
	}
	writeOAI(w, status, typ, code, msg)
}

// ollamaHead is what /api/chat, /api/generate and /api/embed share.
type ollamaHead struct {
	Model   string                     `json:"model"`
	Stream  *bool                      `json:"stream"`
	Options map[string]json.RawMessage `json:"options"`
	Format  json.RawMessage            `json:"format"`
}

// ollamaComplete serves Ollama's POST /api/chat and /api/generate: the
// request becomes a chat completion on the worker (a completion for a raw
// generate), routed like any other, and the answer Ollama's NDJSON stream
// (the default) or one object.
func (dr *Door) ollamaComplete(chat bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, ok := readBody(w, r, ollamaErrors{})
		if !ok {
			return
		}
		var raw map[string]json.RawMessage
		var head ollamaHead
		if json.Unmarshal(body, &raw) != nil || json.Unmarshal(body, &head) != nil || head.Model == "" {
			ollamaErrors{}.fail(w, http.StatusBadRequest, "", "", "", "the body must be a JSON object naming a model")
			return
		}
		stream := head.Stream == nil || *head.Stream
		api := &ollamaAPI{model: head.Model, chat: chat, stream: stream, start: time.Now()}
		endpoint, out, refuse := ollamaToWorker(raw, head, chat, stream)
		dr.serve(w, r, exchange{model: head.Model, endpoint: endpoint, body: out, api: api, refuse: refuse})
	}
}

// ollamaToWorker translates /api/chat or /api/generate to the worker's
// endpoint and body, or says which field it cannot carry.
func ollamaToWorker(raw map[string]json.RawMessage, head ollamaHead, chat, stream bool) (endpoint string, body []byte, refuse *fieldError) {
	check := ollamaGenerateFields
	if chat {
		check = ollamaChatFields
	}
	if f := check.check(raw); f != nil {
		return "", nil, f
	}
	out := map[string]any{"model": head.Model}
	if f := ollamaSampling(out, head); f != nil {
		return "", nil, f
	}
	if stream {
		out["stream"] = true
		out["stream_options"] = map[string]bool{"include_usage": true}
	}
	endpoint = "chat/completions"
	switch {
	case chat:
		msgs, f := ollamaMessages(raw["messages"])
		if f != nil {
			return "", nil, f
		}
		out["messages"] = msgs
		if t := raw["tools"]; t != nil && compactJSON(t) != "null" {
			out["tools"] = t                  // OpenAI's shape already: the worker checks each
			out["parallel_tool_calls"] = true // Ollama reads every call the model makes
		}
	default:
		var g struct {
			Prompt string `json:"prompt"`
			System string `json:"system"`
			Raw    bool   `json:"raw"`
		}
		if err := json.Unmarshal(mustJSON(raw), &g); err != nil {
			return "", nil, &fieldError{param: "prompt", code: "invalid_value", msg: "prompt and system must be strings, raw a boolean"}
		}
		if g.Raw {
			if g.System != "" {
				return "", nil, &fieldError{param: "system", code: "unsupported_value", msg: "system is not used with raw: true (the prompt is sent as it is); put it in the prompt"}
			}
			endpoint, out["prompt"] = "completions", g.Prompt
			break
		}
		var msgs []map[string]any
		if g.System != "" {
			msgs = append(msgs, map[string]any{"role": "system", "content": g.System})
		}
		out["messages"] = append(msgs, map[string]any{"role": "user", "content": g.Prompt})
	}
	b, err := json.Marshal(out)
	if err != nil {
		return "", nil, &fieldError{param: "options", code: "invalid_value", msg: err.Error()}
	}
	return endpoint, b, nil
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// ollamaSampling sets the worker's sampling fields from options and
// format.
func ollamaSampling(out map[string]any, head ollamaHead) *fieldError {
	keys := make([]string, 0, len(head.Options))
	for k := range head.Options {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		field, ok := ollamaOptions[k]
		if !ok {
			known := make([]string, 0, len(ollamaOptions))
			for o := range ollamaOptions {
				known = append(known, o)
			}
			sort.Strings(known)
			return &fieldError{param: "options." + k, code: "unsupported_parameter",
				msg: fmt.Sprintf("option %q is not supported; the options honoured are %s", k, strings.Join(known, ", "))}
		}
		v := head.Options[k]
		if k == "num_predict" {
			var n int
			if json.Unmarshal(v, &n) == nil && n < 0 {
				continue // -1 (no limit), -2 (fill the context): the worker's default
			}
		}
		if compactJSON(v) != "null" {
			out[field] = v
		}
	}
	f := compactJSON(head.Format)
	switch {
	case head.Format == nil || f == "null" || f == `""`:
	case f == `"json"`:
		out["response_format"] = map[string]string{"type": "json_object"}
	case strings.HasPrefix(f, "{"):
		out["response_format"] = map[string]any{"type": "json_schema", "json_schema": map[string]any{"name": "format", "schema": head.Format, "strict": true}}
	default:
		return &fieldError{param: "format", code: "invalid_value", msg: fmt.Sprintf("format %.100s: want \"json\" or a JSON schema", f)}
	}
	return nil
}

// ollamaMessages turns /api/chat's messages into chat messages: an
// assistant's tool_calls (arguments as an object) get ids if they have
// none, and a tool message the id of the call it answers (the first
// unanswered call of its tool_name, else the first unanswered).
func ollamaMessages(raw json.RawMessage) ([]map[string]any, *fieldError) {
	var msgs []struct {
		Role      string          `json:"role"`
		Content   string          `json:"content"`
		Images    json.RawMessage `json:"images"`
		ToolCalls []struct {
			ID       string `json:"id"`
			Function struct {
				Name      string          `json:"name"`
				Arguments json.RawMessage `json:"arguments"`
			} `json:"function"`
		} `json:"tool_calls"`
		ToolName string `json:"tool_name"`
		Thinking string `json:"thinking"`
	}
	if raw == nil {
		return nil, &fieldError{param: "messages", code: "missing_required_parameter", msg: "messages is required"}
	}
	if err := json.Unmarshal(raw, &msgs); err != nil {
		return nil, &fieldError{param: "messages", code: "invalid_value", msg: "messages must be a list of {role, content} with string content (tool_calls: [{function: {name, arguments}}])"}
	}
	type pending struct{ id, name string }
	var open []pending // calls not answered yet
	out := make([]map[string]any, 0, len(msgs))
	for i, m := range msgs {
		at := fmt.Sprintf("messages[%d]", i)
		switch {
		case m.Images != nil && compactJSON(m.Images) != "null" && compactJSON(m.Images) != "[]":
			return nil, &fieldError{param: at + ".images", code: "unsupported_content", msg: at + ".images: the door's models take text"}
		case m.Thinking != "":
			return nil, &fieldError{param: at + ".thinking", code: "unsupported_parameter", msg: at + ".thinking: the door's models do not think aloud"}
		}
		msg := map[string]any{"role": m.Role, "content": m.Content}
		if len(m.ToolCalls) > 0 {
			calls := make([]any, 0, len(m.ToolCalls))
			for j, c := range m.ToolCalls {
				id := cmp.Or(c.ID, fmt.Sprintf("call_%d_%d", i, j))
				args := c.Function.Arguments
				if args == nil || compactJSON(args) == "null" {
					args = json.RawMessage(`{}`)
				}
				calls = append(calls, map[string]any{"id": id, "type": "function", "function": map[string]any{"name": c.Function.Name, "arguments": args}})
				open = append(open, pending{id, c.Function.Name})
			}
			msg["tool_calls"] = calls
		}
		if m.Role == "tool" {
			k := slices.IndexFunc(open, func(p pending) bool { return p.name == m.ToolName })
			if k < 0 && len(open) > 0 {
				k = 0
			}
			if k >= 0 {
				msg["tool_call_id"] = open[k].id
				m.ToolName = cmp.Or(m.ToolName, open[k].name)
				open = slices.Delete(open, k, k+1)
			} else {
				msg["tool_call_id"] = fmt.Sprintf("call_%d", i) // a result of no call in the history: rendered as it is
			}
			if m.ToolName != "" {
				msg["name"] = m.ToolName
			}
		} else if m.ToolName != "" {
			return nil, &fieldError{param: at + ".tool_name", code: "invalid_value", msg: at + ".tool_name: only tool messages name a tool"}
		}
		out = append(out, msg)
	}
	return out, nil
}

// ollamaCall is a tool call in Ollama's shape: the arguments an object.
type ollamaCall struct {
	ID       string `json:"id,omitempty"`
	Function struct {
		Index     int             `json:"index"`
		Name      string          `json:"name"`
		Arguments json.RawMessage `json:"arguments"`
	} `json:"function"`
}

// ollamaCalls turns the worker's calls into Ollama's.
func ollamaCalls(calls []toolCall) []ollamaCall {
	var out []ollamaCall
	for i, c := range calls {
		oc := ollamaCall{ID: c.ID}
		oc.Function.Index, oc.Function.Name = i, c.Name
		oc.Function.Arguments = json.RawMessage(c.Arguments)
		if !json.Valid(oc.Function.Arguments) {
			oc.Function.Arguments = mustJSON(c.Arguments) // as a string, rather than lost
		}
		out = append(out, oc)
	}
	return out
}

// ollamaAPI writes the worker's answer as Ollama's: NDJSON lines of
// message (chat) or response (generate) pieces and a last line with
// done, done_reason and the counts; or one object.
type ollamaAPI struct {
	ollamaErrors
	model   string
	chat    bool
	stream  bool
	start   time.Time
	started bool // the first line went out
}

// ollamaReply is one line (or the one object) of /api/chat and
// /api/generate.
type ollamaReply struct {
	Model              string         `json:"model"`
	CreatedAt          string         `json:"created_at"`
	Message            *ollamaMessage `json:"message,omitempty"`
	Response           *string        `json:"response,omitempty"`
	Done               bool           `json:"done"`
	DoneReason         string         `json:"done_reason,omitempty"`
	TotalDuration      int64          `json:"total_duration,omitempty"`
	LoadDuration       *int64         `json:"load_duration,omitempty"`
	PromptEvalCount    *int           `json:"prompt_eval_count,omitempty"`
	PromptEvalDuration *int64         `json:"prompt_eval_duration,omitempty"`
	EvalCount          *int           `json:"eval_count,omitempty"`
	EvalDuration       *int64         `json:"eval_duration,omitempty"`
}

// ollamaMessage is /api/chat's answer message.
type ollamaMessage struct {
	Role      string       `json:"role"`
	Content   string       `json:"content"`
	ToolCalls []ollamaCall `json:"tool_calls,omitempty"`
}

// piece is a line carrying text.
func (a *ollamaAPI) piece(text string) ollamaReply {
	r := ollamaReply{Model: a.model, CreatedAt: time.Now().UTC().Format(time.RFC3339Nano)}
	if a.chat {
		r.Message = &ollamaMessage{Role: "assistant", Content: text}
	} else {
		r.Response = &text
	}
	return r
}

// last is the line that ends the answer, with the worker's counts and
// timings (Ollama's durations are in nanoseconds; the load is the
// placement's, which the door does not split out: 0).
func (a *ollamaAPI) last(text, finish string, ans *chatAnswer) ollamaReply {
	r := a.piece(text)
	r.Done, r.DoneReason = true, finish
	if r.DoneReason == "" || r.DoneReason == "tool_calls" {
		r.DoneReason = "stop" // Ollama's, after a call too
	}
	r.TotalDuration = time.Since(a.start).Nanoseconds()
	zero := int64(0)
	r.LoadDuration = &zero
	if u := ans.Usage; u != nil {
		r.PromptEvalCount, r.EvalCount = &u.PromptTokens, &u.CompletionTokens
	}
	if t := ans.Timings; t != nil {
		p, e := int64(t.PromptMS*1e6), int64(t.PredictedMS*1e6)
		r.PromptEvalDuration, r.EvalDuration = &p, &e
	}
	return r
}

func (a *ollamaAPI) answer(w http.ResponseWriter, resp *http.Response, use *tokenUse) bool {
	if resp.StatusCode != http.StatusOK {
		e := workerFailure(resp, ollamaRename)
		a.fail(w, resp.StatusCode, "", "", "", e.Message)
		return true
	}
	if !a.stream {
		var ans chatAnswer
		if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&ans); err != nil {
			return false
		}
		ans.count(use)
		r := a.last(ans.text(), ans.finish(), &ans)
		if calls := ans.calls(); len(calls) > 0 && r.Message != nil {
			r.Message.ToolCalls = ollamaCalls(calls)
		}
		reply.JSON(w, http.StatusOK, r)
		return true
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	a.started = true
	enc := json.NewEncoder(w)
	var finish string
	var final *chatAnswer
	var calls []toolCall // gathered from the deltas: one line when whole
	failed := false
	done, _ := readSSE(resp.Body, func(data []byte) error {
		var ev chatAnswer
		if json.Unmarshal(data, &ev) != nil {
			return nil
		}
		if ev.Error != nil {
			failed = true
			renameParam(ev.Error, ollamaRename)
			a.broken(w, ev.Error.Code, ev.Error.Message)
			return nil
		}
		if f := ev.finish(); f != "" {
			finish = f
		}
		if ev.Usage != nil {
			ev.count(use)
			final = &ev
		}
		if d := ev.text(); d != "" {
			if err := enc.Encode(a.piece(d)); err != nil {
				return err
			}
			flush(w)
		}
		for _, d := range ev.callDeltas() {
			if d.Index < 0 || d.Index > 64 {
				continue
			}
			for len(calls) <= d.Index {
				calls = append(calls, toolCall{})
			}
			c := &calls[d.Index]
			c.ID, c.Name = cmp.Or(c.ID, d.ID), cmp.Or(c.Name, d.Function.Name)
			c.Arguments += d.Function.Arguments
		}
		return nil
	})
	if !done {
		return false
	}
	if !failed && len(calls) > 0 && a.chat {
		r := a.piece("")
		r.Message.ToolCalls = ollamaCalls(calls)
		_ = enc.Encode(r)
	}
	if !failed {
		if final == nil {
			final = &chatAnswer{}
		}
		_ = enc.Encode(a.last("", finish, final))
		flush(w)
	}
	return true
}

// broken ends a stream with Ollama's error line; an answer not yet
// started gets a 503.
func (a *ollamaAPI) broken(w http.ResponseWriter, _, msg string) {
	if !a.started {
		a.fail(w, http.StatusServiceUnavailable, "", "", "", msg)
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
	flush(w)
}

// ollamaEmbed serves Ollama's POST /api/embed: the input (a string or a
// list) goes to an embeddings replica, its vectors come back as
// Ollama's embeddings.
func (dr *Door) ollamaEmbed(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r, ollamaErrors{})
	if !ok {
		return
	}
	var raw map[string]json.RawMessage
	var head ollamaHead
	if json.Unmarshal(body, &raw) != nil || json.Unmarshal(body, &head) != nil || head.Model == "" {
		ollamaErrors{}.fail(w, http.StatusBadRequest, "", "", "", "the body must be a JSON object naming a model")
		return
	}
	out := map[string]any{"model": head.Model}
	copyField(out, "input", raw, "input")
	copyField(out, "dimensions", raw, "dimensions")
	refuse := ollamaEmbedFields.check(raw)
	b, _ := json.Marshal(out)
	dr.serve(w, r, exchange{model: head.Model, endpoint: "embeddings", body: b, embeddings: true, refuse: refuse,
		api: &ollamaEmbedAPI{model: head.Model, start: time.Now()}})
}

// ollamaEmbedAPI writes the worker's embeddings as /api/embed's answer.
type ollamaEmbedAPI struct {
	ollamaErrors
	model string
	start time.Time
}

func (a *ollamaEmbedAPI) answer(w http.ResponseWriter, resp *http.Response, use *tokenUse) bool {
	if resp.StatusCode != http.StatusOK {
		e := workerFailure(resp, nil)
		a.fail(w, resp.StatusCode, "", "", "", e.Message)
		return true
	}
	var emb struct {
		Data []struct {
			Index     int             `json:"index"`
			Embedding json.RawMessage `json:"embedding"`
		} `json:"data"`
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
		} `json:"usage"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 256<<20)).Decode(&emb); err != nil {
		return false
	}
	use.PromptTokens = emb.Usage.PromptTokens
	sort.Slice(emb.Data, func(i, j int) bool { return emb.Data[i].Index < emb.Data[j].Index })
	vecs := make([]json.RawMessage, len(emb.Data))
	for i, d := range emb.Data {
		vecs[i] = d.Embedding
	}
	reply.JSON(w, http.StatusOK, map[string]any{"model": a.model, "embeddings": vecs, "total_duration": time.Since(a.start).Nanoseconds(),
		"load_duration": 0, "prompt_eval_count": emb.Usage.PromptTokens})
	return true
}

func (a *ollamaEmbedAPI) broken(w http.ResponseWriter, _, msg string) {
	a.fail(w, http.StatusServiceUnavailable, "", "", "", msg)
}

// ollamaModel is a model as /api/tags, /api/ps and /api/show list it.
type ollamaModel struct {
	Name          string        `json:"name"`
	Model         string        `json:"model"`
	ModifiedAt    *time.Time    `json:"modified_at,omitempty"`
	Size          int64         `json:"size"`
	Digest        string        `json:"digest"`
	Details       ollamaDetails `json:"details"`
	ExpiresAt     *time.Time    `json:"expires_at,omitempty"`
	SizeVRAM      *int64        `json:"size_vram,omitempty"`
	ContextLength int           `json:"context_length,omitempty"`
}

type ollamaDetails struct {
	ParentModel       string   `json:"parent_model"`
	Format            string   `json:"format"`
	Family            string   `json:"family"`
	Families          []string `json:"families"`
	ParameterSize     string   `json:"parameter_size"`
	QuantizationLevel string   `json:"quantization_level"`
}

func detailsOf(m hiveapi.Model) ollamaDetails {
	d := ollamaDetails{Format: "gguf", Family: m.Arch, Families: []string{}, ParameterSize: humanParams(m.Params), QuantizationLevel: m.Quant}
	if m.Arch != "" {
		d.Families = []string{m.Arch}
	}
	return d
}

// humanParams writes a parameter count as Ollama does: 8.0B, 135.3M.
func humanParams(n uint64) string {
	switch {
	case n == 0:
		return ""
	case n >= 1e9:
		return fmt.Sprintf("%.1fB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1fK", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}

// ollamaModels lists the models by the names GET /v1/models gives them,
// each with what the hives' catalogs say of it.
// The catalogs' entries come in the same order.
func (dr *Door) ollamaModels(r *http.Request) ([]ollamaModel, []hiveapi.Model, error) {
	ctx := r.Context()
	names, err := dr.modelList(ctx)
	if err != nil {
		return nil, nil, err
	}
	snaps, _, err := dr.router.lookSnaps(ctx)
	if err != nil {
		return nil, nil, err
	}
	deps, err := dr.router.deployments(ctx)
	if err != nil {
		return nil, nil, err
	}
	out := []ollamaModel{}
	var hms []hiveapi.Model
	for _, n := range names {
		name := n.ID
		for _, d := range deps {
			if d.Name == n.ID {
				name = d.Model
			}
		}
		m, ok := findModel(snaps, name)
		if !ok {
			continue // a deployment of a model no hive holds now
		}
		at := m.Added
		out = append(out, ollamaModel{Name: n.ID, Model: n.ID, ModifiedAt: &at, Size: m.Size, Digest: m.SHA256, Details: detailsOf(m)})
		hms = append(hms, m)
	}
	return out, hms, nil
}

// ollamaTags serves GET /api/tags: every model the fleet can serve.
func (dr *Door) ollamaTags(w http.ResponseWriter, r *http.Request) {
	ms, _, err := dr.ollamaModels(r)
	if err != nil {
		writeErrorAs(w, ollamaErrors{}, err)
		return
	}
	reply.JSON(w, http.StatusOK, map[string]any{"models": ms})
}

// ollamaShow serves POST /api/show: a model's details and what the hives'
// catalogs know of its GGUF (architecture, parameters, context).
func (dr *Door) ollamaShow(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r, ollamaErrors{})
	if !ok {
		return
	}
	var req struct {
		Model   string `json:"model"`
		Name    string `json:"name"` // the older field
		Verbose bool   `json:"verbose"`
	}
	if json.Unmarshal(body, &req) != nil || req.Model+req.Name == "" {
		ollamaErrors{}.fail(w, http.StatusBadRequest, "", "", "", "the body must be a JSON object naming a model")
		return
	}
	if req.Model == "" {
		req.Model = req.Name
	}
	ms, hms, err := dr.ollamaModels(r)
	if err != nil {
		writeErrorAs(w, ollamaErrors{}, err)
		return
	}
	i := slices.IndexFunc(ms, func(m ollamaModel) bool { return m.Name == req.Model })
	if i < 0 {
		ollamaErrors{}.fail(w, http.StatusNotFound, "", "", "", fmt.Sprintf("model '%s' not found", req.Model))
		return
	}
	m := hms[i]
	info := map[string]any{"general.architecture": m.Arch, "general.parameter_count": m.Params}
	if m.Arch != "" && m.CtxTrain > 0 {
		info[m.Arch+".context_length"] = m.CtxTrain
	}
	caps := []string{"completion", "tools", "embedding"} // tools: through the model's own template, or the generic format
	if strings.Contains(m.Arch, "bert") {
		caps = []string{"embedding"}
	}
	reply.JSON(w, http.StatusOK, map[string]any{"modelfile": "", "parameters": "", "template": "", "details": ms[i].Details,
		"model_info": info, "capabilities": caps, "modified_at": ms[i].ModifiedAt})
}

// ollamaPS serves GET /api/ps: the models loaded on the fleet's workers,
// one entry a model, with the memory its workers hold and when the last
// of them unloads (a deployment's never do: the far future).
func (dr *Door) ollamaPS(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	snaps, _, err := dr.router.lookSnaps(ctx)
	if err != nil {
		writeErrorAs(w, ollamaErrors{}, err)
		return
	}
	byModel := map[string]*ollamaModel{}
	never := time.Date(2318, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, s := range snaps {
		for _, wi := range s.Workers {
			m, ok := findModel(map[string]fleet.Snapshot{"": s}, wi.ModelID)
			if !ok {
				continue
			}
			name := wi.Deployment
			if name == "" {
				if ns := modelNames(m); len(ns) > 0 {
					name = ns[0]
				}
			}
			if name == "" || !allows(ctx, name) {
				continue
			}
			expires := wi.LastUsed.Add(dr.cfg.KeepAlive)
			if wi.Deployment != "" {
				expires = never
			}
			vram := int64(0)
			if wi.Device != "cpu" {
				vram = int64(wi.MemoryBytes)
			}
			if e, ok := byModel[name]; ok {
				e.Size += int64(wi.MemoryBytes)
				*e.SizeVRAM += vram
				if expires.After(*e.ExpiresAt) {
					e.ExpiresAt = &expires
				}
				continue
			}
			byModel[name] = &ollamaModel{Name: name, Model: name, Size: int64(wi.MemoryBytes), Digest: m.SHA256, Details: detailsOf(m),
				ExpiresAt: &expires, SizeVRAM: &vram, ContextLength: m.CtxSize}
		}
	}
	out := []ollamaModel{}
	for _, m := range byModel {
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	reply.JSON(w, http.StatusOK, map[string]any{"models": out})
}

// ollamaVersionRoute serves GET /api/version.
// ollamaRoot answers GET and HEAD / as Ollama does: clients check that
// the server runs.
func ollamaRoot(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if r.Method == http.MethodHead {
		return
	}
	_, _ = io.WriteString(w, "Ollama is running")
}

// ollamaPull serves POST /api/pull: the door downloads nothing (the
// fleet's owner pulls models), so a model the fleet holds is "pulled"
// already; any other is refused, saying how to get it.
func (dr *Door) ollamaPull(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r, ollamaErrors{})
	if !ok {
		return
	}
	var req struct {
		Model  string `json:"model"`
		Name   string `json:"name"`
		Stream *bool  `json:"stream"`
	}
	if json.Unmarshal(body, &req) != nil || req.Model+req.Name == "" {
		ollamaErrors{}.fail(w, http.StatusBadRequest, "", "", "", "the body must be a JSON object naming a model")
		return
	}
	name := cmp.Or(req.Model, req.Name)
	if !allows(r.Context(), name) {
		ollamaErrors{}.fail(w, http.StatusForbidden, "", "", "", fmt.Sprintf("this API key may not use model %q", name))
		return
	}
	if _, fetch, err := dr.resolve(r.Context(), name, false); err != nil || fetch {
		ollamaErrors{}.fail(w, http.StatusNotFound, "", "", "", fmt.Sprintf("model %q is not on the fleet, and rbee's front door downloads nothing: "+
			"the fleet's owner runs rbee model pull REF --alias %s", name, name))
		return
	}
	if req.Stream != nil && !*req.Stream {
		reply.JSON(w, http.StatusOK, map[string]string{"status": "success"})
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	_ = json.NewEncoder(w).Encode(map[string]string{"status": "success"})
}

// ollamaManage refuses Ollama's model management routes: the fleet's
// owner manages models with rbee.
func ollamaManage(w http.ResponseWriter, r *http.Request) {
	ollamaErrors{}.fail(w, http.StatusNotImplemented, "", "", "", fmt.Sprintf("%s %s is not served by rbee's front door: models are managed by the fleet's owner "+
		"(rbee model pull, rbee model rm, rbee model alias)", r.Method, r.URL.Path))
}

func ollamaVersionRoute(w http.ResponseWriter, _ *http.Request) {
	reply.JSON(w, http.StatusOK, map[string]string{"version": ollamaVersion})
}
