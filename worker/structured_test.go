package worker_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/rbee-dev/rbee/internal/testmodel"
)

// structuredSchemas are schemas whose every part is bounded (strings by
// maxLength or format, arrays by maxItems, numbers by the grammar's digit
// limits), so that a random-weight model under the grammar completes the
// answer within max_tokens whatever it prefers.
var structuredSchemas = []struct {
	name   string
	schema string
}{
	{"nested object with required fields", `{"type":"object","properties":{
		"name":{"type":"string","maxLength":12},
		"address":{"type":"object","properties":{
			"city":{"type":"string","minLength":1,"maxLength":10},
			"id":{"type":"string","format":"uuid"},
			"score":{"type":"number"}},"required":["city","id"]},
		"active":{"type":"boolean"}},"required":["name","address","active"],"additionalProperties":false}`},
	{"array with minItems and maxItems", `{"type":"object","properties":{
		"items":{"type":"array","items":{"type":"integer","minimum":0,"maximum":99},"minItems":2,"maxItems":4},
		"none":{"type":"array","items":{"type":"boolean"},"maxItems":0}},"required":["items","none"]}`},
	{"enum", `{"type":"object","properties":{
		"color":{"enum":["red","green","blue"]},"size":{"type":"string","enum":["S","M"]},"v":{"const":42}},"required":["color","size","v"]}`},
	{"integer range", `{"type":"object","properties":{
		"n":{"type":"integer","minimum":-40,"maximum":1234},
		"m":{"type":"integer","exclusiveMinimum":5,"exclusiveMaximum":9},
		"big":{"type":"integer","minimum":100000}},"required":["n","m","big"]}`},
	{"anyOf", `{"type":"object","properties":{
		"v":{"anyOf":[{"type":"integer","minimum":1,"maximum":9},{"type":"string","maxLength":4},{"type":"null"}]},
		"w":{"type":["boolean","null"]}},"required":["v","w"]}`},
	{"$ref and dates", `{"$defs":{"when":{"type":"string","format":"date-time"}},"type":"object","properties":{
		"start":{"$ref":"#/$defs/when"},"day":{"type":"string","format":"date"},"at":{"type":"string","format":"time"}},
		"required":["start","day","at"]}`},
	{"patterns, formats and number ranges", `{"type":"object","properties":{
		"code":{"type":"string","pattern":"^[A-Z]{3}-[0-9]{2}$"},"tag":{"type":"string","pattern":"^(?i)ab[^0-9\\s]{0,3}$"},
		"email":{"type":"string","format":"email"},"site":{"type":"string","format":"uri"},"ip":{"type":"string","format":"ipv4"},
		"host":{"type":"string","format":"hostname"},"p":{"type":"number","minimum":0,"maximum":1},
		"t":{"type":"number","exclusiveMinimum":-10,"exclusiveMaximum":10}},
		"required":["code","tag","email","site","ip","host","p","t"],"additionalProperties":false}`},
}

