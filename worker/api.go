package worker

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/rbee-dev/rbee/grammar"
	"github.com/rbee-dev/rbee/llm"
)

// apiError is the OpenAI error shape: {"error":{"message","type","param","code"}}.
type apiError struct {
	Status  int     `json:"-"`
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    string  `json:"code"`
}

func (e *apiError) Error() string { return e.Message }

func invalid(param, code, format string, args ...any) *apiError {
	p := param
	var pp *string
	if p != "" {
		pp = &p
	}
	return &apiError{Status: 400, Type: "invalid_request_error", Param: pp, Code: code, Message: fmt.Sprintf(format, args...)}
}

// stringList accepts a JSON string or array of strings (OpenAI's "stop" and
// "prompt" take both).
type stringList []string

func (s *stringList) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*s = nil
		return nil
	}
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = stringList{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("want a string or an array of strings")
	}
	*s = many
	return nil
}

// sampling holds the request fields both endpoints share.
type sampling struct {
	Model            string             `json:"model"`
	MaxTokens        *int               `json:"max_tokens"`
	Temperature      *float64           `json:"temperature"`
	TopP             *float64           `json:"top_p"`
	TopK             *int               `json:"top_k"`
	MinP             *float64           `json:"min_p"`
	TypicalP         *float64           `json:"typical_p"`
	RepeatPenalty    *float64           `json:"repeat_penalty"`
	RepeatLastN      *int               `json:"repeat_last_n"`
	PresencePenalty  *float64           `json:"presence_penalty"`
	FrequencyPenalty *float64           `json:"frequency_penalty"`
	LogitBias        map[string]float64 `json:"logit_bias"`
	Seed             *int64             `json:"seed"`
	Stop             stringList         `json:"stop"`
	Stream           bool               `json:"stream"`
	StreamOptions    *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	N         *int `json:"n"`
	IgnoreEOS bool `json:"ignore_eos"` // llama-server's extension, for benchmarks
	// CachePrompt false decodes the whole prompt even when a slot holds a
	// prefix of it (llama-server's extension; default true).
	CachePrompt *bool `json:"cache_prompt"`
	// Structured output: OpenAI's response_format, or llama-server's
	// grammar (GBNF) and json_schema; at most one of them.
	ResponseFormat json.RawMessage `json:"response_format"`
	Grammar        *string         `json:"grammar"`
	JSONSchema     json.RawMessage `json:"json_schema"`

	// Set by validate: the grammar the answer must follow, and the field
	// it came from.
	gbnf      string
	gbnfField string
	// gbnfTrigger makes gbnf lazy: it applies once the text ends with
	// this word (a tool call's opening tag, with tool_choice auto).
	gbnfTrigger string
	// preserve are the call syntax's words the answer shows even as
	// special tokens (tools offered).
	preserve []string
}

type completionRequest struct {
	sampling
	Prompt   *stringList `json:"prompt"`
	Logprobs *int        `json:"logprobs"` // top alternatives per token, 0..maxTopLogprobs
	Echo     bool        `json:"echo"`
	BestOf   *int        `json:"best_of"`
	Suffix   *string     `json:"suffix"`
}

type chatContent struct {
	text    string
	badPart string // the type of a content part this worker cannot take
}

// UnmarshalJSON accepts a string or an array of {"type":"text","text":...}
// parts; another part type (an image) is noted for the handler to refuse
// as unsupported content.
func (c *chatContent) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	if err := json.Unmarshal(b, &c.text); err == nil {
		return nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(b, &parts); err != nil {
		return fmt.Errorf("want a string or an array of content parts")
	}
	var sb strings.Builder
	for _, p := range parts {
		if p.Type != "text" {
			if c.badPart == "" {
				c.badPart = p.Type
			}
			continue
		}
		sb.WriteString(p.Text)
	}
	c.text = sb.String()
	return nil
}

type chatMessage struct {
	Role    string      `json:"role"`
	Content chatContent `json:"content"`
	// An assistant's calls, and the call a tool message answers.
	ToolCalls  []toolCallIn `json:"tool_calls"`
	ToolCallID string       `json:"tool_call_id"`
	Name       string       `json:"name"`
}

