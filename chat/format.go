package chat

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/rbee-dev/rbee/grammar"
)

// Format is a family's tool-call syntax.
type Format int

// The families, detected from the template's text as llama.cpp's
// common/chat.cpp does.
const (
	// Generic: templates that know no tools. The model answers a JSON
	// object, {"tool_call":{"name","arguments"}} (or "tool_calls":[…] for
	// parallel calls) or {"response":"…"}, under a grammar.
	Generic Format = iota
	// Hermes: Hermes 2 Pro, Qwen 2.5 and 3: <tool_call>{"name","arguments"}</tool_call>.
	Hermes
	// Llama3: Llama 3.1 to 3.3: {"name","parameters"}, or after <|python_tag|>.
	Llama3
	// Mistral: Mistral Nemo and Small: [TOOL_CALLS][{"name","arguments","id"}, …].
	Mistral
)

func (f Format) String() string {
	return [...]string{"generic", "hermes", "llama3", "mistral"}[f]
}

// Detect returns the family of a chat template's source.
func Detect(src string) Format {
	switch {
	case strings.Contains(src, "[TOOL_CALLS]"):
		return Mistral
	case strings.Contains(src, "<tool_call>"):
		return Hermes
	case strings.Contains(src, "<|start_header_id|>") && strings.Contains(src, "ipython"):
		return Llama3
	}
	return Generic
}

const (
	hermesOpen, hermesClose = "<tool_call>", "</tool_call>"
	pythonTag               = "<|python_tag|>"
	mistralTag              = "[TOOL_CALLS]"
)

// Grammar returns the grammar the answer follows: with required, one call
// of one of tools (one or more when parallel) in the family's syntax;
// without, "" (the model chooses freely and calls are read from its text)
// except for Generic, whose answer is always JSON: a call or a response.
func (f Format) Grammar(tools []Tool, required, parallel bool) (string, error) {
	lit := grammar.Literal
	keys := grammar.CallKeys{Name: "name", Arguments: "arguments"}
	var root string
	if !required && f != Generic {
		return "", nil
	}
	switch f {
	case Generic:
		if parallel {
			root = `"{" space ` + lit(`"tool_calls"`) + ` space ":" space "[" space call ( "," space call )* "]" space "}" space`
		} else {
			root = `"{" space ` + lit(`"tool_call"`) + ` space ":" space call "}" space`
		}
		if !required {
			root = "( " + root + ` ) | "{" space ` + lit(`"response"`) + ` space ":" space string "}" space`
		}
	case Hermes:
		one := lit(hermesOpen) + ` "\n"? call "\n"? ` + lit(hermesClose)
		root = one
		if parallel {
			root = one + ` ( "\n" ` + one + " )*"
		}
	case Llama3:
		keys.Arguments = "parameters"
		root = "call"
	case Mistral:
		root = lit(mistralTag+"[") + " space call "
		if parallel {
			root += `( "," space call )* `
		}
		root += `"]"`
	}
	return grammar.ToolCalls(grammarTools(tools), keys, root)
}

// grammarTools are tools as package grammar takes them.
func grammarTools(tools []Tool) []grammar.Tool {
	gt := make([]grammar.Tool, len(tools))
	for i, t := range tools {
		gt[i] = grammar.Tool{Name: t.Name, Parameters: t.Parameters, Strict: t.Strict}
	}
	return gt
}

// Markers are the words of the family's call syntax that models write as
// one special token: the answer must show them for its calls to be read.
func (f Format) Markers() []string {
	switch f {
	case Hermes:
		return []string{hermesOpen, hermesClose}
	case Llama3:
		return []string{pythonTag}
	case Mistral:
		return []string{mistralTag}
	}
	return nil
}

// LazyGrammar returns, for tool_choice auto, the word that opens a call in
// the family's syntax and the grammar of what follows it: one call (or
// more when parallel) of one of tools, closed as the family closes it.
// The text before the word is free. Families without such a word
// (Llama 3's bare JSON, Generic's grammar that always applies) give "".
func (f Format) LazyGrammar(tools []Tool, parallel bool) (trigger, g string, err error) {
	lit := grammar.Literal
	keys := grammar.CallKeys{Name: "name", Arguments: "arguments"}
	var root string
	switch f {
	case Hermes:
		trigger = hermesOpen
		root = `"\n"? call "\n"? ` + lit(hermesClose)
		if parallel {
			root += ` ( "\n" ` + lit(hermesOpen) + ` "\n"? call "\n"? ` + lit(hermesClose) + " )*"
		}
	case Mistral:
		trigger = mistralTag
		root = lit("[") + " space call "
		if parallel {
			root += `( "," space call )* `
		}
		root += `"]"`
	default:
		return "", "", nil
	}
	g, err = grammar.ToolCalls(grammarTools(tools), keys, root)
	return trigger, g, err
}