// validator compiles a schema with format assertions on.
func validator(t *testing.T, schema string) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(strings.NewReader(schema))
	if err != nil {
		t.Fatalf("schema: %v", err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("schema.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("schema.json")
	if err != nil {
		t.Fatalf("compile schema: %v", err)
	}
	return s
}

// validate checks that text is one JSON document that fits s.
func validate(t *testing.T, s *jsonschema.Schema, text string) {
	t.Helper()
	inst, err := jsonschema.UnmarshalJSON(strings.NewReader(text))
	if err != nil {
		t.Fatalf("answer is not JSON: %v: %q", err, text)
	}
	if err := s.Validate(inst); err != nil {
		t.Errorf("answer does not fit the schema: %v: %q", err, text)
	}
}

// answer posts a request and returns the first choice's text and finish
// reason, streamed or not.
func answer(t *testing.T, url, path string, body map[string]any, stream bool) (string, string) {
	t.Helper()
	chat := strings.Contains(path, "chat")
	if stream {
		body["stream"] = true
		s := openStream(t, url, path, body)
		defer s.close()
		text, chunks, done := s.readAll(t, chat)
		if !done {
			t.Fatalf("stream ended without [DONE]")
		}
		finish := ""
		for _, c := range chunks {
			if c.Error != nil {
				t.Fatalf("stream error: %+v", c.Error)
			}
			for _, ch := range c.Choices {
				if ch.FinishReason != nil {
					finish = *ch.FinishReason
				}
			}
		}
		return text, finish
	}
	resp, data := post(t, url, path, body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, data)
	}
	var c chunk
	if err := json.Unmarshal(data, &c); err != nil || len(c.Choices) != 1 {
		t.Fatalf("bad answer %s: %v", data, err)
	}
	ch := c.Choices[0]
	text := ch.Text
	if chat {
		text = ch.Message.Content
	}
	finish := ""
	if ch.FinishReason != nil {
		finish = *ch.FinishReason
	}
	return text, finish
}

// TestStructuredOutput: under a JSON Schema, greedy decoding of a
// random-weight model answers a document that fits it, and ends there
// (finish_reason "stop"): through response_format json_schema on chat,
// llama-server's json_schema on completions, streamed and not.
func TestStructuredOutput(t *testing.T) {
	t.Parallel()
	w := startWorker(t, "--model", random3m, "--slots", "2", "--ctx-size", "2048")
	for _, tt := range structuredSchemas {
		v := validator(t, tt.schema)
		for _, stream := range []bool{false, true} {
			for _, path := range []string{"/v1/chat/completions", "/v1/completions"} {
				t.Run(fmt.Sprintf("%s %s stream=%t", tt.name, path, stream), func(t *testing.T) {
					t.Parallel()
					body := map[string]any{"temperature": 0, "max_tokens": 1500}
					if strings.Contains(path, "chat") {
						body["messages"] = []map[string]any{{"role": "user", "content": "Answer in JSON."}}
						body["response_format"] = map[string]any{"type": "json_schema",
							"json_schema": map[string]any{"name": "answer", "strict": true, "schema": json.RawMessage(tt.schema)}}
					} else {
						body["prompt"] = "JSON:"
						body["json_schema"] = json.RawMessage(tt.schema)
					}
					text, finish := answer(t, w.URL, path, body, stream)
					if finish != "stop" {
						t.Fatalf("finish_reason %q, want stop (the grammar is complete): %q", finish, text)
					}
					t.Logf("answer: %s", text)
					validate(t, v, text)
				})
			}
		}
	}
}

// TestJSONMode: response_format json_object allows a JSON object only.
// The bias pushes '"' and '}' as far as it can: without the grammar the
// answer would be quotes alone; with it, the shortest object they make.
func TestJSONMode(t *testing.T) {
	t.Parallel()
	w := startWorker(t, "--model", random3m, "--slots", "2", "--ctx-size", "1024")
	quote, brace := fmt.Sprint(testmodel.ByteToken('"')), fmt.Sprint(testmodel.ByteToken('}'))
	for _, path := range []string{"/v1/chat/completions", "/v1/completions"} {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s stream=%t", path, stream), func(t *testing.T) {
				t.Parallel()
				body := map[string]any{"temperature": 0, "max_tokens": 200, "response_format": map[string]any{"type": "json_object"},
					"logit_bias": map[string]any{quote: 100, brace: 50}}
				if strings.Contains(path, "chat") {
					body["messages"] = []map[string]any{{"role": "user", "content": "hi"}}
				} else {
					body["prompt"] = "JSON:"
				}
				text, finish := answer(t, w.URL, path, body, stream)
				if finish != "stop" {
					t.Fatalf("finish_reason %q, want stop: %q", finish, text)
				}
				var obj map[string]any
				if err := json.Unmarshal([]byte(text), &obj); err != nil {
					t.Fatalf("answer is not a JSON object: %v: %q", err, text)
				}
				if len(obj) != 1 || obj[""] != "" {
					t.Errorf("got %q, want {\"\":\"\"} and white space", text)
				}
			})
		}
	}
	t.Run("unbiased", func(t *testing.T) {
		t.Parallel()
		body := map[string]any{"prompt": "JSON:", "temperature": 0, "max_tokens": 40, "response_format": map[string]any{"type": "json_object"}}
		text, finish := answer(t, w.URL, "/v1/completions", body, false)
		if !strings.HasPrefix(text, "{") {
			t.Errorf("got %q, want an object", text)
		}
		if finish == "stop" {
			var obj map[string]any
			if err := json.Unmarshal([]byte(text), &obj); err != nil {
				t.Errorf("complete answer is not a JSON object: %v: %q", err, text)
			}
		}
	})
}

