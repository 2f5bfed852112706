package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// compileSchema compiles a JSON Schema for checking answers (formats
// asserted), and returns it as a map for the SDK's parameters too.
func compileSchema(t *testing.T, schema string) (*jsonschema.Schema, map[string]any) {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(strings.NewReader(schema))
	if err != nil {
		t.Fatal(err)
	}
	comp := jsonschema.NewCompiler()
	comp.AssertFormat()
	if err := comp.AddResource("s.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := comp.Compile("s.json")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(schema), &m); err != nil {
		t.Fatal(err)
	}
	return sch, m
}

// TestDoorStructuredOutput: through the door, with the official Go SDK, a
// random-weight model answers JSON that parses and fits the schema asked
// for (response_format json_schema, strict), streamed and not, and a JSON
// object in JSON mode.
func TestDoorStructuredOutput(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if r := e.rbee("infer", "--model", longModel, "--max-tokens", "1", "hello"); r.code != 0 {
		t.Fatalf("infer: exit %d\n%s", r.code, r.stderr)
	}
	const schema = `{"type":"object","properties":{"name":{"type":"string","maxLength":12},
		"age":{"type":"integer","minimum":0,"maximum":120},"tags":{"type":"array","items":{"enum":["a","b","c"]},"maxItems":3}},
		"required":["name","age","tags"],"additionalProperties":false}`
	sch, schemaMap := compileSchema(t, schema)
	c := openai.NewClient(option.WithBaseURL("http://"+e.queen+"/v1/"), option.WithAPIKey("unused-on-loopback"), option.WithMaxRetries(0))
	ctx := context.Background()
	params := openai.ChatCompletionNewParams{
		Model:       "random-3m.gguf",
		Messages:    []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Describe a person.")},
		Temperature: openai.Float(0),
		MaxTokens:   openai.Int(200),
		ResponseFormat: openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONSchema: &shared.ResponseFormatJSONSchemaParam{
			JSONSchema: shared.ResponseFormatJSONSchemaJSONSchemaParam{Name: "person", Schema: schemaMap, Strict: openai.Bool(true)}}},
	}
	check := func(how, text string) {
		inst, err := jsonschema.UnmarshalJSON(strings.NewReader(text))
		if err != nil {
			t.Fatalf("%s: the answer is not JSON: %v: %q", how, err, text)
		}
		if err := sch.Validate(inst); err != nil {
			t.Errorf("%s: the answer does not fit the schema: %v: %q", how, err, text)
		}
	}
	got, err := c.Chat.Completions.New(ctx, params)
	if err != nil || len(got.Choices) != 1 || got.Choices[0].FinishReason != "stop" {
		t.Fatalf("structured chat: %v %+v", err, got)
	}
	check("not streamed", got.Choices[0].Message.Content)

	s := c.Chat.Completions.NewStreaming(ctx, params)
	var b strings.Builder
	for s.Next() {
		for _, ch := range s.Current().Choices {
			b.WriteString(ch.Delta.Content)
		}
	}
	if err := s.Err(); err != nil {
		t.Fatalf("structured stream: %v", err)
	}
	check("streamed", b.String())

	params.ResponseFormat = openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONObject: &shared.ResponseFormatJSONObjectParam{}}
	params.MaxTokens = openai.Int(400)
	got, err = c.Chat.Completions.New(ctx, params)
	var obj map[string]any
	if err != nil || len(got.Choices) != 1 {
		t.Fatalf("JSON mode: %v %+v", err, got)
	}
	if got.Choices[0].FinishReason == "stop" && json.Unmarshal([]byte(got.Choices[0].Message.Content), &obj) != nil {
		t.Errorf("JSON mode: the answer is not a JSON object: %q", got.Choices[0].Message.Content)
	}
	e.stopQueen()
}
