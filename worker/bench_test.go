package worker_test

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hybridgroup/yzma/pkg/llama"

	"github.com/rbee-dev/rbee/internal/testenv"
	"github.com/rbee-dev/rbee/llm"
)

const (
	benchGenTokens = 256
	benchRuns      = 3
	benchRounds    = 3
)

// benchPrompt is ASCII text; the byte-level vocabulary makes it one token
// per byte (plus BOS).
var benchPrompt = strings.Repeat("The quick brown fox jumps over the lazy dog. ", 3)[:128]

// timing is one generation measured from the caller's side.
type timing struct {
	first, total        time.Duration // to the first text, to the end
	prompt, gen         int           // token counts
	promptMS, engineGen float64       // as the worker reports them (HTTP only)
}

func (t timing) promptRate() float64 { return float64(t.prompt) / t.first.Seconds() }
func (t timing) genRate() float64    { return float64(t.gen-1) / (t.total - t.first).Seconds() }

// benchThreads is the thread count both sides use: $RBEE_BENCH_THREADS, or
// every CPU.
func benchThreads() int {
	if n, err := strconv.Atoi(os.Getenv("RBEE_BENCH_THREADS")); err == nil && n > 0 {
		return n
	}
	return runtime.NumCPU()
}

// median returns the run with the median total time.
func median(ts []timing) timing {
	sorted := slices.Clone(ts)
	slices.SortFunc(sorted, func(a, b timing) int { return cmp.Compare(a.total, b.total) })
	return sorted[len(sorted)/2]
}

// BenchmarkWorker compares, for the ~75M model in F32, Q8_0 and Q4_K_M,
// generation through rbee-worker's HTTP stream with the same generation
// driven in-process through yzma, and reports the worker's peak memory.
// Run it with `make bench` (it needs `make models`).
func BenchmarkWorker(b *testing.B) {
	dir := os.Getenv("RBEE_BENCH_MODELS")
	if dir == "" {
		b.Skip("RBEE_BENCH_MODELS is not set; run `make bench`")
	}
	for _, q := range []string{"f32", "q8_0", "q4_k_m"} {
		model := filepath.Join(dir, "random-75m-"+q+".gguf")
		if _, err := os.Stat(model); err != nil {
			b.Fatalf("%v: run `make models`", err)
		}
		b.Run(q, func(b *testing.B) {
			for range b.N {
				httpT, inT, rss := benchPair(b, model)
				b.ReportMetric(httpT.promptRate(), "http_prompt_tok/s")
				b.ReportMetric(httpT.genRate(), "http_gen_tok/s")
				b.ReportMetric(inT.promptRate(), "yzma_prompt_tok/s")
				b.ReportMetric(inT.genRate(), "yzma_gen_tok/s")
				b.ReportMetric(httpT.engineGen, "worker_engine_gen_tok/s")
				b.ReportMetric(httpT.genRate()/inT.genRate(), "gen_ratio")
				b.ReportMetric(inT.total.Seconds()/httpT.total.Seconds(), "total_ratio")
				b.ReportMetric(float64(rss)/(1<<20), "worker_peak_MiB")
				b.ReportMetric(0, "ns/op")
			}
		})
	}
}

// benchPair measures the worker over HTTP and the same generation
// in-process, never both loaded at once (an idle ggml context in one process
// slows the other's threads). Rounds alternate — worker, in-process, worker,
// ... — so drift in the machine's load hits both sides alike; it returns the
// median of each side and the worker's peak memory.
func benchPair(b *testing.B, model string) (httpT, inT timing, rss int64) {
	var hs, is []timing
	for range benchRounds {
		h, r := benchHTTP(b, model)
		hs = append(hs, h...)
		rss = max(rss, r)
		inproc, closeInproc := inProcess(b, model)
		inproc() // warm-up
		for range benchRuns {
			is = append(is, inproc())
		}
		closeInproc()
	}
	return median(hs), median(is), rss
}

