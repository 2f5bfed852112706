package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
	"github.com/openai/openai-go/v3/shared"
	"github.com/rbee-dev/rbee/internal/testenv"
	"github.com/rbee-dev/rbee/internal/testmodel"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// weatherTool's arguments are bounded, so that a random-weight model
// under the tool grammar completes the call within a few dozen tokens.
const weatherTool = `{"type":"object","properties":{"city":{"enum":["Paris","Oslo","Rome"]},"days":{"type":"integer","minimum":1,"maximum":7}},
	"required":["city","days"],"additionalProperties":false}`

// TestDoorToolCalls: an agent's round trip through the door with the
// official SDK, on a model whose GGUF carries Qwen's tool-calling
// template: tool_choice required makes even random weights call the tool
// (chat completions, streamed and not, and the Responses API, streamed and
// not), with arguments that fit its schema; the call and the tool's result
// sent back are rendered into the next turn, which answers in text. An
// Ollama client's round trip (its history of calls and tool messages,
// NDJSON) is served too.
func TestDoorToolCalls(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	spec := testmodel.Small
	spec.Name, spec.ChatTmpl = "random-3m-qwen", testmodel.QwenTemplate
	path, err := testenv.WriteModel(e.home, spec.Name+".gguf", testmodel.Random(spec))
	if err != nil {
		t.Fatal(err)
	}
	if r := e.rbee("infer", "--model", path, "--max-tokens", "1", "hello"); r.code != 0 {
		t.Fatalf("infer: exit %d\n%s", r.code, r.stderr)
	}
	model := filepath.Base(path)
	sch, params := compileSchema(t, weatherTool)
	checkArgs := func(how, name, args string) {
		t.Helper()
		if name != "get_weather" {
			t.Errorf("%s: called %q, want get_weather", how, name)
		}
		inst, err := jsonschema.UnmarshalJSON(strings.NewReader(args))
		if err != nil {
			t.Fatalf("%s: arguments are not JSON: %v: %q", how, err, args)
		}
		if err := sch.Validate(inst); err != nil {
			t.Errorf("%s: arguments do not fit the schema: %v: %q", how, err, args)
		}
	}
	ctx := context.Background()
	c := openai.NewClient(option.WithBaseURL("http://"+e.queen+"/v1/"), option.WithAPIKey("unused-on-loopback"), option.WithMaxRetries(0))

	// Chat completions.
	chat := openai.ChatCompletionNewParams{
		Model:       model,
		Messages:    []openai.ChatCompletionMessageParamUnion{openai.UserMessage("What is the weather in Paris?")},
		Temperature: openai.Float(0),
		MaxTokens:   openai.Int(200),
		Tools: []openai.ChatCompletionToolUnionParam{openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
			Name: "get_weather", Description: openai.String("The weather in a city"), Parameters: shared.FunctionParameters(params)})},
		ToolChoice: openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String("required")},
	}
	got, err := c.Chat.Completions.New(ctx, chat)
	if err != nil || len(got.Choices) != 1 || got.Choices[0].FinishReason != "tool_calls" || len(got.Choices[0].Message.ToolCalls) != 1 {
		t.Fatalf("chat with tools: %v %s", err, got.RawJSON())
	}
	call := got.Choices[0].Message.ToolCalls[0]
	checkArgs("chat", call.Function.Name, call.Function.Arguments)
	if call.ID == "" {
		t.Error("chat: the call has no id")
	}
	s := c.Chat.Completions.NewStreaming(ctx, chat)
	var acc openai.ChatCompletionAccumulator
	for s.Next() {
		acc.AddChunk(s.Current())
	}
	if err := s.Err(); err != nil || len(acc.Choices) != 1 || len(acc.Choices[0].Message.ToolCalls) != 1 || acc.Choices[0].FinishReason != "tool_calls" {
		t.Fatalf("chat streamed: %v %+v", err, acc.ChatCompletion)
	}
	sc := acc.Choices[0].Message.ToolCalls[0]
	checkArgs("chat streamed", sc.Function.Name, sc.Function.Arguments)
	// The round trip: the call and its result go back; the next turn is
	// text, on a prompt longer than the same turn without them (no tools
	// are rendered with tool_choice none).
	bare := chat
	bare.ToolChoice = openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String("none")}
	bare.MaxTokens = openai.Int(1)
	base, err := c.Chat.Completions.New(ctx, bare)
	if err != nil {
		t.Fatalf("chat, tool_choice none: %v", err)
	}
	next := chat
	next.Messages = append(append([]openai.ChatCompletionMessageParamUnion{}, chat.Messages...), got.Choices[0].Message.ToParam(),
		openai.ToolMessage(`{"temperature_c":21,"sky":"clear"}`, call.ID))
	next.ToolChoice = openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String("none")}
	next.MaxTokens = openai.Int(8)
	answer, err := c.Chat.Completions.New(ctx, next)
	if err != nil || len(answer.Choices) != 1 || len(answer.Choices[0].Message.ToolCalls) != 0 || answer.Choices[0].FinishReason == "tool_calls" ||
		answer.Usage.PromptTokens <= base.Usage.PromptTokens {
		t.Errorf("the turn after the tool's result: %v %s (prompt %d tokens, %d without the call and result)", err, answer.RawJSON(), answer.Usage.PromptTokens, base.Usage.PromptTokens)
	}

	// The Responses API.
	rp := responses.ResponseNewParams{
		Model:           model,
		Input:           responses.ResponseNewParamsInputUnion{OfString: openai.String("What is the weather in Paris?")},
		Temperature:     openai.Float(0),
		MaxOutputTokens: openai.Int(200),
		Tools:           []responses.ToolUnionParam{{OfFunction: &responses.FunctionToolParam{Name: "get_weather", Parameters: params, Strict: openai.Bool(true)}}},
		ToolChoice:      responses.ResponseNewParamsToolChoiceUnion{OfToolChoiceMode: openai.Opt(responses.ToolChoiceOptionsRequired)},
		// One call: the streamed arguments below are one call's.
		ParallelToolCalls: openai.Bool(false),
	}
	resp, err := c.Responses.New(ctx, rp)
	if err != nil || resp.Status != "completed" {
		t.Fatalf("responses with tools: %v %s", err, resp.RawJSON())
	}
	var fc *responses.ResponseOutputItemUnion
	for i, it := range resp.Output {
		if it.Type == "function_call" {
			fc = &resp.Output[i]
		}
	}
	if fc == nil || fc.CallID == "" || !strings.HasPrefix(fc.ID, "fc_") {
		t.Fatalf("responses: no function_call item with a call_id: %s", resp.RawJSON())
	}
	checkArgs("responses", fc.Name, fc.Arguments.OfString)
	rs := c.Responses.NewStreaming(ctx, rp)
	var argsDone, deltas string
	var final responses.Response
	for rs.Next() {
		ev := rs.Current()
		switch ev.Type {
		case "response.function_call_arguments.delta":
			deltas += ev.Delta
		case "response.function_call_arguments.done":
			argsDone = ev.Arguments
		case "response.completed":
			final = ev.Response
		}
	}
	if err := rs.Err(); err != nil || argsDone == "" || deltas != argsDone || final.Status != "completed" {
		t.Fatalf("responses streamed: %v, arguments %q (deltas %q), final %s", err, argsDone, deltas, final.RawJSON())
	}
	checkArgs("responses streamed", "get_weather", argsDone)
	out := responses.ResponseInputItemParamOfFunctionCallOutput(`{"temperature_c":21,"sky":"clear"}`)
	out.OfFunctionCallOutput.CallID = openai.String(fc.CallID)
	rp2 := rp
	rp2.Input = responses.ResponseNewParamsInputUnion{OfInputItemList: responses.ResponseInputParam{
		responses.ResponseInputItemParamOfMessage("What is the weather in Paris?", responses.EasyInputMessageRoleUser),
		responses.ResponseInputItemParamOfFunctionCall(fc.Arguments.OfString, fc.CallID, fc.Name),
		out,
	}}
	rp2.ToolChoice = responses.ResponseNewParamsToolChoiceUnion{OfToolChoiceMode: openai.Opt(responses.ToolChoiceOptionsNone)}
	rp2.MaxOutputTokens = openai.Int(8)
	resp2, err := c.Responses.New(ctx, rp2)
	if err != nil || len(resp2.Output) != 1 || resp2.Output[0].Type != "message" || resp2.Usage.InputTokens <= base.Usage.PromptTokens {
		t.Errorf("responses after the tool's result: %v %s; want a message on a prompt longer than the turn without the call and result (%d tokens)",
			err, resp2.RawJSON(), base.Usage.PromptTokens)
	}

	// Ollama: tools offered, the history of a call and its result sent
	// back (its prompt longer than the first turn's: the call and the result
	// are in it); NDJSON lines to the last, done.
	body := `{"model":"` + model + `","options":{"temperature":0,"num_predict":8},` +
		`"tools":[{"type":"function","function":{"name":"get_weather","description":"The weather in a city","parameters":` + weatherTool + `}}],` +
		`"messages":[{"role":"user","content":"What is the weather in Paris?"},` +
		`{"role":"assistant","content":"","tool_calls":[{"function":{"name":"get_weather","arguments":{"city":"Paris","days":1}}}]},` +
		`{"role":"tool","content":"{\"temperature_c\":21}","tool_name":"get_weather"}]}`
	hr, err := http.Post("http://"+e.queen+"/api/chat", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer hr.Body.Close()
	if hr.StatusCode != 200 || hr.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("ollama chat with tools: %d %s", hr.StatusCode, hr.Header.Get("Content-Type"))
	}
	var last struct {
		Done            bool `json:"done"`
		PromptEvalCount int  `json:"prompt_eval_count"`
		Error           string
	}
	lines := 0
	br := bufio.NewScanner(hr.Body)
	for br.Scan() {
		lines++
		if err := json.Unmarshal(br.Bytes(), &last); err != nil {
			t.Fatalf("line %q: %v", br.Text(), err)
		}
	}
	if !last.Done || last.Error != "" || lines < 2 || int64(last.PromptEvalCount) <= got.Usage.PromptTokens {
		t.Errorf("ollama chat: %d lines, last %+v", lines, last)
	}
}
