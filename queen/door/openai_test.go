package door

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func sseResp(body string) *http.Response {
	return &http.Response{Header: http.Header{"Content-Type": {"text/event-stream"}}, Body: io.NopCloser(strings.NewReader(body))}
}

// TestRenameModel: every event names the model the client asked for (the
// first parsed, the rest replaced in place), a text that looks like a
// model field is left alone, usage is read, and the usage-only event the
// door asked for is dropped when the client did not ask.
func TestRenameModel(t *testing.T) {
	in := `data: {"id":"1","model":"/m/x.gguf","choices":[{"text":"a"}]}` + "\n\n" +
		`data: {"id":"1","model":"/m/x.gguf","choices":[{"text":"\"model\":\"/m/x.gguf\""}]}` + "\n\n" +
		`data: {"id":"1","model":"/m/x.gguf","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}` + "\n\n" +
		"data: [DONE]\n\n"
	for _, strip := range []bool{false, true} {
		rec := httptest.NewRecorder()
		var use tokenUse
		if !renameModel(rec, sseResp(in), "chat", &use, strip) {
			t.Fatalf("strip=%v: not complete", strip)
		}
		out := rec.Body.String()
		if strings.Contains(out, `"model":"/m/x.gguf"`) || strings.Count(out, `"model":"chat"`) != map[bool]int{false: 3, true: 2}[strip] {
			t.Errorf("strip=%v: %s", strip, out)
		}
		if !strings.Contains(out, `"text":"\"model\":\"/m/x.gguf\""`) {
			t.Errorf("strip=%v: the text was changed: %s", strip, out)
		}
		if use.PromptTokens != 3 || use.CompletionTokens != 2 {
			t.Errorf("strip=%v: usage %+v", strip, use)
		}
		if strip == strings.Contains(out, `"usage"`) {
			t.Errorf("strip=%v: usage event passed=%v", strip, !strip)
		}
	}
	// A stream that ends without [DONE] is incomplete.
	rec := httptest.NewRecorder()
	if renameModel(rec, sseResp(`data: {"model":"m","choices":[{"text":"a"}]}`+"\n\n"), "chat", &tokenUse{}, false) {
		t.Error("a stream without [DONE] reported complete")
	}
}
