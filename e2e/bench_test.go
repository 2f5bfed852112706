package e2e

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/sshtest"
	"github.com/rbee-dev/rbee/queenapi"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/internal/testenv"
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
	c := e.queenClient()
	defer c.Close()
	start := time.Now()
	s, err := c.Job(context.Background(), queenapi.JobRequest{Prompt: "abc", Model: model, MaxTokens: maxTokens, Temperature: &temp, Mode: "raw"})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var g gen
	err = relay(s, func(ev rbee.Event) error {
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

// relay hands every event of s to f until the stream ends.
func relay(s *queenapi.Stream, f func(rbee.Event) error) error {
	for {
		ev, err := s.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := f(ev); err != nil {
			return err
		}
	}
}

// workerTTFT asks the worker directly on its unix socket.
func workerTTFT(b *testing.B, sock string, maxTokens int) gen {
	return workerGen(b, sock, maxTokens, nil)
}

// workerGen is workerTTFT with more fields in the request (extra).
func workerGen(b *testing.B, sock string, maxTokens int, extra map[string]any) gen {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer c.CloseIdleConnections()
	req := map[string]any{"prompt": "abc", "temperature": 0, "max_tokens": maxTokens, "stream": true,
		"stream_options": map[string]any{"include_usage": true}}
	maps.Copy(req, extra)
	body, _ := json.Marshal(req)
	start := time.Now()
	resp, err := c.Post("http://worker/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	g, err := readGen(resp.Body, start)
	if err != nil {
		b.Fatal(err)
	}
	return g
}

// readGen reads a streamed completion to its [DONE]: when the first text
// came, and the usage at the end.
func readGen(r io.Reader, start time.Time) (gen, error) {
	var g gen
	rd := sse.NewReader(r)
	for {
		_, data, err := rd.NextRaw()
		if err != nil {
			return g, err
		}
		if string(data) == "[DONE]" {
			return g, nil
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

// upScript does what rbee up does on a fresh host with OpenSSH's own tools:
// probe, copy the agent, the worker and the engine bundle, start the agent
// detached, wait for its socket. One host per invocation; hosts in parallel.
const upScript = `set -eu
target=$1 port=$2 key=$3 kh=$4 hive=$5 worker=$6 engine=$7
o="-o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$kh -i $key"
home=$(ssh $o -p "$port" "$target" 'uname -s -m >/dev/null; ldd --version >/dev/null 2>&1; df -Pk "$HOME" >/dev/null; printf %s "$HOME"')
ssh $o -p "$port" "$target" "mkdir -p .rbee/hive/s .rbee/engines/s .rbee/run .rbee/logs"
scp -q $o -P "$port" "$hive" "$worker" "$target:.rbee/hive/s/"
tar -C "$engine" -cf - . | ssh $o -p "$port" "$target" "tar -C .rbee/engines/s -xf -"
ssh $o -p "$port" "$target" "cd .rbee/hive/s && sha256sum rbee-hive rbee-worker >/dev/null && { setsid ./rbee-hive serve --home $home/.rbee --name s --worker-binary $home/.rbee/hive/s/rbee-worker --engine $home/.rbee/engines/s </dev/null >>$home/.rbee/logs/hive.log 2>&1 & }"
for i in $(seq 1 200); do ssh $o -p "$port" "$target" "test -S .rbee/run/hive.sock" && exit 0; sleep 0.05; done
echo "agent never came up on $target" >&2; exit 1
`

// BenchmarkUp compares `rbee up` on three fresh loopback hosts with the
// same push and start done by a shell script over OpenSSH ssh/scp, then
// times `rbee up` again with the agents already running.
func BenchmarkUp(b *testing.B) {
	for range b.N {
		// rbee up on three fresh hosts.
		hosts := sshtest.Start(b, 3, sshtest.Options{})
		e := newEnv(b)
		var kh, inv strings.Builder
		for i, h := range hosts {
			kh.WriteString(readFile(b, h.KnownHosts))
			fmt.Fprintf(&inv, "[[hive]]\nname = \"h%d\"\nhost = %q\nuser = %q\nport = %d\nidentity = %q\n\n", i+1, strings.Split(h.Addr, ":")[0], h.User, h.Port, h.ClientKey)
		}
		writeFile(b, filepath.Join(e.home, "known_hosts"), kh.String())
		writeFile(b, filepath.Join(e.home, "inventory.toml"), inv.String())
		e.vars = append(e.vars, "RBEE_INVENTORY="+filepath.Join(e.home, "inventory.toml"), "RBEE_KNOWN_HOSTS="+filepath.Join(e.home, "known_hosts"))
		q := testenv.Start(b, bins.Rbee, e.vars, "queen", "serve")
		if _, err := waitQueen(e); err != nil {
			b.Fatalf("%v\n%s", err, q.StderrText())
		}
		start := time.Now()
		r := e.rbee("up")
		cold := time.Since(start)
		if r.code != 0 {
			b.Fatalf("rbee up: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		b.Logf("rbee up on fresh hosts:\n%s", r.stdout)
		var warm []time.Duration
		for range 5 {
			start = time.Now()
			if r := e.rbee("up"); r.code != 0 {
				b.Fatalf("rbee up again: exit %d\n%s", r.code, r.stderr)
			}
			warm = append(warm, time.Since(start))
		}
		q.Stop(30 * time.Second)

		// The script on three other fresh hosts.
		others := sshtest.Start(b, 3, sshtest.Options{})
		start = time.Now()
		var cmds []*exec.Cmd
		var errs []*bytes.Buffer
		for _, h := range others {
			cmd := exec.Command("bash", "-c", upScript, "up", h.User+"@"+strings.Split(h.Addr, ":")[0], strconv.Itoa(h.Port), h.ClientKey, h.KnownHosts, bins.Hive, bins.Worker, engineDir)
			var errb bytes.Buffer
			cmd.Stderr = &errb
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			cmds = append(cmds, cmd)
			errs = append(errs, &errb)
		}
		for i, cmd := range cmds {
			if err := cmd.Wait(); err != nil {
				b.Fatalf("script: %v\n%s", err, errs[i])
			}
		}
		script := time.Since(start)
		b.ReportMetric(cold.Seconds(), "rbee_up_cold_s")
		b.ReportMetric(script.Seconds(), "ssh_scp_script_s")
		b.ReportMetric(cold.Seconds()/script.Seconds(), "cold_ratio")
		b.ReportMetric(medianD(warm).Seconds(), "rbee_up_warm_s")
		b.ReportMetric(0, "ns/op")
	}
}

func readFile(b *testing.B, p string) string {
	data, err := os.ReadFile(p)
	if err != nil {
		b.Fatal(err)
	}
	return string(data)
}

func writeFile(b *testing.B, p, s string) {
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		b.Fatal(err)
	}
}
