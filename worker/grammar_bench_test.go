package worker_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// grammarSchema admits far more than grammarGen tokens of JSON: both
// servers generate exactly grammarGen tokens, every one through the
// grammar sampler.
const (
	grammarSchema = `{"type":"object","properties":{"items":{"type":"array","items":{"type":"string","maxLength":8},"minItems":400,"maxItems":400}},"required":["items"]}`
	grammarGen    = 256
	grammarRuns   = 3
)

// BenchmarkGrammarVsLlamaServer: generation constrained by the same JSON
// Schema (the json_schema field both servers take on /v1/completions,
// turned into a GBNF grammar) on rbee-worker and on llama-server of the
// same llama.cpp release, one server at a time, alternating; the ratio
// of generated tokens per second. Run it with `make bench`.
func BenchmarkGrammarVsLlamaServer(b *testing.B) {
	models, anchors := os.Getenv("RBEE_BENCH_MODELS"), os.Getenv("RBEE_BENCH_ANCHORS")
	if models == "" || anchors == "" {
		b.Skip("RBEE_BENCH_MODELS or RBEE_BENCH_ANCHORS is not set; run `make bench`")
	}
	llamaServer := filepath.Join(anchors, "llama-server")
	if _, err := os.Stat(llamaServer); err != nil {
		b.Skipf("%v: run `make anchors`", err)
	}
	model := filepath.Join(models, "random-75m-q4_k_m.gguf")
	threads := benchThreads()
	var ref, got []float64
	for range anchorRounds {
		ref = append(ref, grammarRates(b, startLlamaServer(b, llamaServer, model, threads))...)
		got = append(got, grammarRates(b, startRbeeWorker(b, model, threads))...)
	}
	for range b.N {
		b.ReportMetric(medianOf(ref), "llama_server_tok/s")
		b.ReportMetric(medianOf(got), "rbee_worker_tok/s")
		b.ReportMetric(medianOf(got)/medianOf(ref), "grammar_ratio")
		b.ReportMetric(0, "ns/op")
	}
}

// grammarRates runs grammarRuns constrained generations after a warm-up and
// returns their tokens per second (wall time, the request's whole life).
func grammarRates(b *testing.B, s server) []float64 {
	defer s.stop()
	var out []float64
	for i := range grammarRuns + 1 {
		body, _ := json.Marshal(map[string]any{
			"prompt": fmt.Sprintf("Run %d. Items: ", i), "max_tokens": grammarGen, "temperature": 0,
			"json_schema": json.RawMessage(grammarSchema), "cache_prompt": false,
		})
		start := time.Now()
		resp, err := http.Post(s.url+"/v1/completions", "application/json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		var r struct {
			Choices []struct {
				Text         string `json:"text"`
				FinishReason string `json:"finish_reason"`
			} `json:"choices"`
			Usage struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		err = json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		elapsed := time.Since(start)
		if err != nil || resp.StatusCode != http.StatusOK || len(r.Choices) != 1 {
			b.Fatalf("%s: status %d %v %+v", s.name, resp.StatusCode, err, r)
		}
		if r.Usage.CompletionTokens != grammarGen || !strings.HasPrefix(r.Choices[0].Text, `{`) {
			b.Fatalf("%s: %d tokens (%s), want %d of JSON: %.80q", s.name, r.Usage.CompletionTokens, r.Choices[0].FinishReason, grammarGen, r.Choices[0].Text)
		}
		if i > 0 { // the first is the warm-up
			out = append(out, float64(grammarGen)/elapsed.Seconds())
		}
	}
	b.Logf("%s: %v tok/s", s.name, out)
	return out
}
