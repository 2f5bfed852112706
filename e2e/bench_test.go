package e2e

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/internal/testenv"
	"github.com/rbee-dev/rbee/queen"
	"github.com/rbee-dev/rbee/sse"
)

// BenchmarkWarmOverhead measures what keeper → queen → hive → worker adds
// to a warm request, against asking the same worker directly on its socket:
// time to first token (alphabet model, median of 30) and generation
// tokens/s (256 tokens, median of 5, alternating; the ~75M Q8_0 model when
// $RBEE_BENCH_MODELS is set, as `make bench` does, else random-3m).
//
// It runs twice: with the worker's default threads (one per core: ggml's
// spinning threads then compete with the relay for CPU), and with one core
// left to the keeper, queen and hive.
func BenchmarkWarmOverhead(b *testing.B) {
	for _, threads := range []int{0, max(runtime.NumCPU()-1, 1)} {
		name := "threads=default"
		if threads > 0 {
			name = fmt.Sprintf("threads=%d", threads)
		}
		b.Run(name, func(b *testing.B) { benchWarm(b, threads) })
	}
}

func benchWarm(b *testing.B, threads int) {
	e := newEnv(b)
	if threads > 0 {
		e.vars = append(e.vars, fmt.Sprintf("RBEE_WORKER_THREADS=%d", threads))
	}
	q := testenv.Start(b, bins.Rbee, e.vars, "queen", "serve")
	if _, err := waitQueen(e); err != nil {
		b.Fatalf("%v\n%s", err, q.StderrText())
	}
	rateModel := longModel
	if dir := os.Getenv("RBEE_BENCH_MODELS"); dir != "" {
		rateModel = filepath.Join(dir, "random-75m-q8_0.gguf")
	}
	b.Logf("tokens/s measured on %s", filepath.Base(rateModel))
	for range b.N {
		for _, m := range []string{alphabet, rateModel} {
			jobTTFT(b, e, m, 4) // warm: a worker per model
		}
		ws := e.workers()
		sock := map[string]string{}
		for _, w := range ws {
			sock[w.Model] = filepath.Join(e.home, ".rbee", "run", w.ID+".sock")
		}
		var viaQueen, direct, viaCLI []time.Duration
		for range 30 {
			viaQueen = append(viaQueen, jobTTFT(b, e, alphabet, 4).ttft)
			direct = append(direct, workerTTFT(b, sock[alphabet], 4).ttft)
		}
		for range 10 {
			viaCLI = append(viaCLI, cliTTFT(b, e))
		}
		var qRate, dRate []float64
		for range 5 {
			qRate = append(qRate, jobTTFT(b, e, rateModel, 256).rate())
			dRate = append(dRate, workerTTFT(b, sock[rateModel], 256).rate())
		}
		mq, md := medianD(viaQueen), medianD(direct)
		b.ReportMetric(float64(md.Microseconds())/1000, "direct_ttft_ms")
		b.ReportMetric(float64(mq.Microseconds())/1000, "queen_ttft_ms")
		b.ReportMetric(float64((mq-md).Microseconds())/1000, "added_ttft_ms")
		b.ReportMetric(float64(medianD(viaCLI).Microseconds())/1000, "rbee_cli_ttft_ms")
		b.ReportMetric(medianF(dRate), "direct_tok/s")
		b.ReportMetric(medianF(qRate), "queen_tok/s")
		b.ReportMetric(medianF(qRate)/medianF(dRate), "tok/s_ratio")
		b.ReportMetric(0, "ns/op")
	}
	q.Stop(30 * time.Second)
}

type gen struct {
	ttft, total time.Duration
	tokens      int
}

func (g gen) rate() float64 { return float64(g.tokens-1) / (g.total - g.ttft).Seconds() }

// jobTTFT submits a job to the queen the way the keeper does.
func jobTTFT(b *testing.B, e *env, model string, maxTokens int) gen {
	temp := 0.0
	body, _ := json.Marshal(queen.JobRequest{Prompt: "abc", Model: model, MaxTokens: maxTokens, Temperature: &temp, Mode: "raw"})
	start := time.Now()
	resp, err := http.Post("http://"+e.queen+"/v1/jobs", "application/json", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var g gen
	err = sse.Relay(sse.NewReader(resp.Body), func(ev rbee.Event) error {
		switch ev.Type {
		case rbee.EventToken:
			if g.ttft == 0 {
				g.ttft = time.Since(start)
			}
		case rbee.EventDone:
			g.total, g.tokens = time.Since(start), ev.Done.CompletionTokens
		case rbee.EventError:
			b.Fatalf("job failed: %s", ev.Message)
		}
		return nil
	})
	if err != nil || g.tokens == 0 {
		b.Fatalf("job: %v (%d tokens)", err, g.tokens)
	}
	return g
}

// workerTTFT asks the worker directly on its unix socket.
func workerTTFT(b *testing.B, sock string, maxTokens int) gen {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer c.CloseIdleConnections()
	body, _ := json.Marshal(map[string]any{"prompt": "abc", "temperature": 0, "max_tokens": maxTokens, "stream": true})
	start := time.Now()
	resp, err := c.Post("http://worker/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var g gen
	rd := sse.NewReader(resp.Body)
	for {
		_, data, err := rd.NextRaw()
		if err != nil {
			b.Fatal(err)
		}
		if string(data) == "[DONE]" {
			break
		}
		var c struct {
			Choices []struct {
				Text string `json:"text"`
			} `json:"choices"`
			Usage *struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		_ = json.Unmarshal(data, &c)
		if g.ttft == 0 && len(c.Choices) > 0 && c.Choices[0].Text != "" {
			g.ttft = time.Since(start)
		}
		if c.Usage != nil {
			g.total, g.tokens = time.Since(start), c.Usage.CompletionTokens
		}
	}
	return g
}

// cliTTFT runs the rbee binary itself: process start, health check, job.
func cliTTFT(b *testing.B, e *env) time.Duration {
	cmd := exec.Command(bins.Rbee, "infer", "-q", "--raw", "--model", alphabet, "--temperature", "0", "--max-tokens", "4", "abc")
	cmd.Env = append(cmd.Environ(), e.vars...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	var one [1]byte
	if _, err := out.Read(one[:]); err != nil {
		b.Fatal(err)
	}
	d := time.Since(start)
	var rest strings.Builder
	buf := make([]byte, 256)
	for {
		n, err := out.Read(buf)
		rest.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if err := cmd.Wait(); err != nil {
		b.Fatal(err)
	}
	return d
}

func medianD(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func medianF(fs []float64) float64 {
	s := slices.Clone(fs)
	slices.SortFunc(s, cmp.Compare[float64])
	return s[len(s)/2]
}
