package worker_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/testenv"
)

// Settings of the comparison with llama-server; both servers get the same.
const (
	anchorSlots     = 8
	anchorCtxSlot   = 2048 // tokens per slot
	anchorGen       = 256  // tokens per single-stream generation
	anchorGenConc   = 128  // tokens per stream when several run
	anchorRounds    = 2    // servers alternate, round by round, so drift in the machine's load hits both alike
	anchorRuns      = 3    // per round
	anchorConcRuns  = 2    // per round
	anchorPrefix    = 1500 // tokens shared by the two turns
	anchorTurnExtra = 20
)

// server is one OpenAI-style server under test.
type server struct {
	name string
	url  string
	stop func()
}

// BenchmarkVsLlamaServer runs the same client against llama-server (built
// by `make anchors` from the llama.cpp release our engine bundle comes
// from) and rbee-worker, one server at a time on the same GGUF files, and
// prints each figure and the ratio rbee-worker / llama-server. Run it with
// `make bench`.
func BenchmarkVsLlamaServer(b *testing.B) {
	models := os.Getenv("RBEE_BENCH_MODELS")
	anchors := os.Getenv("RBEE_BENCH_ANCHORS")
	if models == "" || anchors == "" {
		b.Skip("RBEE_BENCH_MODELS or RBEE_BENCH_ANCHORS is not set; run `make bench`")
	}
	llamaServer := filepath.Join(anchors, "llama-server")
	if _, err := os.Stat(llamaServer); err != nil {
		b.Skipf("%v: run `make anchors`", err)
	}
	release, _ := os.ReadFile(filepath.Join(anchors, "RELEASE"))
	threads := benchThreads()
	var rows []anchorRow
	for _, q := range []string{"q4_k_m", "f32"} {
		model := filepath.Join(models, "random-75m-"+q+".gguf")
		if _, err := os.Stat(model); err != nil {
			b.Fatalf("%v: run `make models`", err)
		}
		var ref, got samples
		for round := range anchorRounds {
			ref.add(measureServer(b, startLlamaServer(b, llamaServer, model, threads), round))
			got.add(measureServer(b, startRbeeWorker(b, model, threads), round))
		}
		rows = append(rows, compare("random-75m "+strings.ToUpper(q), ref.medians(), got.medians())...)
	}
	for range b.N {
		for _, r := range rows {
			if r.metric == "1 stream gen tok/s" && strings.HasSuffix(r.model, "Q4_K_M") {
				b.ReportMetric(r.ratio(), "single_stream_ratio")
			}
		}
		b.ReportMetric(0, "ns/op")
	}
	fmt.Printf("\nrbee-worker vs llama-server (llama.cpp %s), %d threads, %d slots × %d tokens, medians\n\n",
		strings.TrimSpace(string(release)), threads, anchorSlots, anchorCtxSlot)
	fmt.Println("| model | work | llama-server | rbee-worker | ratio | goal |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Printf("| %s | %s | %.1f | %.1f | %.2f× | %s |\n", r.model, r.metric, r.ref, r.got, r.ratio(), r.goal)
	}
	fmt.Println()
}

type anchorRow struct {
	model, metric string
	ref, got      float64
	goal          string
}

func (r anchorRow) ratio() float64 { return r.got / r.ref }

// figures are one server's medians.
type figures struct {
	genTokS, ttftMS float64
	aggregate       map[int]float64 // concurrent streams → tok/s
	turnTTFTMS      float64
}

// samples are one server's measurements over all rounds.
type samples struct {
	gen, ttft, turn []float64
	aggregate       map[int][]float64
}

func (s *samples) add(o samples) {
	s.gen = append(s.gen, o.gen...)
	s.ttft = append(s.ttft, o.ttft...)
	s.turn = append(s.turn, o.turn...)
	if s.aggregate == nil {
		s.aggregate = map[int][]float64{}
	}
	for n, v := range o.aggregate {
		s.aggregate[n] = append(s.aggregate[n], v...)
	}
}

func (s samples) medians() figures {
	f := figures{genTokS: medianOf(s.gen), ttftMS: medianOf(s.ttft), turnTTFTMS: medianOf(s.turn), aggregate: map[int]float64{}}
	for n, v := range s.aggregate {
		f.aggregate[n] = medianOf(v)
	}
	return f
}

func compare(model string, ref, got figures) []anchorRow {
	rows := []anchorRow{
		{model, "1 stream gen tok/s", ref.genTokS, got.genTokS, "≥ 0.97×"},
		{model, "1 stream TTFT ms (128-token prompt)", ref.ttftMS, got.ttftMS, "≤ 1.05×"},
	}
	for _, n := range []int{2, 4, 8} {
		rows = append(rows, anchorRow{model, fmt.Sprintf("%d streams aggregate tok/s", n), ref.aggregate[n], got.aggregate[n], "≥ 0.95×"})
	}
	rows = append(rows, anchorRow{model, fmt.Sprintf("2nd turn TTFT ms (%d shared + %d new)", anchorPrefix, anchorTurnExtra), ref.turnTTFTMS, got.turnTTFTMS, "≤ 1.1×"})
	return rows
}

