package worker_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/testenv"
)

// countingProxy forwards loopback connections to target and counts the
// bytes each way and the reads of the server's answers (a read is about
// one answer of the RPC protocol's request/answer exchanges).
type countingProxy struct {
	ln              net.Listener
	target          string
	up, down, reads atomic.Int64
	wg              sync.WaitGroup
}

func newCountingProxy(tb testing.TB, target string) *countingProxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &countingProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.serve()
	tb.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *countingProxy) Addr() string { return p.ln.Addr().String() }

func (p *countingProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.wg.Add(2)
		go p.copy(s, c, &p.up, nil)
		go p.copy(c, s, &p.down, &p.reads)
	}
}

// copy copies src to dst, counting bytes into n and reads into reads, and
// closes both at the end (the proxy dies with either side, as a forward
// does).
func (p *countingProxy) copy(dst, src net.Conn, n, reads *atomic.Int64) {
	defer p.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 256<<10)
	for {
		k, err := src.Read(buf)
		if k > 0 {
			n.Add(int64(k))
			if reads != nil {
				reads.Add(1)
			}
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// counts returns the bytes up (worker → server), down and the answers read
// so far, summed over proxies.
func counts(ps []*countingProxy) (up, down, reads int64) {
	for _, p := range ps {
		up += p.up.Load()
		down += p.down.Load()
		reads += p.reads.Load()
	}
	return up, down, reads
}

// BenchmarkRPCSplit compares random-75m on this process's CPU alone with
// the same model split in thirds over it and two rpc-servers on loopback
// (make bench: Q8_0 from $RBEE_BENCH_MODELS; else the F32 model written
// here; $RBEE_BENCH_THREADS threads in each process, all CPUs by default:
// give 1 on a small machine, ggml's threads spin): load time (start to ready; the servers' tensor cache cold, then
// warm), generation speed, and the bytes the RPC connections carry per
// generated token, counted by a proxy in front of each server. On
// loopback the cost is not bandwidth but the round trips every token
// makes to each server, one after the other.
func BenchmarkRPCSplit(b *testing.B) {
	bin := rpcServerBin(b)
	model := filepath.Join(os.Getenv("RBEE_BENCH_MODELS"), "random-75m-q8_0.gguf")
	if _, err := os.Stat(model); os.Getenv("RBEE_BENCH_MODELS") == "" || err != nil {
		model = randomModel75m(b)
	}
	b.Logf("model %s, %d threads", filepath.Base(model), benchThreads())
	threads := fmt.Sprint(benchThreads())
	args := []string{"--engine", engineDir, "--model", model, "--threads", threads, "--ctx-size", "1024", "--slots", "1"}

	b.Run("unsplit", func(b *testing.B) {
		for range b.N {
			url, load, stop := benchStart(b, args...)
			ts := benchRunsOf(b, url)
			stop()
			reportGen(b, ts, load)
		}
	})
	b.Run("split3", func(b *testing.B) {
		for range b.N {
			var proxies []*countingProxy
			var eps string
			for i := range 2 {
				s := startRPCServer(b, bin, "-t", threads)
				proxies = append(proxies, newCountingProxy(b, s.Addr))
				if i > 0 {
					eps += ","
				}
				eps += proxies[i].Addr()
			}
			split := append(args, "--rpc", eps, "--tensor-split", "1,1,1")
			url, load, stop := benchStart(b, split...)
			loadUp, loadDown, _ := counts(proxies)
			ts := benchRunsOf(b, url)

			// Bytes of one generated token: a long and a one-token
			// generation of the same prompt, subtracted.
			u0, d0, r0 := counts(proxies)
			streamN(b, url, 1)
			u1, d1, r1 := counts(proxies)
			streamN(b, url, rpcBenchTokens)
			u2, d2, r2 := counts(proxies)
			stop()
			per := float64(rpcBenchTokens - 1)
			up := float64((u2-u1)-(u1-u0)) / per
			down := float64((d2-d1)-(d1-d0)) / per
			reads := float64((r2-r1)-(r1-r0)) / per

			_, warm, stop := benchStart(b, split...)
			stop()
			reportGen(b, ts, load)
			b.ReportMetric(float64(warm.Milliseconds()), "load_warm_ms")
			b.ReportMetric(float64(loadUp+loadDown)/(1<<20), "load_MiB")
			b.ReportMetric(up, "up_B/tok")
			b.ReportMetric(down, "down_B/tok")
			b.ReportMetric(reads, "answers/tok")
		}
	})
}

// benchStart starts a worker and waits until it is ready: its URL, the
// time from start to ready, and a function that stops it.
func benchStart(b *testing.B, args ...string) (string, time.Duration, func()) {
	start := time.Now()
	p := testenv.Start(b, workerBin, nil, args...)
	ln, err := p.Next("listening", 30*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := p.Next("ready", 120*time.Second); err != nil {
		b.Fatal(err)
	}
	return "http://" + ln["address"].(string), time.Since(start), func() { p.Stop(30 * time.Second) }
}

// rpcBenchTokens is the length of the generations BenchmarkRPCSplit times:
// a split model on a small machine makes a few tokens a second.
const rpcBenchTokens = 64

// benchRunsOf runs benchRuns generations after a warm-up.
func benchRunsOf(b *testing.B, url string) []timing {
	streamN(b, url, rpcBenchTokens)
	var ts []timing
	for range benchRuns {
		ts = append(ts, streamN(b, url, rpcBenchTokens))
	}
	return ts
}

func reportGen(b *testing.B, ts []timing, load time.Duration) {
	m := median(ts)
	b.ReportMetric(m.promptRate(), "prompt_tok/s")
	b.ReportMetric(m.genRate(), "gen_tok/s")
	b.ReportMetric(float64(load.Milliseconds()), "load_ms")
	b.ReportMetric(0, "ns/op")
}
