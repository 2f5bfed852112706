package door

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
)

// The door's other APIs (OpenAI's Responses API, Ollama's) are
// translated to a chat completion (or a completion, or embeddings) on the
// worker and its answer back; this file holds what they share.

// chatAnswer is what the door reads of a worker's chat completion, or of
// one event of its stream, or of its error.
type chatAnswer struct {
	Choices []struct {
		Text    string `json:"text"` // a completion's
		Message struct {
			Content   string         `json:"content"`
			ToolCalls []toolCallWire `json:"tool_calls"`
		} `json:"message"`
		Delta struct {
			Content   string         `json:"content"`
			ToolCalls []toolCallWire `json:"tool_calls"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens        int `json:"prompt_tokens"`
		CompletionTokens    int `json:"completion_tokens"`
		PromptTokensDetails *struct {
			CachedTokens int `json:"cached_tokens"`
		} `json:"prompt_tokens_details"`
	} `json:"usage"`
	Timings *struct {
		PromptMS    float64 `json:"prompt_ms"`
		PredictedMS float64 `json:"predicted_ms"`
	} `json:"timings"`
	Error *workerError `json:"error"`
}

// workerError is a worker's error (OpenAI's shape).
type workerError struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    string  `json:"code"`
}

// text is the answer's text: the first choice's message, delta or text.
func (a *chatAnswer) text() string {
	if len(a.Choices) == 0 {
		return ""
	}
	c := a.Choices[0]
	return c.Message.Content + c.Delta.Content + c.Text
}

// toolCallWire is a tool call of a worker's chat answer: whole in a
// message, or a piece of one in a stream's delta (index says which call;
// its id and name come first, its arguments in pieces).
type toolCallWire struct {
	Index    int    `json:"index"`
	ID       string `json:"id"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

// toolCall is one call the model made, as gathered.
type toolCall struct {
	ID, Name, Arguments string
}

// calls is the first choice's tool calls of a whole message.
func (a *chatAnswer) calls() []toolCall {
	if len(a.Choices) == 0 {
		return nil
	}
	var out []toolCall
	for _, c := range a.Choices[0].Message.ToolCalls {
		out = append(out, toolCall{ID: c.ID, Name: c.Function.Name, Arguments: c.Function.Arguments})
	}
	return out
}

// callDeltas is the first choice's pieces of tool calls in a stream
// event.
func (a *chatAnswer) callDeltas() []toolCallWire {
	if len(a.Choices) == 0 {
		return nil
	}
	return a.Choices[0].Delta.ToolCalls
}

// finish is the first choice's finish reason, "" while it goes on.
func (a *chatAnswer) finish() string {
	if len(a.Choices) == 0 || a.Choices[0].FinishReason == nil {
		return ""
	}
	return *a.Choices[0].FinishReason
}

// count records the answer's usage in use.
func (a *chatAnswer) count(use *tokenUse) {
	if a.Usage != nil {
		use.PromptTokens, use.CompletionTokens = a.Usage.PromptTokens, a.Usage.CompletionTokens
	}
}

// workerFailure reads a worker's error answer (status ≥ 400): its OpenAI
// error with param renamed to the client's field by rename (a field of the
// worker's request → the client's name for it).
func workerFailure(resp *http.Response, rename map[string]string) workerError {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var body struct {
		Error *workerError `json:"error"`
	}
	if json.Unmarshal(raw, &body) != nil || body.Error == nil {
		return workerError{Message: fmt.Sprintf("the worker answered %d: %.200s", resp.StatusCode, raw), Type: "server_error", Code: "worker_failed"}
	}
	e := *body.Error
	renameParam(&e, rename)
	return e
}

// renameParam names the client's field for the worker's.
func renameParam(e *workerError, rename map[string]string) {
	if e.Param == nil {
		return
	}
	if to, ok := rename[*e.Param]; ok {
		e.Message = strings.ReplaceAll(e.Message, *e.Param, to)
		e.Param = &to
	}
}

// readSSE calls event with the JSON of each data event of a worker's
// stream until [DONE] (done true) or the stream's end.
func readSSE(body io.Reader, event func(data []byte) error) (done bool, err error) {
	br := bufio.NewReaderSize(body, 64<<10)
	for {
		line, rerr := br.ReadBytes('\n')
		line = bytes.TrimRight(line, "\r\n")
		if data, ok := bytes.CutPrefix(line, []byte("data: ")); ok {
			if bytes.Equal(data, []byte("[DONE]")) {
				return true, nil
			}
			if err := event(data); err != nil {
				return false, err
			}
		}
		if rerr != nil {
			return false, nil
		}
	}
}

// flush sends what was written so far.
func flush(w http.ResponseWriter) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

// fieldCheck sorts a request's fields into those honoured (taken by the
// translation), those harmless (accepted, nothing to do), and those
// accepted only with a value that asks for nothing (nothing: null and the
// values listed, as JSON); any other field or value is refused.
type fieldCheck struct {
	honoured, harmless []string
	nothing            map[string][]string
	// why says why a field or value is refused, by field.
	why map[string]string
}

// check returns the first field (sorted) that is refused, or nil.
func (c fieldCheck) check(raw map[string]json.RawMessage) *fieldError {
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if slices.Contains(c.honoured, k) || slices.Contains(c.harmless, k) {
			continue
		}
		v := compactJSON(raw[k])
		if ok, known := c.nothing[k]; known {
			if v == "null" || slices.Contains(ok, v) {
				continue
			}
			why := c.why[k]
			if why == "" {
				why = "only " + strings.Join(ok, " or ") + " is accepted"
			}
			return &fieldError{param: k, code: "unsupported_value", msg: fmt.Sprintf("%s %.100s is not supported: %s", k, v, why)}
		}
		why := c.why[k]
		if why == "" {
			why = "remove it (the door's documentation lists the fields it honours)"
		}
		return &fieldError{param: k, code: "unsupported_parameter", msg: fmt.Sprintf("request field %q is not supported: %s", k, why)}
	}
	return nil
}

// compactJSON is a JSON value without insignificant space.
func compactJSON(v json.RawMessage) string {
	var b bytes.Buffer
	if json.Compact(&b, v) != nil {
		return string(v)
	}
	return b.String()
}

// copyField sets to[name] to from[field] when the client sent it.
func copyField(to map[string]any, name string, from map[string]json.RawMessage, field string) {
	if v, ok := from[field]; ok && compactJSON(v) != "null" {
		to[name] = v
	}
}