// TestGrammarField: llama-server's grammar field (GBNF) constrains the
// answer; max_tokens cuts before the grammar completes with
// finish_reason length.
func TestGrammarField(t *testing.T) {
	t.Parallel()
	w := startWorker(t, "--model", random3m, "--slots", "2", "--ctx-size", "1024")
	for _, path := range []string{"/v1/chat/completions", "/v1/completions"} {
		body := func(extra map[string]any) map[string]any {
			b := map[string]any{"temperature": 0, "max_tokens": 50}
			if strings.Contains(path, "chat") {
				b["messages"] = []map[string]any{{"role": "user", "content": "yes or no?"}}
			} else {
				b["prompt"] = "yes or no?"
			}
			for k, v := range extra {
				b[k] = v
			}
			return b
		}
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			for _, stream := range []bool{false, true} {
				text, finish := answer(t, w.URL, path, body(map[string]any{"grammar": `root ::= ("yes" | "no") "!"`}), stream)
				if (text != "yes!" && text != "no!") || finish != "stop" {
					t.Errorf("stream=%t: got %q finish %q, want yes! or no! and stop", stream, text, finish)
				}
				// At temperature 1 too, with a seed: the draw only sees
				// what the grammar allows.
				text, finish = answer(t, w.URL, path, body(map[string]any{"grammar": `root ::= [a-c]{3} "."`, "temperature": 1, "seed": 7}), stream)
				if len(text) != 4 || strings.Trim(text[:3], "abc") != "" || text[3] != '.' || finish != "stop" {
					t.Errorf("stream=%t: got %q finish %q, want three of a, b, c then . and stop", stream, text, finish)
				}
				// A grammar no token of the vocabulary can follow (the
				// NUL byte's token has no text) ends the request with a
				// 400; llama.cpp would abort the process on its pick.
				b := body(map[string]any{"grammar": `root ::= [\x00] "a"`, "stream": stream})
				resp, data := post(t, w.URL, path, b)
				if code, param := apiErr(t, data); resp.StatusCode != 400 || code != "invalid_grammar" || param != "grammar" || !strings.Contains(string(data), "allows no token") {
					t.Errorf("stream=%t: dead-end grammar: got %d %s, want 400 invalid_grammar", stream, resp.StatusCode, data)
				}
				schema := `{"type":"object","properties":{"a":{"type":"string","maxLength":50}},"required":["a"]}`
				text, finish = answer(t, w.URL, path, body(map[string]any{"json_schema": json.RawMessage(schema), "max_tokens": 4}), stream)
				if finish != "length" || !strings.HasPrefix(text, `{`) {
					t.Errorf("stream=%t: max_tokens 4: got %q finish %q, want the start of an object and length", stream, text, finish)
				}
			}
		})
	}
}