// Parse reads the calls out of a whole answer: the content is the text
// outside them. An answer without a well-formed call is all content.
func (f Format) Parse(text string) (content string, calls []ToolCall) {
	var err error
	switch f {
	case Generic:
		content, calls, err = parseGeneric(text)
	case Hermes:
		content, calls, err = parseHermes(text)
	case Llama3:
		content, calls, err = parseLlama3(text)
	case Mistral:
		content, calls, err = parseMistral(text)
	}
	if err != nil || len(calls) == 0 && f != Generic {
		return text, nil
	}
	return content, calls
}

// rawCall is a call as models write it.
type rawCall struct {
	Name       *string         `json:"name"`
	Arguments  json.RawMessage `json:"arguments"`
	Parameters json.RawMessage `json:"parameters"`
	ID         string          `json:"id"`
}

func (r rawCall) call() (ToolCall, error) {
	if r.Name == nil || *r.Name == "" {
		return ToolCall{}, errors.New("call without a name")
	}
	args := r.Arguments
	if args == nil {
		args = r.Parameters
	}
	var s string
	switch {
	case args == nil:
		args = json.RawMessage("{}")
	case json.Unmarshal(args, &s) == nil:
		// Arguments written as a JSON string of the object.
		args = json.RawMessage(s)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(args, &obj); err != nil || obj == nil {
		return ToolCall{}, fmt.Errorf("arguments of %s are not a JSON object", *r.Name)
	}
	return ToolCall{ID: r.ID, Name: *r.Name, Arguments: string(compact(args))}, nil
}

// decodeCalls reads JSON call objects one after the other, separated by
// white space or ";", to the end of text.
func decodeCalls(text string) ([]ToolCall, error) {
	var calls []ToolCall
	for {
		text = strings.TrimLeft(text, " \t\r\n;")
		if text == "" {
			return calls, nil
		}
		dec := json.NewDecoder(strings.NewReader(text))
		var r rawCall
		if err := dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("decode call: %w", err)
		}
		c, err := r.call()
		if err != nil {
			return nil, err
		}
		calls = append(calls, c)
		text = text[dec.InputOffset():]
	}
}

func parseHermes(text string) (string, []ToolCall, error) {
	i := strings.Index(text, hermesOpen)
	if i < 0 {
		return text, nil, nil
	}
	content := strings.TrimSpace(text[:i])
	rest := text[i:]
	var calls []ToolCall
	for rest = strings.TrimSpace(rest); rest != ""; rest = strings.TrimSpace(rest) {
		if !strings.HasPrefix(rest, hermesOpen) {
			return "", nil, fmt.Errorf("text after the calls: %q", rest)
		}
		rest = rest[len(hermesOpen):]
		body := rest
		if j := strings.Index(rest, hermesClose); j >= 0 {
			body, rest = rest[:j], rest[j+len(hermesClose):]
		} else {
			rest = "" // a call the model did not close before it stopped
		}
		cs, err := decodeCalls(body)
		if err != nil {
			return "", nil, err
		}
		calls = append(calls, cs...)
	}
	return content, calls, nil
}

func parseLlama3(text string) (string, []ToolCall, error) {
	content, body := "", strings.TrimSpace(text)
	if i := strings.Index(text, pythonTag); i >= 0 {
		content, body = strings.TrimSpace(text[:i]), text[i+len(pythonTag):]
	} else if !strings.HasPrefix(body, "{") {
		return text, nil, nil
	}
	body = strings.TrimSuffix(strings.TrimSpace(body), "<|eom_id|>")
	calls, err := decodeCalls(body)
	return content, calls, err
}

