package worker_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/testenv"
	"github.com/rbee-dev/rbee/internal/testmodel"
)

var (
	workerBin string // rbee-worker built for this test binary
	engineDir string
	alphabet  string // path of the alphabet model
	random3m  string // path of the random-weight model (testmodel.Small)
	tmpDir    string
)

func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintf(os.Stderr, "worker tests: %v\n", err)
		code = 1
	}
	if tmpDir != "" {
		os.RemoveAll(tmpDir)
	}
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	var err error
	if engineDir, err = testenv.EngineDir(); err != nil {
		return 1, err
	}
	if tmpDir, err = os.MkdirTemp("", "rbee-worker-test-"); err != nil {
		return 1, err
	}
	if workerBin, err = testenv.Build(tmpDir, "./cmd/rbee-worker", ""); err != nil {
		return 1, err
	}
	if alphabet, err = testenv.WriteModel(tmpDir, "alphabet.gguf", testmodel.Alphabet()); err != nil {
		return 1, err
	}
	if random3m, err = testenv.WriteModel(tmpDir, "random-3m.gguf", testmodel.Random(testmodel.Small)); err != nil {
		return 1, err
	}
	return m.Run(), nil
}

// workerProc is a running rbee-worker process.
type workerProc struct {
	*testenv.Proc
	URL string
}

// startWorker starts rbee-worker on the alphabet model (unless args name
// another --model) and waits for its "ready" line.
func startWorker(t *testing.T, args ...string) *workerProc {
	t.Helper()
	p := startRaw(t, args...)
	ln, err := p.Next("listening", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Next("ready", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	return &workerProc{Proc: p, URL: "http://" + ln["address"].(string)}
}

func startRaw(t *testing.T, args ...string) *testenv.Proc {
	t.Helper()
	full := []string{"--engine", engineDir, "--threads", "1"}
	hasModel := false
	for _, a := range args {
		if a == "--model" {
			hasModel = true
		}
	}
	if !hasModel {
		full = append(full, "--model", alphabet)
	}
	return testenv.Start(t, workerBin, nil, append(full, args...)...)
}

func post(t *testing.T, url, path string, body any) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	resp, err := http.Post(url+path, "application/json", rd)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return resp, data
}

// health fetches /health.
func health(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(url + "/health")
	if err != nil {
		t.Fatalf("GET /health: %v", err)
	}
	defer resp.Body.Close()
	var h map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatalf("decode /health: %v", err)
	}
	return resp.StatusCode, h
}

// waitHealth polls /health until cond holds (the worker exposes no push
// signal for slot state; polling is bounded by the deadline).
func waitHealth(t *testing.T, url string, what string, cond func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for range tick.C {
		_, h := health(t, url)
		if cond(h) {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("health never showed %s; last: %v", what, h)
		}
	}
	return nil
}

func num(h map[string]any, path ...string) float64 {
	var cur any = h
	for _, p := range path {
		m, _ := cur.(map[string]any)
		cur = m[p]
	}
	f, _ := cur.(float64)
	return f
}

// sseStream reads an SSE response event by event.
type sseStream struct {
	resp *http.Response
	sc   *bufio.Scanner
}

func openStream(t *testing.T, url, path string, body any) *sseStream {
	t.Helper()
	j, _ := json.Marshal(body)
	resp, err := http.Post(url+path, "application/json", bytes.NewReader(j))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("POST %s: status %d: %s", path, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type = %q, want text/event-stream", ct)
	}
	return &sseStream{resp: resp, sc: bufio.NewScanner(resp.Body)}
}

// next returns the next data payload, or io.EOF at the end of the body.
func (s *sseStream) next() (string, error) {
	for s.sc.Scan() {
		line := s.sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			return "", fmt.Errorf("SSE line without data: %q", line)
		}
		return data, nil
	}
	if err := s.sc.Err(); err != nil {
		return "", err
	}
	return "", io.EOF
}

func (s *sseStream) close() { s.resp.Body.Close() }

// chunk is what tests read from OpenAI responses and stream chunks.
type chunk struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Model   string `json:"model"`
	Choices []struct {
		Index   int    `json:"index"`
		Text    string `json:"text"`
		Message *struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		Delta *struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	} `json:"usage"`
	Timings *struct {
		PromptMS           float64 `json:"prompt_ms"`
		PredictedPerSecond float64 `json:"predicted_per_second"`
	} `json:"timings"`
	Error *struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    string  `json:"code"`
	} `json:"error"`
}

// readAll reads a whole stream: the text, the chunks, and whether it ended
// with [DONE].
func (s *sseStream) readAll(t *testing.T, chat bool) (text string, chunks []chunk, done bool) {
	t.Helper()
	var sb strings.Builder
	for {
		data, err := s.next()
		if err == io.EOF {
			return sb.String(), chunks, done
		}
		if err != nil {
			t.Fatal(err)
		}
		if done {
			t.Fatalf("data after [DONE]: %q", data)
		}
		if data == "[DONE]" {
			done = true
			continue
		}
		var c chunk
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			t.Fatalf("chunk is not JSON: %q: %v", data, err)
		}
		chunks = append(chunks, c)
		for _, ch := range c.Choices {
			if chat && ch.Delta != nil {
				sb.WriteString(ch.Delta.Content)
			} else {
				sb.WriteString(ch.Text)
			}
		}
	}
}

func buildWorker(t *testing.T, ldflags string) (string, error) {
	t.Helper()
	return testenv.Build(tmpDir, "./cmd/rbee-worker", ldflags)
}

func startRawBin(t *testing.T, bin string, args ...string) *testenv.Proc {
	t.Helper()
	return testenv.Start(t, bin, nil, args...)
}