// TestStructuredRefused: what cannot be honoured is a 400 naming the field,
// and for a schema the keyword.
func TestStructuredRefused(t *testing.T) {
	t.Parallel()
	w := startWorker(t)
	js := func(schema string) map[string]any {
		return map[string]any{"type": "json_schema", "json_schema": map[string]any{"name": "x", "schema": json.RawMessage(schema)}}
	}
	tests := []struct {
		name    string
		path    string
		extra   map[string]any
		code    string
		param   string
		keyword string // in the message
	}{
		{"pattern", "/v1/chat/completions", map[string]any{"response_format": js(`{"type":"object","properties":{"a":{"type":"string","pattern":"\\bword"}}}`)},
			"unsupported_schema", "response_format.json_schema.schema", "pattern"},
		{"format ipv6", "/v1/chat/completions", map[string]any{"response_format": js(`{"type":"string","format":"ipv6"}`)},
			"unsupported_schema", "response_format.json_schema.schema", "ipv6"},
		{"multipleOf", "/v1/completions", map[string]any{"json_schema": json.RawMessage(`{"type":"integer","multipleOf":3}`)},
			"unsupported_schema", "json_schema", "multipleOf"},
		{"allOf", "/v1/completions", map[string]any{"response_format": map[string]any{"type": "json_object", "schema": json.RawMessage(`{"allOf":[{"type":"string"},{"minLength":2}]}`)}},
			"unsupported_schema", "response_format.schema", "allOf"},
		{"number minimum", "/v1/completions", map[string]any{"json_schema": json.RawMessage(`{"type":"number","minimum":0.5}`)},
			"unsupported_schema", "json_schema", "minimum"},
		{"strict extra properties", "/v1/chat/completions", map[string]any{"response_format": map[string]any{"type": "json_schema",
			"json_schema": map[string]any{"name": "x", "strict": true, "schema": json.RawMessage(`{"type":"object","additionalProperties":true}`)}}},
			"unsupported_schema", "response_format.json_schema.schema", "additionalProperties"},
		{"external $ref", "/v1/completions", map[string]any{"json_schema": json.RawMessage(`{"$ref":"https://example.com/s.json"}`)},
			"unsupported_schema", "json_schema", "$ref"},
		{"no schema", "/v1/chat/completions", map[string]any{"response_format": map[string]any{"type": "json_schema", "json_schema": map[string]any{"name": "x"}}},
			"invalid_value", "response_format.json_schema.schema", "schema"},
		{"unknown type", "/v1/chat/completions", map[string]any{"response_format": map[string]any{"type": "yaml"}},
			"invalid_value", "response_format.type", "yaml"},
		{"bad grammar", "/v1/completions", map[string]any{"grammar": `root ::= "a" | undefined-rule`},
			"invalid_grammar", "grammar", "grammar"},
		{"left recursion", "/v1/chat/completions", map[string]any{"grammar": `root ::= root "a" | "b"`},
			"invalid_grammar", "grammar", "grammar"},
		{"two grammars", "/v1/completions", map[string]any{"grammar": `root ::= "a"`, "json_schema": json.RawMessage(`{"type":"object"}`)},
			"invalid_value", "json_schema", "grammar"},
		{"ignore_eos", "/v1/completions", map[string]any{"response_format": map[string]any{"type": "json_object"}, "ignore_eos": true},
			"invalid_value", "ignore_eos", "ignore_eos"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			body := map[string]any{"max_tokens": 2}
			if strings.Contains(tt.path, "chat") {
				body["messages"] = []map[string]any{{"role": "user", "content": "hi"}}
			} else {
				body["prompt"] = "abc"
			}
			for k, v := range tt.extra {
				body[k] = v
			}
			resp, data := post(t, w.URL, tt.path, body)
			code, param := apiErr(t, data)
			if resp.StatusCode != 400 || code != tt.code || param != tt.param {
				t.Errorf("got %d code %q param %q, want 400 %q param %q: %s", resp.StatusCode, code, param, tt.code, tt.param, data)
			}
			if !strings.Contains(string(data), tt.keyword) {
				t.Errorf("message does not name %q: %s", tt.keyword, data)
			}
		})
	}
}
