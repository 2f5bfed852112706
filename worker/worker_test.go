package worker_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/worker"
)

const alphabetRest = "defghijklmnopqrstuvwxyz"

func greedy(prompt string, extra map[string]any) map[string]any {
	b := map[string]any{"prompt": prompt, "temperature": 0}
	for k, v := range extra {
		b[k] = v
	}
	return b
}

// TestHealthLoadingThenReady drives the server in-process so the loading
// state is observed deterministically: before Load, after Load.
func TestHealthLoadingThenReady(t *testing.T) {
	srv := worker.New(worker.Config{ModelPath: alphabet, EngineDir: engineDir, EngineVersion: "test", Threads: 1, ID: "w-inproc"})
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	defer srv.Close()

	code, h := health(t, ts.URL)
	if code != http.StatusServiceUnavailable || h["status"] != "loading" {
		t.Fatalf("before load: got %d %v, want 503 loading", code, h["status"])
	}
	resp, body := post(t, ts.URL, "/v1/completions", greedy("abc", nil))
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "model_loading") {
		t.Fatalf("completion while loading: got %d %s (Retry-After %q), want 503 model_loading", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	if err := srv.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	code, h = health(t, ts.URL)
	if code != 200 || h["status"] != "ready" {
		t.Fatalf("after load: got %d %v, want 200 ready", code, h)
	}
	for _, k := range []string{"model", "device", "ctx_size", "engine"} {
		if h[k] == nil {
			t.Errorf("health lacks %q: %v", k, h)
		}
	}
	if got := h["engine"].(map[string]any)["version"]; got != "test" {
		t.Errorf("engine version = %v, want test", got)
	}
	if h["device"] != "CPU" {
		t.Errorf("device = %v, want CPU", h["device"])
	}
}

func TestAlphabet(t *testing.T) {
	t.Parallel()
	w := startWorker(t)
	code, h := health(t, w.URL)
	if code != 200 || h["status"] != "ready" || h["model"] != "alphabet" {
		t.Fatalf("health = %d %v", code, h)
	}

	t.Run("completion", func(t *testing.T) {
		resp, body := post(t, w.URL, "/v1/completions", greedy("abc", nil))
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		var c chunk
		if err := json.Unmarshal(body, &c); err != nil {
			t.Fatal(err)
		}
		if c.Object != "text_completion" || len(c.Choices) != 1 {
			t.Fatalf("response shape: %s", body)
		}
		if got := c.Choices[0].Text; got != alphabetRest {
			t.Errorf("text = %q, want %q", got, alphabetRest)
		}
		if got := *c.Choices[0].FinishReason; got != "stop" {
			t.Errorf("finish_reason = %q, want stop", got)
		}
		// BOS + "abc" in, 23 letters out.
		if c.Usage == nil || c.Usage.PromptTokens != 4 || c.Usage.CompletionTokens != 23 || c.Usage.TotalTokens != 27 {
			t.Errorf("usage = %+v, want 4/23/27", c.Usage)
		}
		if c.Timings == nil || c.Timings.PredictedPerSecond <= 0 {
			t.Errorf("timings = %+v, want tokens/s > 0", c.Timings)
		}
	})

	t.Run("stream", func(t *testing.T) {
		// Usage comes in a chunk of its own, with no choices, only when
		// stream_options.include_usage asks for it (OpenAI's behaviour).
		for _, include := range []bool{false, true} {
			req := greedy("abc", map[string]any{"stream": true})
			if include {
				req["stream_options"] = map[string]any{"include_usage": true}
			}
			s := openStream(t, w.URL, "/v1/completions", req)
			text, chunks, done := s.readAll(t, false)
			s.close()
			if text != alphabetRest {
				t.Errorf("include_usage=%v: streamed text = %q, want %q", include, text, alphabetRest)
			}
			if !done {
				t.Errorf("include_usage=%v: stream did not end with [DONE]", include)
			}
			if include {
				if len(chunks) == 0 {
					t.Fatal("no chunks")
				}
				u := chunks[len(chunks)-1]
				if len(u.Choices) != 0 || u.Usage == nil || u.Usage.CompletionTokens != 23 || u.Usage.PromptTokens != 4 {
					t.Errorf("last chunk = %+v, want choices [] and usage 4/23", u)
				}
				chunks = chunks[:len(chunks)-1]
			}
			if len(chunks) < 2 {
				t.Fatalf("got %d chunks, want one per token and a final one", len(chunks))
			}
			for i, c := range chunks {
				if c.Object != "text_completion" || c.ID == "" || c.ID != chunks[0].ID || len(c.Choices) != 1 {
					t.Fatalf("chunk %d: bad shape %+v", i, c)
				}
				last := i == len(chunks)-1
				if (c.Choices[0].FinishReason != nil) != last {
					t.Errorf("chunk %d: finish_reason set = %v, want only on the last", i, c.Choices[0].FinishReason != nil)
				}
				if c.Usage != nil {
					t.Errorf("include_usage=%v: chunk %d has usage %+v; usage goes only in its own last chunk", include, i, c.Usage)
				}
			}
			if final := chunks[len(chunks)-1]; final.Timings == nil {
				t.Errorf("finish chunk lacks timings: %+v", final)
			}
		}
	})

	t.Run("chat", func(t *testing.T) {
		body := map[string]any{"temperature": 0, "messages": []map[string]any{
			{"role": "system", "content": "be brief"}, {"role": "user", "content": []map[string]string{{"type": "text", "text": "abc"}}},
		}}
		resp, data := post(t, w.URL, "/v1/chat/completions", body)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, data)
		}
		var c chunk
		if err := json.Unmarshal(data, &c); err != nil {
			t.Fatal(err)
		}
		if c.Object != "chat.completion" || len(c.Choices) != 1 || c.Choices[0].Message == nil || c.Choices[0].Message.Role != "assistant" {
			t.Fatalf("chat response shape: %s", data)
		}
		// The fallback ChatML prompt ends with a newline, which the alphabet
		// model ends the stream after; what matters is the template ran.
		if c.Usage.PromptTokens < 20 {
			t.Errorf("prompt_tokens = %d: chat template not applied?", c.Usage.PromptTokens)
		}
		body["stream"] = true
		s := openStream(t, w.URL, "/v1/chat/completions", body)
		defer s.close()
		_, chunks, done := s.readAll(t, true)
		if !done || len(chunks) == 0 || chunks[0].Object != "chat.completion.chunk" {
			t.Fatalf("chat stream: done=%v chunks=%+v", done, chunks)
		}
	})

	t.Run("max_tokens", func(t *testing.T) {
		_, body := post(t, w.URL, "/v1/completions", greedy("abc", map[string]any{"max_tokens": 5}))
		var c chunk
		_ = json.Unmarshal(body, &c)
		if got := c.Choices[0].Text; got != "defgh" || *c.Choices[0].FinishReason != "length" {
			t.Errorf("got %q %q, want defgh length", got, *c.Choices[0].FinishReason)
		}
	})

	for _, tt := range []struct {
		name string
		stop any
		want string
	}{
		{"single", "h", "defg"},
		{"multi-token", "ghi", "def"},
		{"list", []string{"xyz", "k"}, "defghij"},
		{"never", "0", alphabetRest},
	} {
		t.Run("stop/"+tt.name, func(t *testing.T) {
			for _, stream := range []bool{false, true} {
				req := greedy("abc", map[string]any{"stop": tt.stop, "stream": stream})
				var got string
				if stream {
					s := openStream(t, w.URL, "/v1/completions", req)
					got, _, _ = s.readAll(t, false)
					s.close()
				} else {
					_, body := post(t, w.URL, "/v1/completions", req)
					var c chunk
					_ = json.Unmarshal(body, &c)
					got = c.Choices[0].Text
				}
				if got != tt.want {
					t.Errorf("stream=%v: got %q, want %q", stream, got, tt.want)
				}
			}
		})
	}

	t.Run("uppercase and seed", func(t *testing.T) {
		// Sampling at temperature 1 with a seed is reproducible.
		req := map[string]any{"prompt": "XY", "temperature": 1, "seed": 7, "top_k": 40, "top_p": 0.95}
		_, a := post(t, w.URL, "/v1/completions", req)
		_, b := post(t, w.URL, "/v1/completions", req)
		var ca, cb chunk
		_ = json.Unmarshal(a, &ca)
		_ = json.Unmarshal(b, &cb)
		if ca.Choices[0].Text != cb.Choices[0].Text {
			t.Errorf("same seed, different text: %q vs %q", ca.Choices[0].Text, cb.Choices[0].Text)
		}
	})
}