// benchHTTP starts a worker, runs benchRuns streamed generations after a
// warm-up, and stops it.
func benchHTTP(b *testing.B, model string) ([]timing, int64) {
	threads := fmt.Sprint(benchThreads())
	p := testenv.Start(b, workerBin, nil, "--engine", engineDir, "--model", model, "--threads", threads, "--ctx-size", "1024")
	defer p.Stop(30 * time.Second)
	ln, err := p.Next("listening", 30*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := p.Next("ready", 120*time.Second); err != nil {
		b.Fatal(err)
	}
	url := "http://" + ln["address"].(string)
	streamOnce(b, url) // warm-up
	var ts []timing
	for range benchRuns {
		ts = append(ts, streamOnce(b, url))
	}
	rss, err := testenv.PeakRSS(p.Cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	return ts, rss
}

func streamOnce(b *testing.B, url string) timing { return streamN(b, url, benchGenTokens) }

// streamN streams a greedy generation of n tokens of benchPrompt.
func streamN(b *testing.B, url string, n int) timing {
	body, _ := json.Marshal(map[string]any{
		"prompt": benchPrompt, "max_tokens": n, "temperature": 0, "ignore_eos": true, "stream": true, "stream_options": map[string]any{"include_usage": true},
	})
	start := time.Now()
	resp, err := http.Post(url+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var t timing
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			t.total = time.Since(start)
			break
		}
		var c chunk
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			b.Fatal(err)
		}
		if t.first == 0 && len(c.Choices) > 0 && c.Choices[0].Text != "" {
			t.first = time.Since(start)
		}
		if c.Usage != nil {
			t.prompt, t.gen = c.Usage.PromptTokens, c.Usage.CompletionTokens
			t.promptMS, t.engineGen = c.Timings.PromptMS, c.Timings.PredictedPerSecond
		}
	}
	if t.gen != n {
		b.Fatalf("generated %d tokens, want %d", t.gen, n)
	}
	return t
}

// inProcess loads the model with yzma directly and returns a function that
// runs the same generation: the plain llama.cpp loop a program embedding it
// would write.
func inProcess(b *testing.B, path string) (run func() timing, closeFn func()) {
	if _, err := llm.Load(engineDir); err != nil {
		b.Fatal(err)
	}
	mp := llama.ModelDefaultParams()
	mp.SetCPUOnly()
	model, err := llama.ModelLoadFromFile(path, mp)
	if err != nil {
		b.Fatal(err)
	}
	cp := llama.ContextDefaultParams()
	cp.NCtx, cp.NBatch, cp.NUbatch = 1024, 512, 512
	cp.NThreads, cp.NThreadsBatch = int32(benchThreads()), int32(benchThreads())
	cp.NoPerf = 1
	lctx, err := llama.InitFromModel(model, cp)
	if err != nil {
		b.Fatal(err)
	}
	vocab := llama.ModelGetVocab(model)
	run = func() timing {
		mem, _ := llama.GetMemory(lctx)
		llama.MemoryClear(mem, true)
		smpl := llama.SamplerChainInit(llama.SamplerChainDefaultParams())
		llama.SamplerChainAdd(smpl, llama.SamplerInitGreedy())
		defer llama.SamplerFree(smpl)
		start := time.Now()
		toks := llama.Tokenize(vocab, benchPrompt, true, true)
		t := timing{prompt: len(toks)}
		batch := llama.BatchGetOne(toks)
		buf := make([]byte, 64)
		var out []byte
		for t.gen < benchGenTokens {
			if rc, err := llama.Decode(lctx, batch); err != nil || rc != 0 {
				b.Fatalf("decode: %d %v", rc, err)
			}
			tok := llama.SamplerSample(smpl, lctx, -1)
			n := llama.TokenToPiece(vocab, tok, buf, 0, false)
			out = append(out, buf[:max(n, 0)]...)
			t.gen++
			if t.first == 0 && len(out) > 0 {
				t.first = time.Since(start)
			}
			toks = []llama.Token{tok}
			batch = llama.BatchGetOne(toks)
		}
		t.total = time.Since(start)
		return t
	}
	return run, func() {
		llama.Free(lctx)
		llama.ModelFree(model)
	}
}