func measureServer(b *testing.B, s server, round int) samples {
	defer s.stop()
	var m samples
	stream(b, s.url, benchPrompt, anchorGen, false) // warm-up
	for range anchorRuns {
		t := stream(b, s.url, benchPrompt, anchorGen, false)
		m.gen = append(m.gen, t.genRate())
		m.ttft = append(m.ttft, float64(t.first.Microseconds())/1000)
	}
	m.aggregate = map[int][]float64{}
	for _, n := range []int{2, 4, 8} {
		for run := range anchorConcRuns {
			m.aggregate[n] = append(m.aggregate[n], concurrent(b, s.url, n, round*anchorConcRuns+run))
		}
	}
	for i := range anchorRuns {
		prefix := prefixText(round*anchorRuns + i)
		stream(b, s.url, prefix, 4, true)
		t := stream(b, s.url, prefix+strings.Repeat("x", anchorTurnExtra), 4, true)
		m.turn = append(m.turn, float64(t.first.Microseconds())/1000)
	}
	f := m.medians()
	b.Logf("%s round %d: %.1f tok/s, TTFT %.1f ms, aggregate %v, 2nd turn TTFT %.1f ms", s.name, round, f.genTokS, f.ttftMS, f.aggregate, f.turnTTFTMS)
	return m
}

// prefixText is a prompt of anchorPrefix tokens (one byte per token in the
// generated models' vocabulary), different from the first byte on in every
// round so no round reuses another's cache.
func prefixText(round int) string {
	head := fmt.Sprintf("Round %d. ", round)
	return head + strings.Repeat("The quick brown fox jumps over the lazy dog. ", anchorPrefix/44+1)[:anchorPrefix-len(head)-1]
}

// concurrent runs n streams at once, each with its own prompt, and returns
// the generated tokens per second of wall time.
func concurrent(b *testing.B, url string, n, run int) float64 {
	var wg sync.WaitGroup
	counts := make([]int, n)
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prompt := fmt.Sprintf("Stream %d of run %d: %s", i, run, benchPrompt)
			counts[i] = stream(b, url, prompt, anchorGenConc, false).gen
		}()
	}
	wg.Wait()
	total := 0
	for _, c := range counts {
		total += c
	}
	return float64(total) / time.Since(start).Seconds()
}

// stream runs one streamed completion and times it from the client's side.
// cachePrompt false keeps either server from reusing an earlier prompt.
func stream(b *testing.B, url, prompt string, n int, cachePrompt bool) timing {
	body, _ := json.Marshal(map[string]any{
		"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": true, "stream": true, "cache_prompt": cachePrompt,
	})
	start := time.Now()
	resp, err := http.Post(url+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		b.Error(err)
		return timing{}
	}
	defer resp.Body.Close()
	var t timing
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			break
		}
		var c chunk
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			b.Error(err)
			return t
		}
		if len(c.Choices) == 0 {
			continue
		}
		if t.first == 0 {
			t.first = time.Since(start)
		}
		// Chunks are not tokens (a byte that completes no character sends
		// none): with ignore_eos, finishing by length means n tokens.
		if f := c.Choices[0].FinishReason; f != nil {
			if *f != "length" {
				b.Errorf("finish_reason %q, want length", *f)
			}
			t.gen = n
		}
	}
	t.total = time.Since(start)
	return t
}

func medianOf(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func startRbeeWorker(b *testing.B, model string, threads int) server {
	p := testenv.Start(b, workerBin, nil, "--engine", engineDir, "--model", model, "--threads", fmt.Sprint(threads),
		"--slots", fmt.Sprint(anchorSlots), "--ctx-size", fmt.Sprint(anchorCtxSlot), "--queue", "64")
	ln, err := p.Next("listening", 30*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := p.Next("ready", 120*time.Second); err != nil {
		b.Fatal(err)
	}
	return server{name: "rbee-worker", url: "http://" + ln["address"].(string), stop: func() { p.Stop(30 * time.Second) }}
}

func startLlamaServer(b *testing.B, bin, model string, threads int) server {
	addr, err := testenv.FreePort()
	if err != nil {
		b.Fatal(err)
	}
	_, port, _ := strings.Cut(addr, ":")
	cmd := exec.Command(bin, "-m", model, "--host", "127.0.0.1", "--port", port,
		"-t", fmt.Sprint(threads), "-tb", fmt.Sprint(threads),
		"--parallel", fmt.Sprint(anchorSlots), "-c", fmt.Sprint(anchorSlots*anchorCtxSlot),
		"--no-webui")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	url := "http://127.0.0.1:" + port
	deadline := time.Now().Add(120 * time.Second)
	for {
		resp, err := http.Get(url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			stop()
			b.Fatalf("llama-server did not become ready: %s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond) // llama-server offers no ready signal but /health
	}
	return server{name: "llama-server", url: url, stop: stop}
}