// longStream asks for thousands of tokens: after "z" the alphabet model
// only predicts end of stream, which ignore_eos keeps generating through.
func longStream(t *testing.T, url string) *sseStream {
	t.Helper()
	s := openStream(t, url, "/v1/completions", greedy("abc", map[string]any{"stream": true, "ignore_eos": true, "max_tokens": 30000}))
	first, err := s.next()
	if err != nil || !strings.Contains(first, `"d"`) {
		t.Fatalf("first chunk = %q, %v", first, err)
	}
	return s
}

func TestCancelFreesSlot(t *testing.T) {
	t.Parallel()
	w := startWorker(t, "--queue", "0", "--ctx-size", "32768")
	// Several times: whoever sees the slot free must see the cancellation
	// counted (it once was counted just after the slot freed).
	for i := 1; i <= 8; i++ {
		s := longStream(t, w.URL)
		s.close() // the client goes away mid-stream
		h := waitHealth(t, w.URL, "the slot freed", func(h map[string]any) bool { return num(h, "slots_busy") == 0 })
		if got := num(h, "requests", "cancelled"); got != float64(i) {
			t.Fatalf("after %d cancelled requests: cancelled = %v", i, got)
		}
		if got := num(h, "requests", "last_completion_tokens"); got >= 30000 {
			t.Errorf("cancelled request generated %v tokens: generation did not stop", got)
		}
	}
	// With no queue, a busy slot would answer 503: this must be served at once.
	resp, body := post(t, w.URL, "/v1/completions", greedy("abc", nil))
	if resp.StatusCode != 200 || !strings.Contains(string(body), alphabetRest) {
		t.Fatalf("next request: %d %s", resp.StatusCode, body)
	}
}

