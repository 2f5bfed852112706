package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/internal/sshtest"
)

// BenchmarkRPCSplit compares random-75m on one hive with the same model
// split over three (the local hive runs the worker, two SSH hosts serve
// RPC through the queen's forwards; then h1 runs it, reaching the others
// through SSH remote forwards on its loopback): the cold job's load time, warm
// generation tokens/s (64 tokens, median of 5), and the bytes the
// forwards carried per generated token. Every host is this machine, so
// the split adds no bandwidth, only per-token round trips through SSH and
// the queen, on the same cores.
func BenchmarkRPCSplit(b *testing.B) {
	needRPC(b)
	if err := sshtest.Available(); err != nil {
		b.Skipf("no SSH hosts: %v", err)
	}
	hosts := sshtest.Start(b, 2, sshtest.Options{})
	e := newEnv(b)
	e.vars = append(e.vars, "RBEE_INVENTORY="+filepath.Join(e.home, "inventory.toml"), "RBEE_KEEP_ALIVE=10m", "RBEE_WORKER_THREADS=1")
	for i, h := range hosts {
		if r := e.addHive(h, fmt.Sprintf("h%d", i+1)); r.code != 0 {
			b.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
		}
	}
	model := random75m(b)
	for range b.N {
		for _, c := range []struct {
			name string
			args []string
		}{
			{"single", []string{"--hive", "localhost"}},
			{"split3", []string{"--split", "localhost,h1,h2"}},
			{"split3_remote_main", []string{"--split", "h1,localhost,h2"}},
		} {
			cold := splitRun(b, e, model, c.args)
			var rates []float64
			var perTok []float64
			for range 5 {
				r := splitRun(b, e, model, c.args)
				rates = append(rates, r.rate)
				perTok = append(perTok, r.bytesPerToken)
			}
			if c.name != "single" {
				// The next split loads its own worker: end this one (its
				// RPC servers go with it).
				if pid, _ := splitWorker(e, hosts); pid != 0 {
					_ = syscall.Kill(pid, syscall.SIGTERM)
				}
				deadline := time.Now().Add(30 * time.Second)
				for pid, _ := splitWorker(e, hosts); pid != 0 || len(rpcServers(e, hosts)) > 0; pid, _ = splitWorker(e, hosts) {
					if time.Now().After(deadline) {
						b.Fatal("the split did not end after its worker was stopped")
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
			b.ReportMetric(float64(cold.load.Milliseconds()), c.name+"_load_ms")
			b.ReportMetric(medianF(rates), c.name+"_tok/s")
			if c.name != "single" {
				b.ReportMetric(medianF(perTok), c.name+"_bytes/token")
			}
		}
		b.ReportMetric(0, "ns/op")
	}
	e.stopQueen()
}

type splitResult struct {
	load          time.Duration
	rate          float64
	bytesPerToken float64
}

var loadedIn = regexp.MustCompile(`loaded in (\d+) ms`)

// splitRun runs one job with --json and reads its figures.
func splitRun(b *testing.B, e *env, model string, args []string) splitResult {
	b.Helper()
	r := e.rbee(append(append([]string{"infer", "--json"}, args...), "--model", model, "--temperature", "0", "--max-tokens", "64", "--raw", splitPrompt)...)
	if r.code != 0 {
		b.Fatalf("infer %v: exit %d\n%s%s", args, r.code, r.stdout, r.stderr)
	}
	var res splitResult
	var bytes int64
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var ev rbee.Event
		if json.Unmarshal([]byte(line), &ev) != nil {
			continue
		}
		if m := loadedIn.FindStringSubmatch(ev.Message); m != nil && ev.Action == "worker_started" {
			ms, _ := strconv.Atoi(m[1])
			res.load = time.Duration(ms) * time.Millisecond
		}
		if ev.Action == "split_bytes" {
			var d struct {
				Bytes int64 `json:"bytes"`
			}
			_ = json.Unmarshal(ev.Data, &d)
			bytes = d.Bytes
		}
		if ev.Type == rbee.EventDone && ev.Done != nil {
			res.rate = ev.Done.TokensPerSecond
			if ev.Done.CompletionTokens > 0 {
				res.bytesPerToken = float64(bytes) / float64(ev.Done.CompletionTokens)
			}
		}
	}
	b.Logf("%v: load %s, %.1f tok/s, %.0f bytes/token", args, res.load, res.rate, res.bytesPerToken)
	return res
}