func parseMistral(text string) (string, []ToolCall, error) {
	i := strings.Index(text, mistralTag)
	if i < 0 {
		return text, nil, nil
	}
	var raws []rawCall
	dec := json.NewDecoder(strings.NewReader(text[i+len(mistralTag):]))
	if err := dec.Decode(&raws); err != nil {
		return "", nil, fmt.Errorf("decode calls: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return "", nil, errors.New("text after the calls")
	}
	calls, err := readCalls(raws)
	if err != nil {
		return "", nil, err
	}
	return strings.TrimSpace(text[:i]), calls, nil
}

// readCalls turns calls as models write them into ToolCalls.
func readCalls(raws []rawCall) ([]ToolCall, error) {
	calls := make([]ToolCall, len(raws))
	for k, r := range raws {
		c, err := r.call()
		if err != nil {
			return nil, err
		}
		calls[k] = c
	}
	return calls, nil
}

func parseGeneric(text string) (string, []ToolCall, error) {
	var ans struct {
		ToolCall  *rawCall  `json:"tool_call"`
		ToolCalls []rawCall `json:"tool_calls"`
		Response  *string   `json:"response"`
	}
	dec := json.NewDecoder(strings.NewReader(text))
	if err := dec.Decode(&ans); err != nil {
		return "", nil, fmt.Errorf("decode answer: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return "", nil, errors.New("text after the answer")
	}
	raws := ans.ToolCalls
	if ans.ToolCall != nil {
		raws = append(raws, *ans.ToolCall)
	}
	if len(raws) == 0 {
		if ans.Response == nil {
			return "", nil, errors.New("neither tool_call nor response")
		}
		return *ans.Response, nil, nil
	}
	calls, err := readCalls(raws)
	return "", calls, err
}

// CallID returns a new id for a call the model made: "call_" and 24 hex
// digits, or for Mistral, whose template takes only those, 9 letters and
// digits.
func (f Format) CallID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	if f == Mistral {
		const alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
		out := make([]byte, 9)
		for i := range out {
			out[i] = alnum[int(b[i])%len(alnum)]
		}
		return string(out)
	}
	return "call_" + hex.EncodeToString(b[:])
}

// Stream reads an answer as it is generated: the text before a call goes
// out as content at once; from the start of a call on, the text is kept
// for Finish. Not safe for concurrent use.
type Stream struct {
	f    Format
	buf  bytes.Buffer
	sent int  // bytes of buf given out as content
	held bool // a call (or, for Generic, the JSON answer) has begun
	// The calls' JSON is followed from scanAt (after the marker) as it
	// comes; scanned bytes of it were read.
	scan    callScanner
	scanAt  int
	scanned int
}

// NewStream returns a Stream for an answer in format f.
func (f Format) NewStream() *Stream { return &Stream{f: f, held: f == Generic} }

// Deltas returns the pieces of calls that the text fed so far completes:
// each call's id (from newID) and name once its name is read, then its
// arguments (compact JSON) as they come. Arguments the model writes as a
// JSON string come whole with Finish.
func (s *Stream) Deltas(newID func() string) []CallDelta {
	if !s.held {
		return nil
	}
	b := s.buf.Bytes()[s.scanAt+s.scanned:]
	s.scanned += len(b)
	return s.scan.feed(string(b), newID)
}

// Feed takes the next piece of the answer and returns the content that
// may go out now.
func (s *Stream) Feed(text string) string {
	s.buf.WriteString(text)
	if s.held {
		return ""
	}
	all := s.buf.String()
	rest := all[s.sent:]
	if s.f == Llama3 && s.sent == 0 {
		t := strings.TrimLeft(rest, " \t\r\n")
		if t == "" {
			return ""
		}
		if strings.HasPrefix(t, "{") {
			s.held = true // scanned from the start
			return ""
		}
	}
	marker := map[Format]string{Hermes: hermesOpen, Llama3: pythonTag, Mistral: mistralTag}[s.f]
	if i := strings.Index(rest, marker); i >= 0 {
		s.held = true
		s.sent += i
		s.scanAt = s.sent + len(marker)
		return rest[:i]
	}
	// Keep back a tail that may be the start of the marker.
	keep := 0
	for k := min(len(marker)-1, len(rest)); k > 0; k-- {
		if strings.HasSuffix(rest, marker[:k]) {
			keep = k
			break
		}
	}
	s.sent += len(rest) - keep
	return rest[:len(rest)-keep]
}

// Finish returns the content not yet given out and the calls of the
// whole answer. When the kept text holds no well-formed call, it is
// content.
func (s *Stream) Finish() (string, []ToolCall) {
	all := s.buf.String()
	content, calls := s.f.Parse(all)
	if len(calls) == 0 {
		if s.f == Generic {
			return content, nil
		}
		return all[s.sent:], nil
	}
	if s.f == Generic {
		return content, calls
	}
	return "", calls // the content before the first call went out already
}