func TestBusyQueueThen503(t *testing.T) {
	t.Parallel()
	w := startWorker(t, "--slots", "1", "--queue", "1", "--ctx-size", "32768")
	hold := longStream(t, w.URL) // takes the only slot

	var wg sync.WaitGroup
	var queuedText string
	var queuedCode int
	wg.Add(1)
	go func() {
		defer wg.Done()
		resp, err := http.Post(w.URL+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"abc","temperature":0}`))
		if err != nil {
			return
		}
		defer resp.Body.Close()
		queuedCode = resp.StatusCode
		var c chunk
		_ = json.NewDecoder(resp.Body).Decode(&c)
		if len(c.Choices) > 0 {
			queuedText = c.Choices[0].Text
		}
	}()
	waitHealth(t, w.URL, "one queued request", func(h map[string]any) bool { return num(h, "queued") == 1 })

	resp, body := post(t, w.URL, "/v1/completions", greedy("abc", nil))
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "server_busy") {
		t.Fatalf("third request: got %d %s (Retry-After %q), want 503 server_busy with Retry-After", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	hold.close()
	wg.Wait()
	if queuedCode != 200 || queuedText != alphabetRest {
		t.Errorf("queued request: got %d %q, want 200 %q", queuedCode, queuedText, alphabetRest)
	}
	_, h := health(t, w.URL)
	if num(h, "requests", "rejected_busy") != 1 {
		t.Errorf("rejected_busy = %v, want 1", num(h, "requests", "rejected_busy"))
	}
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	w := startWorker(t, "--ctx-size", "256")
	big := strings.Repeat("a", 9<<20)
	tests := []struct {
		name, method, path, ctype, body string
		status                          int
		code                            string
	}{
		{"invalid json", "POST", "/v1/completions", "application/json", `{"prompt":`, 400, "invalid_json"},
		{"empty body", "POST", "/v1/completions", "application/json", ``, 400, "invalid_json"},
		{"trailing data", "POST", "/v1/completions", "application/json", `{"prompt":"a"} {}`, 400, "invalid_json"},
		{"wrong field type", "POST", "/v1/completions", "application/json", `{"prompt":"a","max_tokens":"ten"}`, 400, "invalid_json"},
		{"missing prompt", "POST", "/v1/completions", "application/json", `{"max_tokens":3}`, 400, "missing_prompt"},
		{"empty prompt", "POST", "/v1/completions", "application/json", `{"prompt":""}`, 400, "missing_prompt"},
		{"temperature", "POST", "/v1/completions", "application/json", `{"prompt":"a","temperature":3}`, 400, "invalid_value"},
		{"max_tokens 0", "POST", "/v1/completions", "application/json", `{"prompt":"a","max_tokens":0}`, 400, "invalid_value"},
		{"top_p", "POST", "/v1/completions", "application/json", `{"prompt":"a","top_p":0}`, 400, "invalid_value"},
		{"top_k", "POST", "/v1/completions", "application/json", `{"prompt":"a","top_k":-1}`, 400, "invalid_value"},
		{"seed", "POST", "/v1/completions", "application/json", `{"prompt":"a","seed":-4}`, 400, "invalid_value"},
		{"n 0", "POST", "/v1/completions", "application/json", `{"prompt":"a","n":0}`, 400, "invalid_value"},
		{"n too many", "POST", "/v1/completions", "application/json", `{"prompt":"a","n":17}`, 400, "invalid_value"},
		{"choices too many", "POST", "/v1/completions", "application/json", `{"prompt":["a","b","c"],"n":6}`, 400, "invalid_value"},
		{"empty prompt in array", "POST", "/v1/completions", "application/json", `{"prompt":["a",""]}`, 400, "missing_prompt"},
		{"too many stops", "POST", "/v1/completions", "application/json", `{"prompt":"a","stop":["1","2","3","4","5"]}`, 400, "invalid_value"},
		{"empty stop", "POST", "/v1/completions", "application/json", `{"prompt":"a","stop":""}`, 400, "invalid_value"},
		{"prompt too long", "POST", "/v1/completions", "application/json", `{"prompt":"` + strings.Repeat("ab", 200) + `"}`, 400, "context_length_exceeded"},
		{"content type", "POST", "/v1/completions", "text/plain", `{"prompt":"a"}`, 415, "unsupported_media_type"},
		{"body too large", "POST", "/v1/completions", "application/json", `{"prompt":"` + big + `"}`, 413, "body_too_large"},
		{"no messages", "POST", "/v1/chat/completions", "application/json", `{"messages":[]}`, 400, "missing_messages"},
		{"bad role", "POST", "/v1/chat/completions", "application/json", `{"messages":[{"role":"wizard","content":"hi"}]}`, 400, "invalid_value"},
		{"image part", "POST", "/v1/chat/completions", "application/json", `{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}`, 400, "unsupported_content"},
		{"unknown route", "GET", "/v2/whatever", "", ``, 404, "not_found"},
		{"wrong method", "GET", "/v1/completions", "", ``, 405, "method_not_allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req, _ := http.NewRequest(tt.method, w.URL+tt.path, strings.NewReader(tt.body))
			if tt.ctype != "" {
				req.Header.Set("Content-Type", tt.ctype)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e chunk
			data, _ := io.ReadAll(resp.Body)
			if err := json.Unmarshal(data, &e); err != nil || e.Error == nil {
				t.Fatalf("body is not an OpenAI error: %s", data)
			}
			if resp.StatusCode != tt.status || e.Error.Code != tt.code || e.Error.Message == "" || e.Error.Type == "" {
				t.Errorf("got %d %q (%s), want %d %q", resp.StatusCode, e.Error.Code, e.Error.Message, tt.status, tt.code)
			}
		})
	}
}

func TestStartFailures(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notGGUF := filepath.Join(dir, "notes.gguf")
	os.WriteFile(notGGUF, []byte("this is not a model\n"), 0o644)
	truncated := filepath.Join(dir, "truncated.gguf")
	full, err := os.ReadFile(alphabet)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(truncated, full[:len(full)/3], 0o644)
	// An engine directory missing one library.
	broken := filepath.Join(dir, "engine")
	os.MkdirAll(broken, 0o755)
	entries, _ := os.ReadDir(engineDir)
	for _, e := range entries {
		if e.Name() == "libggml-base.so" {
			continue
		}
		os.Symlink(filepath.Join(engineDir, e.Name()), filepath.Join(broken, e.Name()))
	}
	noFFI, err := buildWorker(t, "-X github.com/jupiterrider/ffi.filename=libffi-missing-for-test.so.8")
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		bin  string
		args []string
		want string
		code int
	}{
		{"missing model", workerBin, []string{"--engine", engineDir, "--model", filepath.Join(dir, "nope.gguf")}, "no such file", 1},
		{"not gguf", workerBin, []string{"--engine", engineDir, "--model", notGGUF}, "not a GGUF file", 1},
		{"corrupt gguf", workerBin, []string{"--engine", engineDir, "--model", truncated}, "could not load", 1},
		{"missing engine file", workerBin, []string{"--engine", broken, "--model", alphabet}, "libggml-base.so", 1},
		{"missing engine dir", workerBin, []string{"--engine", filepath.Join(dir, "none"), "--model", alphabet}, "no such file", 1},
		{"missing libffi", noFFI, []string{"--engine", engineDir, "--model", alphabet}, "libffi8", 1},
		{"non-loopback listen", workerBin, []string{"--engine", engineDir, "--model", alphabet, "--listen", "0.0.0.0:0"}, "not a loopback address", 1},
		{"bad flag", workerBin, []string{"--engine", engineDir, "--model", alphabet, "--slots", "many"}, "--slots", 2},
		{"missing flag", workerBin, []string{"--engine", engineDir}, "--model", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := startRawBin(t, tt.bin, tt.args...)
			code, err := p.Wait(60 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			stderr := p.StderrText()
			if code != tt.code {
				t.Errorf("exit code = %d, want %d; stderr: %s", code, tt.code, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr lacks %q:\n%s", tt.want, stderr)
			}
			for _, crash := range []string{"goroutine ", "panic:", "SIGSEGV"} {
				if strings.Contains(stderr, crash) {
					t.Errorf("stderr holds a crash dump (%q):\n%s", crash, stderr)
				}
			}
		})
	}
}

func TestSIGTERMCutsStream(t *testing.T) {
	t.Parallel()
	w := startWorker(t, "--ctx-size", "32768", "--grace", "100ms")
	s := longStream(t, w.URL)
	defer s.close()
	if err := w.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_, chunks, done := s.readAll(t, false)
	if !done {
		t.Error("cut stream did not end with [DONE]")
	}
	if len(chunks) == 0 || chunks[len(chunks)-1].Error == nil || chunks[len(chunks)-1].Error.Code != "shutting_down" {
		t.Errorf("last event is not a shutting_down error: %+v", chunks)
	}
	code, err := w.Wait(30 * time.Second)
	if err != nil || code != 0 {
		t.Errorf("exit code %d (%v), want 0; stderr: %s", code, err, w.StderrText())
	}
}

func TestSIGTERMLetsShortRequestFinish(t *testing.T) {
	t.Parallel()
	w := startWorker(t, "--ctx-size", "32768", "--grace", "30s")
	// max_tokens bounds the request, so it finishes inside the grace period.
	s := openStream(t, w.URL, "/v1/completions", greedy("abc", map[string]any{"stream": true, "ignore_eos": true, "max_tokens": 1000}))
	defer s.close()
	if _, err := s.next(); err != nil {
		t.Fatal(err)
	}
	w.Signal(syscall.SIGTERM)
	_, chunks, done := s.readAll(t, false)
	last := chunks[len(chunks)-1]
	if !done || last.Error != nil || last.Choices[0].FinishReason == nil || *last.Choices[0].FinishReason != "length" {
		t.Errorf("stream should finish normally: done=%v last=%+v", done, last)
	}
	if code, _ := w.Wait(30 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

func TestUnixSocket(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "w.sock")
	p := startRaw(t, "--listen", "unix:"+sock)
	if _, err := p.Next("ready", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket mode = %v, want 0600 socket", st.Mode())
	}
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := c.Post("http://worker/v1/completions", "application/json", strings.NewReader(`{"prompt":"abc","temperature":0}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ch chunk
	json.NewDecoder(resp.Body).Decode(&ch)
	if ch.Choices[0].Text != alphabetRest {
		t.Errorf("text over unix socket = %q", ch.Choices[0].Text)
	}
	p.Stop(30 * time.Second)
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind after shutdown: %v", err)
	}
}