// toolCallIn is a call in an assistant message of the conversation.
type toolCallIn struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string          `json:"name"`
		Arguments json.RawMessage `json:"arguments"` // a JSON string of the object (OpenAI), or the object
	} `json:"function"`
}

type chatRequest struct {
	sampling
	Messages            []chatMessage   `json:"messages"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Logprobs            bool            `json:"logprobs"`
	TopLogprobs         *int            `json:"top_logprobs"`
	Tools               json.RawMessage `json:"tools"`
	ToolChoice          json.RawMessage `json:"tool_choice"`
	ParallelToolCalls   *bool           `json:"parallel_tool_calls"`
}

var chatRoles = map[string]bool{"system": true, "developer": true, "user": true, "assistant": true, "tool": true}

const (
	maxStops       = 4
	maxTopLogprobs = 20 // OpenAI's limit for top_logprobs
	maxChoices     = 16 // n times the prompts of one request
)

// Request fields, field by field (README "What the worker honours" has
// the table for users). A field in neither list is refused with a 400 that
// names it: accepting a field and ignoring it would lie to the caller.
var (
	// honoured changes what the worker does.
	honoured = map[string]bool{
		"model": true, "max_tokens": true, "temperature": true, "top_p": true, "top_k": true, "min_p": true,
		"typical_p": true, "repeat_penalty": true, "repeat_last_n": true, "presence_penalty": true,
		"frequency_penalty": true, "logit_bias": true, "seed": true, "stop": true, "stream": true,
		"stream_options": true, "n": true, "ignore_eos": true, "cache_prompt": true, "logprobs": true,
		"response_format": true, "grammar": true, "json_schema": true,
	}
	honouredChat = map[string]bool{"messages": true, "max_completion_tokens": true, "top_logprobs": true,
		"tools": true, "tool_choice": true, "parallel_tool_calls": true}
	honouredCompletion = map[string]bool{"prompt": true}
	// harmless are accepted and have nothing to change here: bookkeeping
	// for the caller's side (user, metadata, store, service_tier,
	// prompt_cache_key, safety_identifier).
	harmless = map[string]bool{
		"user": true, "metadata": true, "store": true, "service_tier": true, "prompt_cache_key": true,
		"safety_identifier": true,
	}
)

// checkFields refuses a field the worker does not honour, and values of
// half-honoured fields it cannot serve (tools, echo...).
func checkFields(raw map[string]json.RawMessage, chat bool) *apiError {
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := strings.TrimSpace(string(raw[k]))
		null := v == "null"
		switch {
		case honoured[k] || harmless[k] || (chat && honouredChat[k]) || (!chat && honouredCompletion[k]):
			continue
		case k == "functions" && chat:
			if null || v == "[]" {
				continue
			}
			return invalid(k, "unsupported_parameter", "functions (OpenAI's deprecated form) is not supported; send tools")
		case k == "function_call" && chat:
			if null || v == `"none"` || v == `"auto"` {
				continue
			}
			return invalid(k, "unsupported_parameter", "function_call (OpenAI's deprecated form) is not supported; send tool_choice")
		case k == "modalities" && chat:
			if null || v == `["text"]` {
				continue
			}
			return invalid(k, "unsupported_value", "modalities %s is not supported; this worker answers with text only", v)
		case k == "echo" && !chat:
			if null || v == "false" {
				continue
			}
			return invalid(k, "unsupported_value", "echo is not supported; the prompt is not repeated in the answer")
		case k == "best_of" && !chat:
			if null || v == "1" {
				continue
			}
			return invalid(k, "unsupported_value", "best_of %s is not supported; ask for n choices instead", v)
		case k == "suffix" && !chat:
			if null || v == `""` {
				continue
			}
			return invalid(k, "unsupported_value", "suffix is not supported (no fill-in-the-middle)")
		}
		return invalid(k, "unsupported_parameter", "request field %q is not supported by this worker; remove it (see the worker's documentation for the fields it honours)", k)
	}
	return nil
}

// onlyFields refuses any field not named.
func onlyFields(raw map[string]json.RawMessage, names ...string) *apiError {
	keys := make([]string, 0, len(raw))
	for k := range raw {
		if !slices.Contains(names, k) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	slices.Sort(keys)
	return invalid(keys[0], "unsupported_parameter", "request field %q is not supported here; the fields are %s", keys[0], strings.Join(names, ", "))
}

// validate checks the shared fields and fills defaults.
func (s *sampling) validate() *apiError {
	if s.N != nil && (*s.N < 1 || *s.N > maxChoices) {
		return invalid("n", "invalid_value", "n must be between 1 and %d, got %d", maxChoices, *s.N)
	}
	if s.MaxTokens != nil && *s.MaxTokens < 1 {
		return invalid("max_tokens", "invalid_value", "max_tokens must be at least 1, got %d", *s.MaxTokens)
	}
	if s.Temperature != nil && (*s.Temperature < 0 || *s.Temperature > 2) {
		return invalid("temperature", "invalid_value", "temperature must be between 0 and 2, got %g", *s.Temperature)
	}
	if s.TopP != nil && (*s.TopP <= 0 || *s.TopP > 1) {
		return invalid("top_p", "invalid_value", "top_p must be in (0, 1], got %g", *s.TopP)
	}
	if s.TopK != nil && *s.TopK < 0 {
		return invalid("top_k", "invalid_value", "top_k must be 0 (off) or more, got %d", *s.TopK)
	}
	if s.MinP != nil && (*s.MinP < 0 || *s.MinP > 1) {
		return invalid("min_p", "invalid_value", "min_p must be between 0 (off) and 1, got %g", *s.MinP)
	}
	if s.TypicalP != nil && (*s.TypicalP <= 0 || *s.TypicalP > 1) {
		return invalid("typical_p", "invalid_value", "typical_p must be in (0, 1] (1 is off), got %g", *s.TypicalP)
	}
	if s.RepeatPenalty != nil && *s.RepeatPenalty <= 0 {
		return invalid("repeat_penalty", "invalid_value", "repeat_penalty must be more than 0 (1 is off), got %g", *s.RepeatPenalty)
	}
	if s.RepeatLastN != nil && *s.RepeatLastN < -1 {
		return invalid("repeat_last_n", "invalid_value", "repeat_last_n must be -1 (the whole context), 0 (off) or more, got %d", *s.RepeatLastN)
	}
	if s.PresencePenalty != nil && (*s.PresencePenalty < -2 || *s.PresencePenalty > 2) {
		return invalid("presence_penalty", "invalid_value", "presence_penalty must be between -2 and 2, got %g", *s.PresencePenalty)
	}
	if s.FrequencyPenalty != nil && (*s.FrequencyPenalty < -2 || *s.FrequencyPenalty > 2) {
		return invalid("frequency_penalty", "invalid_value", "frequency_penalty must be between -2 and 2, got %g", *s.FrequencyPenalty)
	}
	for k, b := range s.LogitBias {
		if b < -100 || b > 100 {
			return invalid("logit_bias", "invalid_value", "logit_bias[%q] must be between -100 and 100, got %g", k, b)
		}
	}
	if s.Seed != nil && (*s.Seed < 0 || *s.Seed > 1<<32-1) {
		return invalid("seed", "invalid_value", "seed must be between 0 and 4294967295, got %d", *s.Seed)
	}
	if len(s.Stop) > maxStops {
		return invalid("stop", "invalid_value", "at most %d stop strings, got %d", maxStops, len(s.Stop))
	}
	for _, st := range s.Stop {
		if st == "" {
			return invalid("stop", "invalid_value", "stop strings must not be empty")
		}
	}
	return s.structured()
}

// structured turns response_format, grammar or json_schema into the
// grammar the answer must follow (s.gbnf).
func (s *sampling) structured() *apiError {
	isSet := func(raw json.RawMessage) bool { return raw != nil && strings.TrimSpace(string(raw)) != "null" }
	var set []string
	if isSet(s.ResponseFormat) {
		if e := s.responseFormat(); e != nil {
			return e
		}
		if s.gbnf != "" {
			set = append(set, "response_format")
		}
	}
	if s.Grammar != nil && *s.Grammar != "" {
		s.gbnf, s.gbnfField = *s.Grammar, "grammar"
		set = append(set, "grammar")
	}
	if isSet(s.JSONSchema) {
		if e := s.schema("json_schema", s.JSONSchema, false); e != nil {
			return e
		}
		set = append(set, "json_schema")
	}
	if len(set) > 1 {
		return invalid(set[1], "invalid_value", "%s and %s each set the answer's grammar; send one of them", set[0], set[1])
	}
	if s.gbnf != "" && s.IgnoreEOS {
		return invalid("ignore_eos", "invalid_value", "ignore_eos cannot go with %s: once the answer is complete, the grammar allows only the end of stream", s.gbnfField)
	}
	return nil
}

// responseFormat reads OpenAI's response_format: text, json_object (with
// llama-server's "schema" extension) or json_schema.
func (s *sampling) responseFormat() *apiError {
	const f = "response_format"
	var rf map[string]json.RawMessage
	if err := json.Unmarshal(s.ResponseFormat, &rf); err != nil {
		return invalid(f, "invalid_value", "response_format must be an object such as {\"type\":\"json_object\"}")
	}
	var typ string
	_ = json.Unmarshal(rf["type"], &typ)
	allowed := map[string][]string{"text": {"type"}, "json_object": {"type", "schema"}, "json_schema": {"type", "json_schema"}}
	keys, ok := allowed[typ]
	if rf["type"] == nil {
		return invalid(f+".type", "invalid_value", "response_format.type is required: text, json_object or json_schema")
	}
	if !ok {
		return invalid(f+".type", "invalid_value", "response_format.type %s is not one of text, json_object, json_schema", rf["type"])
	}
	for k := range rf {
		if !slices.Contains(keys, k) {
			return invalid(f+"."+k, "unsupported_parameter", "response_format.%s is not supported with type %s", k, typ)
		}
	}
	switch typ {
	case "json_object":
		if rf["schema"] != nil {
			return s.schema(f+".schema", rf["schema"], false)
		}
		s.gbnf, s.gbnfField = grammar.JSONObject(), f
	case "json_schema":
		var js map[string]json.RawMessage
		if err := json.Unmarshal(rf["json_schema"], &js); err != nil || js == nil {
			return invalid(f+".json_schema", "invalid_value", "response_format.json_schema must be an object with the schema: {\"name\":…,\"schema\":{…},\"strict\":true}")
		}
		for k := range js {
			if k != "name" && k != "description" && k != "schema" && k != "strict" {
				return invalid(f+".json_schema."+k, "unsupported_parameter", "response_format.json_schema.%s is not supported (name, description, schema and strict are)", k)
			}
		}
		if js["schema"] == nil {
			return invalid(f+".json_schema.schema", "invalid_value", "response_format.json_schema.schema is required: the JSON Schema of the answer")
		}
		var strict bool
		if js["strict"] != nil {
			if err := json.Unmarshal(js["strict"], &strict); err != nil {
				return invalid(f+".json_schema.strict", "invalid_value", "response_format.json_schema.strict must be true or false")
			}
		}
		return s.schema(f+".json_schema.schema", js["schema"], strict)
	}
	return nil
}

// schema turns a JSON Schema from field into s.gbnf.
func (s *sampling) schema(field string, raw json.RawMessage, strict bool) *apiError {
	g, err := grammar.FromSchema(raw, strict)
	if err != nil {
		var se *grammar.SchemaError
		if errors.As(err, &se) {
			return invalid(field, "unsupported_schema", "%s: %v", field, err)
		}
		return invalid(field, "invalid_value", "%s: %v", field, err)
	}
	s.gbnf, s.gbnfField = g, field
	return nil
}

// logitBias turns OpenAI's {"token id": bias} into tokens of a vocabulary
// of nVocab.
func (s *sampling) logitBias(nVocab int) (map[llm.Token]float32, *apiError) {
	if len(s.LogitBias) == 0 {
		return nil, nil
	}
	out := make(map[llm.Token]float32, len(s.LogitBias))
	for k, b := range s.LogitBias {
		id, err := strconv.Atoi(k)
		if err != nil || id < 0 || id >= nVocab {
			return nil, invalid("logit_bias", "invalid_value", "logit_bias key %q is not a token id of this model (0 to %d)", k, nVocab-1)
		}
		out[llm.Token(id)] = float32(b)
	}
	return out, nil
}

// params turns the request into the engine's sampling parameters; seed
// offsets the seed for the choices after the first.
func (s *sampling) params() llm.SampleParams {
	p := llm.SampleParams{Temperature: 1, Stop: s.Stop, IgnoreEOS: s.IgnoreEOS, RepeatLastN: 64}
	if s.MaxTokens != nil {
		p.MaxTokens = *s.MaxTokens
	}
	if s.Temperature != nil {
		p.Temperature = float32(*s.Temperature)
	}
	if s.TopP != nil {
		p.TopP = float32(*s.TopP)
	}
	if s.TopK != nil {
		p.TopK = *s.TopK
	}
	if s.MinP != nil {
		p.MinP = float32(*s.MinP)
	}
	if s.TypicalP != nil {
		p.TypicalP = float32(*s.TypicalP)
	}
	if s.RepeatPenalty != nil {
		p.RepeatPenalty = float32(*s.RepeatPenalty)
	}
	if s.RepeatLastN != nil {
		p.RepeatLastN = *s.RepeatLastN
	}
	if s.PresencePenalty != nil {
		p.PresencePenalty = float32(*s.PresencePenalty)
	}
	if s.FrequencyPenalty != nil {
		p.FrequencyPenalty = float32(*s.FrequencyPenalty)
	}
	if s.Seed != nil {
		seed := uint32(*s.Seed)
		p.Seed = &seed
	}
	if s.CachePrompt != nil && !*s.CachePrompt {
		p.NoCache = true
	}
	p.Grammar, p.GrammarTrigger, p.Preserve = s.gbnf, s.gbnfTrigger, s.preserve
	return p
}

func (s *sampling) n() int {
	if s.N == nil {
		return 1
	}
	return *s.N
}

func (s *sampling) includeUsage() bool { return s.StreamOptions != nil && s.StreamOptions.IncludeUsage }

// Response shapes (OpenAI's).

type usage struct {
	PromptTokens        int            `json:"prompt_tokens"`
	CompletionTokens    int            `json:"completion_tokens"`
	TotalTokens         int            `json:"total_tokens"`
	PromptTokensDetails *promptDetails `json:"prompt_tokens_details,omitempty"`
}

type promptDetails struct {
	CachedTokens int `json:"cached_tokens"` // taken from the slot's cache, not decoded
}

// timings follows llama-server's field names: prompt_n counts the prompt
// tokens decoded, cache_n those taken from the slot's cache.
type timings struct {
	CacheN             int     `json:"cache_n"`
	PromptN            int     `json:"prompt_n"`
	PromptMS           float64 `json:"prompt_ms"`
	PromptPerSecond    float64 `json:"prompt_per_second"`
	PredictedN         int     `json:"predicted_n"`
	PredictedMS        float64 `json:"predicted_ms"`
	PredictedPerSecond float64 `json:"predicted_per_second"`
}

type completionChoice struct {
	Index        int     `json:"index"`
	Text         string  `json:"text"`
	Logprobs     any     `json:"logprobs"`
	FinishReason *string `json:"finish_reason"`
}

type chatDelta struct {
	Role      string          `json:"role,omitempty"`
	Content   string          `json:"content,omitempty"`
	ToolCalls []toolCallDelta `json:"tool_calls,omitempty"`
}

// chatMessageOut is a response's message: content is always there, a
// string, empty when the model said nothing, null when it only called
// tools.
type chatMessageOut struct {
	Role      string        `json:"role"`
	Content   *string       `json:"content"`
	ToolCalls []toolCallOut `json:"tool_calls,omitempty"`
}

type toolCallOut struct {
	ID       string       `json:"id"`
	Type     string       `json:"type"`
	Function functionCall `json:"function"`
}

type functionCall struct {
	Name      string `json:"name"`
	Arguments string `json:"arguments"` // a JSON object, as text
}

// toolCallDelta is a piece of a streamed call (OpenAI's shape): the first
// names the call, the next carry its arguments.
type toolCallDelta struct {
	Index    int    `json:"index"`
	ID       string `json:"id,omitempty"`
	Type     string `json:"type,omitempty"`
	Function struct {
		Name      string  `json:"name,omitempty"`
		Arguments *string `json:"arguments,omitempty"`
	} `json:"function"`
}

type chatChoice struct {
	Index        int             `json:"index"`
	Message      *chatMessageOut `json:"message,omitempty"`
	Delta        *chatDelta      `json:"delta,omitempty"`
	Logprobs     any             `json:"logprobs"`
	FinishReason *string         `json:"finish_reason"`
}

type response struct {
	ID      string   `json:"id"`
	Object  string   `json:"object"`
	Created int64    `json:"created"`
	Model   string   `json:"model"`
	Choices any      `json:"choices"`
	Usage   *usage   `json:"usage,omitempty"`
	Timings *timings `json:"timings,omitempty"`
}

// chatLogprobs is a chat choice's logprobs.
type chatLogprobs struct {
	Content []chatTokenLogprob `json:"content"`
}

type chatTokenLogprob struct {
	chatTopLogprob
	TopLogprobs []chatTopLogprob `json:"top_logprobs"`
}

type chatTopLogprob struct {
	Token   string  `json:"token"`
	Logprob float32 `json:"logprob"`
	Bytes   []int   `json:"bytes"`
}

// completionLogprobs is a completion choice's logprobs (OpenAI's legacy
// shape); text_offset counts bytes of the generated text. Two of a
// token's alternatives with the same text share one key of top_logprobs.
type completionLogprobs struct {
	Tokens        []string             `json:"tokens"`
	TokenLogprobs []float32            `json:"token_logprobs"`
	TopLogprobs   []map[string]float32 `json:"top_logprobs"`
	TextOffset    []int                `json:"text_offset"`
}

func byteInts(b []byte) []int {
	out := make([]int, len(b))
	for i, c := range b {
		out[i] = int(c)
	}
	return out
}

func chatTop(p llm.TokenProb) chatTopLogprob {
	return chatTopLogprob{Token: string(p.Bytes), Logprob: p.Logprob, Bytes: byteInts(p.Bytes)}
}

// appendChatLogprobs adds tokens to a chat choice's logprobs; top is the
// number of alternatives asked for.
func appendChatLogprobs(lp *chatLogprobs, probs []llm.TokenLogprob, top int) {
	for _, p := range probs {
		t := chatTokenLogprob{chatTopLogprob: chatTop(p.TokenProb), TopLogprobs: []chatTopLogprob{}}
		for _, alt := range p.Top[:min(top, len(p.Top))] {
			t.TopLogprobs = append(t.TopLogprobs, chatTop(alt))
		}
		lp.Content = append(lp.Content, t)
	}
}

// appendCompletionLogprobs adds tokens to a completion choice's logprobs;
// offset is the byte offset of the first token in the generated text, and
// the offset after the last is returned.
func appendCompletionLogprobs(lp *completionLogprobs, probs []llm.TokenLogprob, top, offset int) int {
	if lp.Tokens == nil {
		*lp = completionLogprobs{Tokens: []string{}, TokenLogprobs: []float32{}, TopLogprobs: []map[string]float32{}, TextOffset: []int{}}
	}
	for _, p := range probs {
		lp.Tokens = append(lp.Tokens, string(p.Bytes))
		lp.TokenLogprobs = append(lp.TokenLogprobs, p.Logprob)
		alts := map[string]float32{}
		for _, alt := range p.Top[:min(top, len(p.Top))] {
			if _, ok := alts[string(alt.Bytes)]; !ok {
				alts[string(alt.Bytes)] = alt.Logprob
			}
		}
		lp.TopLogprobs = append(lp.TopLogprobs, alts)
		lp.TextOffset = append(lp.TextOffset, offset)
		offset += len(p.Bytes)
	}
	return offset
}
