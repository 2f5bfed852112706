package e2e

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/testenv"
)

// BenchmarkFrontDoor measures the queen's OpenAI door against the same
// worker asked directly on its socket, in one run: the time to first token
// it adds (alphabet model, p50 and p99 of 60, alternating), the tokens/s
// ratio of a 256-token stream (median of 9, alternating; the ~75M Q8_0 model under
// `make bench`, else random-3m), and streams per second at 1, 8 and 64
// concurrent clients through the door (64 alphabet streams in all, n at a
// time: requests beyond the worker's slots wait in the door's queue). Last, a client that stops reading
// a long stream for $RBEE_BENCH_SLOW_READER (default 30s): the queen's
// resident memory before and after.
func BenchmarkFrontDoor(b *testing.B) {
	e, q, qpid, rateModel, sock := startDoorBench(b)
	var err error
	for range b.N {
		var door, direct []time.Duration
		for range 60 {
			door = append(door, doorGen(b, e, filepath.Base(alphabet), 4).ttft)
			direct = append(direct, workerTTFT(b, sock[alphabet], 4).ttft)
		}
		var dRate, wRate []float64
		for range 9 {
			dRate = append(dRate, doorGen(b, e, filepath.Base(rateModel), 256).rate())
			wRate = append(wRate, workerTTFT(b, sock[rateModel], 256).rate())
		}
		p50d, p50w := medianD(door), medianD(direct)
		p99d, p99w := pctD(door, 0.99), pctD(direct, 0.99)
		b.ReportMetric(float64(p50w.Microseconds())/1000, "direct_ttft_p50_ms")
		b.ReportMetric(float64((p50d-p50w).Microseconds())/1000, "added_ttft_p50_ms")
		b.ReportMetric(float64((p99d-p99w).Microseconds())/1000, "added_ttft_p99_ms")
		b.ReportMetric(medianF(wRate), "direct_tok/s")
		b.ReportMetric(medianF(dRate), "door_tok/s")
		b.ReportMetric(medianF(dRate)/medianF(wRate), "tok/s_ratio")
		for _, n := range []int{1, 8, 64} {
			start := time.Now()
			var wg sync.WaitGroup
			var mu sync.Mutex
			tokens := 0
			var failed error
			for range n {
				wg.Go(func() {
					for range 64 / n { // 64 streams in all, n at a time
						g, err := doorStream(e, filepath.Base(alphabet), 30)
						mu.Lock()
						tokens += g.tokens
						failed = cmp.Or(failed, err)
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			if failed != nil {
				b.Fatal(failed)
			}
			el := time.Since(start).Seconds()
			b.ReportMetric(64/el, fmt.Sprintf("streams/s_c%d", n))
			b.ReportMetric(float64(tokens)/el, fmt.Sprintf("tok/s_c%d", n))
		}
		b.ReportMetric(0, "ns/op")
	}
	// A slow reader: headers and the first event read, then nothing.
	pause := 30 * time.Second
	if v := os.Getenv("RBEE_BENCH_SLOW_READER"); v != "" {
		if pause, err = time.ParseDuration(v); err != nil {
			b.Fatal(err)
		}
	}
	before := rssKiB(b, qpid)
	body := fmt.Sprintf(`{"model":%q,"prompt":"abc","max_tokens":3000,"temperature":0,"stream":true}`, filepath.Base(rateModel))
	resp, err := http.Post("http://"+e.queen+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("slow reader: %v %v", err, resp)
	}
	if _, err := bufio.NewReaderSize(resp.Body, 16).ReadString('\n'); err != nil {
		b.Fatal(err)
	}
	time.Sleep(pause) // the point: a client that does not read
	after := rssKiB(b, qpid)
	resp.Body.Close()
	b.ReportMetric(float64(after-before)/1024, "slow_reader_rss_growth_MiB")
	b.Logf("queen RSS %d KiB before a client stopped reading, %d KiB %s later", before, after, pause)
	q.Stop(30 * time.Second)
}

// startDoorBench starts a queen with a worker of the alphabet model and
// one of the rate model (the ~75M Q8_0 model under `make bench`, else
// random-3m), warm, and returns them with the workers' sockets by model
// path.
func startDoorBench(b *testing.B) (e *env, q *testenv.Proc, qpid int, rateModel string, sock map[string]string) {
	// One core is left to the queen and the hive: on this small machine
	// the worker's spinning threads would otherwise take the CPU the relay
	// needs (see BenchmarkWarmOverhead), which a GPU worker does not.
	e = newEnv(b, "RBEE_QUEUE_WAIT=10m", fmt.Sprintf("RBEE_WORKER_THREADS=%d", max(runtime.NumCPU()-1, 1)))
	q = testenv.Start(b, bins.Rbee, e.vars, "queen", "serve")
	qpid, err := waitQueen(e)
	if err != nil {
		b.Fatalf("%v\n%s", err, q.StderrText())
	}
	rateModel = longModel
	if dir := os.Getenv("RBEE_BENCH_MODELS"); dir != "" {
		rateModel = filepath.Join(dir, "random-75m-q8_0.gguf")
	}
	for _, m := range []string{alphabet, rateModel} {
		if r := e.rbee("model", "pull", m); r.code != 0 {
			b.Fatalf("model pull %s: %d\n%s", m, r.code, r.stderr)
		}
		doorGen(b, e, filepath.Base(m), 4) // warm: a worker per model
	}
	sock = map[string]string{}
	for _, w := range e.workers() {
		sock[w.Model] = filepath.Join(e.home, ".rbee", "run", w.ID+".sock")
	}
	b.Logf("tokens/s on %s", filepath.Base(rateModel))
	return e, q, qpid, rateModel, sock
}

// grammarFormat is a small JSON schema as OpenAI's response_format: the
// worker samples through llama.cpp's grammar sampler.
var grammarFormat = map[string]any{"response_format": map[string]any{"type": "json_schema", "json_schema": map[string]any{
	"name": "answer", "strict": true, "schema": map[string]any{
		"type": "object", "properties": map[string]any{"answer": map[string]any{"type": "string"}, "n": map[string]any{"type": "integer"}},
		"required": []string{"answer", "n"}, "additionalProperties": false}}}}

// BenchmarkFrontDoorGrammar is BenchmarkFrontDoor's overhead measure with
// a grammar active: every request, through the door and to the worker
// direct alike, carries response_format with a small JSON schema. It
// reports the time to first token the door adds (alphabet model, p50 and
// p99 of 60, alternating) and the tokens/s ratio of a 256-token stream
// (median of 9, alternating). The bounds: ≤ 2 ms p50 added, ≥ 0.95×.
func BenchmarkFrontDoorGrammar(b *testing.B) {
	e, q, _, rateModel, sock := startDoorBench(b)
	// The grammar is active through the door: the answer is the schema's
	// JSON object.
	body, _ := json.Marshal(map[string]any{"model": filepath.Base(alphabet), "prompt": "abc", "temperature": 0, "max_tokens": 64,
		"response_format": grammarFormat["response_format"]})
	resp, err := http.Post("http://"+e.queen+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	var answer struct {
		Choices []struct{ Text string } `json:"choices"`
	}
	err = json.NewDecoder(resp.Body).Decode(&answer)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || len(answer.Choices) != 1 || !strings.HasPrefix(strings.Join(strings.Fields(answer.Choices[0].Text), ""), `{"answer":`) {
		b.Fatalf("a completion with response_format through the door: %d %+v %v, want the schema's object", resp.StatusCode, answer, err)
	}
	b.Logf("with the grammar the alphabet model answers %q", answer.Choices[0].Text)
	for range b.N {
		var door, direct []time.Duration
		for range 60 {
			door = append(door, doorGenWith(b, e, filepath.Base(alphabet), 4, grammarFormat).ttft)
			direct = append(direct, workerGen(b, sock[alphabet], 4, grammarFormat).ttft)
		}
		var dRate, wRate []float64
		var dTok, wTok int
		for range 9 {
			d, w := doorGenWith(b, e, filepath.Base(rateModel), 256, grammarFormat), workerGen(b, sock[rateModel], 256, grammarFormat)
			if d.tokens < 2 || d.tokens != w.tokens {
				b.Fatalf("the door generated %d tokens, the worker direct %d: the same request must give the same tokens, at least 2", d.tokens, w.tokens)
			}
			dRate, wRate, dTok, wTok = append(dRate, d.rate()), append(wRate, w.rate()), d.tokens, w.tokens
		}
		p50d, p50w := medianD(door), medianD(direct)
		b.ReportMetric(float64(p50w.Microseconds())/1000, "direct_ttft_p50_ms")
		b.ReportMetric(float64((p50d-p50w).Microseconds())/1000, "added_ttft_p50_ms")
		b.ReportMetric(float64((pctD(door, 0.99)-pctD(direct, 0.99)).Microseconds())/1000, "added_ttft_p99_ms")
		b.ReportMetric(medianF(wRate), "direct_tok/s")
		b.ReportMetric(medianF(dRate), "door_tok/s")
		b.ReportMetric(medianF(dRate)/medianF(wRate), "tok/s_ratio")
		b.ReportMetric(float64(dTok+wTok)/2, "tokens")
		b.ReportMetric(0, "ns/op")
	}
	q.Stop(30 * time.Second)
}

// doorGen streams a completion of "abc" through the door.
func doorGen(b *testing.B, e *env, model string, maxTokens int) gen {
	return doorGenWith(b, e, model, maxTokens, nil)
}

// doorGenWith is doorGen with more fields in the request (extra).
func doorGenWith(b *testing.B, e *env, model string, maxTokens int, extra map[string]any) gen {
	g, err := doorStreamWith(e, model, maxTokens, extra)
	if err != nil {
		b.Fatal(err)
	}
	return g
}

func doorStream(e *env, model string, maxTokens int) (gen, error) {
	return doorStreamWith(e, model, maxTokens, nil)
}

func doorStreamWith(e *env, model string, maxTokens int, extra map[string]any) (gen, error) {
	req := map[string]any{"model": model, "prompt": "abc", "temperature": 0, "max_tokens": maxTokens, "stream": true,
		"stream_options": map[string]any{"include_usage": true}}
	maps.Copy(req, extra)
	body, _ := json.Marshal(req)
	start := time.Now()
	resp, err := http.Post("http://"+e.queen+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		return gen{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(resp.Body)
		return gen{}, fmt.Errorf("door: %d %s", resp.StatusCode, raw)
	}
	return readGen(resp.Body, start)
}

func pctD(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(int(float64(len(s))*p), len(s)-1)]
}

// rssKiB is a process's resident memory.
func rssKiB(b *testing.B, pid int) int {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
