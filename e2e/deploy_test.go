package e2e

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/gpu/gputest"
	"github.com/rbee-dev/rbee/internal/sshtest"
	"github.com/rbee-dev/rbee/queenapi"
)

// deployments reads `rbee model deployments --json`.
func (e *env) deployments(t *testing.T) []queenapi.Deployment {
	t.Helper()
	r := e.rbee("model", "deployments", "--json")
	var ds []queenapi.Deployment
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &ds) != nil {
		t.Fatalf("model deployments: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	return ds
}

// replicaIDs are a deployment's workers as hive/worker, sorted.
func replicaIDs(d queenapi.Deployment) []string {
	var out []string
	for _, w := range d.Workers {
		out = append(out, w.Hive+"/"+w.Worker)
	}
	slices.Sort(out)
	return out
}

// streamText runs one streamed completion of "abc" and returns its text.
func streamText(ctx context.Context, c openai.Client, model string, opts ...option.RequestOption) (string, error) {
	s := c.Completions.NewStreaming(ctx, openai.CompletionNewParams{
		Model:       openai.CompletionNewParamsModel(model),
		Prompt:      openai.CompletionNewParamsPromptUnion{OfString: openai.String("abc")},
		Temperature: openai.Float(0),
		MaxTokens:   openai.Int(30),
	}, opts...)
	var b strings.Builder
	for s.Next() {
		for _, ch := range s.Current().Choices {
			b.WriteString(ch.Text)
		}
	}
	return b.String(), s.Err()
}

// TestOpenAIDeployment: a deployment of two replicas, the local hive and
// an SSH host, serves 64 concurrent streams with the exact text, both
// replicas taking some; a full queue answers 429 at once and a client
// that leaves the queue is no longer counted; a replica killed under
// load fails only the requests on it and is replaced; after the queen is
// killed and started again the deployment is back with the same workers,
// none loaded twice.
func TestOpenAIDeployment(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	e.vars = append(e.vars, "RBEE_QUEUE_DEPTH=64", "RBEE_QUEUE_WAIT=60s")
	if r := e.addHive(hosts[0], "h1"); r.code != 0 {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	// A local GGUF gets the name clients use.
	if r := e.rbee("model", "pull", alphabet, "--alias", "alpha"); r.code != 0 {
		t.Fatalf("model pull FILE --alias: exit %d\n%s", r.code, r.stderr)
	}
	// Bad deployments are refused before anything is recorded.
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"nosuch"}, 4, "alpha"},
		{[]string{"alpha", "--replicas", "0"}, 2, "--replicas 0"},
		{[]string{"alpha", "--hive", "nohive"}, 4, "nohive"},
		{[]string{"alpha", "--device", "tpu0"}, 2, "tpu0"},
		{[]string{"alpha", "--name", "a/b"}, 2, "a/b"},
		{[]string{"alpha", "--name", "esc\x1b[31m"}, 2, "control characters"},
		{[]string{"hf:org/repo:Q4_K_M"}, 2, "--name"},
	} {
		r := e.rbee(append([]string{"model", "deploy"}, tt.args...)...)
		if r.code != tt.code || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("model deploy %v: exit %d, want %d naming %q\n%s", tt.args, r.code, tt.code, tt.want, r.stderr)
		}
	}
	if ds := e.deployments(t); len(ds) != 0 {
		t.Fatalf("refused deployments were recorded: %+v", ds)
	}
	r := e.rbee("model", "deploy", "alpha", "--name", "chat", "--replicas", "2")
	if r.code != 0 || !strings.Contains(r.stdout, "2/2 replicas ready") {
		t.Fatalf("model deploy: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stderr, "\r") { // stderr is a pipe here: lines, no redraws
		t.Errorf("model deploy wrote carriage returns into a pipe: %q", r.stderr)
	}
	ds := e.deployments(t)
	if len(ds) != 1 || ds[0].Ready != 2 || len(ds[0].Workers) != 2 || ds[0].Workers[0].Hive == ds[0].Workers[1].Hive {
		t.Fatalf("deployments = %+v, want 2 ready replicas on two hives", ds)
	}
	// rbee infer takes the names too: an alias, a deployment.
	for _, name := range []string{"alpha", "chat"} {
		if r := e.rbee("infer", "--model", name, "--temperature", "0", "abc"); r.code != 0 || r.stdout != alphabetRest+"\n" || !strings.Contains(r.stderr, "no spawn") {
			t.Errorf("infer --model %s: exit %d %q, want a deployed worker's text\n%s", name, r.code, r.stdout, r.stderr)
		}
	}
	if r := e.rbee("infer", "--model", "nosuch", "abc"); r.code != 4 || !strings.Contains(r.stderr, "alpha") {
		t.Errorf("infer --model nosuch: exit %d, want 4 naming the known models\n%s", r.code, r.stderr)
	}
	before := replicaIDs(ds[0])
	capacity := ds[0].Workers[0].Slots + ds[0].Workers[1].Slots

	ctx := context.Background()
	c := openai.NewClient(option.WithBaseURL("http://"+e.queen+"/v1/"), option.WithAPIKey("unused-on-loopback"), option.WithMaxRetries(0))
	// 64 concurrent streams, every one the exact text.
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Go(func() {
			text, err := streamText(ctx, c, "chat")
			if err == nil && text != alphabetRest {
				err = fmt.Errorf("text %q, want %q", text, alphabetRest)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("stream: %v", err)
		}
	}
	var ps queenapi.Processes
	if r := e.rbee("ps", "--json"); r.code != 0 || json.Unmarshal([]byte(r.stdout), &ps) != nil {
		t.Fatalf("ps: exit %d\n%s", r.code, r.stderr)
	}
	served := map[string]int64{}
	for _, p := range ps.Processes {
		if p.Deployment != "chat" || p.UnloadInS != 0 || p.MemoryBytes == 0 || p.Slots == 0 {
			t.Errorf("ps: %+v, want kept for deployment chat, with its memory and slots", p)
		}
		served[p.Hive] += p.Served
	}
	if served["localhost"] == 0 || served["h1"] == 0 || served["localhost"]+served["h1"] < 64 {
		t.Errorf("requests served per hive %v: want both replicas to take some of the 64", served)
	}

	// Queue full: every slot held (the workers stopped), depth waiting,
	// the next answered 429 at once; a waiting client that leaves is no
	// longer counted; on SIGCONT everyone is served.
	pids := e.workerPIDs(t, hosts[0])
	for _, pid := range pids {
		signal(t, pid, syscall.SIGSTOP)
	}
	qctx, cancelAll := context.WithCancel(ctx)
	held := make(chan error, capacity+63)
	for range capacity + 63 {
		go func() {
			text, err := streamText(qctx, c, "chat")
			if err == nil && text != alphabetRest {
				err = fmt.Errorf("text %q after the queue, want %q", text, alphabetRest)
			}
			held <- err
		}()
	}
	waitFor(t, "63 requests wait in the queue", func() bool {
		return strings.Contains(e.metrics(t), `rbee_requests_waiting{model="chat"} 63`)
	})
	lctx, leave := context.WithCancel(ctx)
	leftErr := make(chan error, 1)
	go func() { _, err := streamText(lctx, c, "chat"); leftErr <- err }()
	waitFor(t, "64 requests wait in the queue", func() bool {
		return strings.Contains(e.metrics(t), `rbee_requests_waiting{model="chat"} 64`)
	})
	_, err := streamText(ctx, c, "chat")
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusTooManyRequests || apiErr.Response.Header.Get("Retry-After") == "" {
		t.Errorf("request beyond the queue: %v, want 429 with Retry-After", err)
	}
	leave() // a client that leaves the queue is no longer counted
	if err := <-leftErr; !errors.Is(err, context.Canceled) {
		t.Errorf("client that left: %v", err)
	}
	waitFor(t, "the client that left leaves the queue", func() bool {
		return strings.Contains(e.metrics(t), `rbee_requests_waiting{model="chat"} 63`)
	})
	for _, pid := range pids {
		signal(t, pid, syscall.SIGCONT)
	}
	for range capacity + 63 {
		if err := <-held; err != nil {
			t.Errorf("queued request: %v", err)
		}
	}
	cancelAll()
	if m := e.metrics(t); !strings.Contains(m, `rbee_requests_waiting{model="chat"} 0`) || !strings.Contains(m, `rbee_requests_total{model="chat",status="429"} 1`) ||
		!strings.Contains(m, `rbee_deployment_replicas{deployment="chat"} 2`) || !strings.Contains(m, `rbee_worker_slots{hive="h1"`) ||
		!strings.Contains(m, `rbee_generation_tokens_total{model="chat"}`) {
		t.Errorf("metrics after the queue:\n%s", grepLines(m, "chat", "rbee_worker_slots"))
	}

	// A replica killed under load: requests on it fail with a clear
	// error, the others are served, the deployment replaces it.
	load := make(chan error, 64)
	for i := range 64 {
		go func() {
			if i == 16 {
				signal(t, pids[0], syscall.SIGKILL) // the local replica
			}
			text, err := streamText(ctx, c, "chat")
			if err == nil && text != alphabetRest {
				err = fmt.Errorf("text %q, want %q", text, alphabetRest)
			}
			load <- err
		}()
	}
	failed := 0
	for range 64 {
		if err := <-load; err != nil {
			failed++
			if !strings.Contains(err.Error(), "stopped mid-answer") && !strings.Contains(err.Error(), "no replica") {
				t.Errorf("a request on the killed replica: %v, want a clear error", err)
			}
		}
	}
	t.Logf("capacity %d slots; served per hive %v; %d of 64 requests failed when a replica was killed", capacity, served, failed)
	if failed > capacity {
		t.Errorf("%d requests failed, more than were in flight on the killed replica", failed)
	}
	if text, err := streamText(ctx, c, "chat"); err != nil || text != alphabetRest {
		t.Errorf("after the kill: %q %v", text, err)
	}
	// A stream broken mid-answer ends with an error event, no [DONE].
	if r := e.rbee("model", "pull", longModel, "--alias", "long"); r.code != 0 {
		t.Fatalf("model pull: exit %d\n%s", r.code, r.stderr)
	}
	resp, err := http.Post("http://"+e.queen+"/v1/completions", "application/json",
		strings.NewReader(`{"model":"long","prompt":"hi","max_tokens":4000,"temperature":0,"stream":true}`))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("long stream: %v %v", err, resp)
	}
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "data: {") {
		t.Fatalf("first line of the long stream: %q %v", line, err)
	}
	replica := resp.Header.Get("Rbee-Replica")
	if r := e.rbee("ps", "--json"); r.code != 0 || json.Unmarshal([]byte(r.stdout), &ps) != nil {
		t.Fatalf("ps: exit %d\n%s", r.code, r.stderr)
	}
	killed := false
	for _, p := range ps.Processes {
		if p.Hive+"/"+p.Worker == replica {
			signal(t, p.PID, syscall.SIGKILL)
			killed = true
		}
	}
	if !killed {
		t.Fatalf("replica %q of the long stream not in ps %+v", replica, ps.Processes)
	}
	rest, _ := io.ReadAll(br)
	resp.Body.Close()
	if !strings.Contains(string(rest), `"error"`) || !strings.Contains(string(rest), "stopped mid-answer") || strings.Contains(string(rest), "[DONE]") {
		t.Errorf("a stream whose replica died: ends %q, want an error event and no [DONE]", tail(string(rest), 300))
	}
	waitFor(t, "the deployment replaces the killed replica", func() bool {
		ds := e.deployments(t)
		return len(ds) == 1 && ds[0].Ready == 2 && !slices.Equal(replicaIDs(ds[0]), before)
	})
	before = replicaIDs(e.deployments(t)[0])
	localWorkers, remoteWorkers := len(e.workerPIDs(t, nil)), len(hostProcs(hosts[0].UID, "rbee-worker"))

	// The queen killed and started again: the same workers, none twice.
	qpid, err := e.queenHealth()
	if err != nil {
		t.Fatal(err)
	}
	signal(t, qpid, syscall.SIGKILL)
	waitFor(t, "the restarted queen adopts both replicas", func() bool {
		ds := e.deployments(t)
		return len(ds) == 1 && ds[0].Ready == 2
	})
	if got := replicaIDs(e.deployments(t)[0]); !slices.Equal(got, before) {
		t.Errorf("replicas after the queen's restart %v, want the same workers %v", got, before)
	}
	if text, err := streamText(ctx, c, "chat"); err != nil || text != alphabetRest {
		t.Errorf("after the restart: %q %v", text, err)
	}
	if l, rm := len(e.workerPIDs(t, nil)), len(hostProcs(hosts[0].UID, "rbee-worker")); l != localWorkers || rm != remoteWorkers {
		t.Errorf("workers after the restart: %d local, %d on h1; want %d and %d (none loaded twice)", l, rm, localWorkers, remoteWorkers)
	}
	if r := e.rbee("model", "undeploy", "chat"); r.code != 0 {
		t.Fatalf("undeploy: exit %d\n%s", r.code, r.stderr)
	}
	if ds := e.deployments(t); len(ds) != 0 {
		t.Errorf("deployments after undeploy: %+v", ds)
	}
	e.stopQueen()
}

// workerPIDs are the env's local rbee-worker processes, then (with h) the
// host's.
func (e *env) workerPIDs(t *testing.T, h *sshtest.Host) []int {
	t.Helper()
	var out []int
	for _, pid := range e.procs() {
		if comm(pid) == "rbee-worker" {
			out = append(out, pid)
		}
	}
	if h != nil {
		out = append(out, hostProcs(h.UID, "rbee-worker")...)
	}
	return out
}

// metrics reads the queen's /metrics.
func (e *env) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + e.queen + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// logTails is the end of every log of the env's home, for a failure.
func (e *env) logTails(n int) string {
	home := cmp.Or(e.rbeeHome, filepath.Join(e.home, ".rbee"))
	logs, _ := filepath.Glob(filepath.Join(rbee.Home(home).LogDir(), "*.log"))
	var b strings.Builder
	for _, l := range logs {
		data, _ := os.ReadFile(l)
		fmt.Fprintf(&b, "--- %s:\n%s\n", filepath.Base(l), tail(string(data), n))
	}
	return b.String()
}

func grepLines(s string, subs ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, sub := range subs {
			if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestOpenAIQueueTimeout: a request that finds every slot taken for
// longer than --queue-wait is answered 503 with Retry-After; the requests
// holding the slots still finish.
func TestOpenAIQueueTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "RBEE_QUEUE_WAIT=1s")
	ctx := context.Background()
	c := openai.NewClient(option.WithBaseURL("http://"+e.queen+"/v1/"), option.WithAPIKey("unused-on-loopback"), option.WithMaxRetries(0))
	if r := e.rbee("model", "pull", alphabet, "--alias", "alpha"); r.code != 0 {
		t.Fatalf("model pull: exit %d\n%s", r.code, r.stderr)
	}
	// The first request starts the replica; one on a busy machine can wait
	// longer than the 1s --queue-wait for it, and is answered 503 with
	// Retry-After as a busy door would: a client sends it again.
	var text string
	var err error
	waitFor(t, "a first request is served", func() bool {
		text, err = streamText(ctx, c, "alpha")
		var apiErr *openai.Error
		return !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusServiceUnavailable
	})
	if err != nil || text != alphabetRest {
		t.Fatalf("first request: %q %v", text, err)
	}
	ws := e.workers()
	if len(ws) != 1 || ws[0].Slots < 1 {
		t.Fatalf("workers: %+v", ws)
	}
	signal(t, ws[0].PID, syscall.SIGSTOP)
	held := make(chan error, ws[0].Slots)
	for range ws[0].Slots {
		go func() {
			text, err := streamText(ctx, c, "alpha")
			if err == nil && text != alphabetRest {
				err = fmt.Errorf("text %q", text)
			}
			held <- err
		}()
	}
	var last string
	waitForOr(t, "every slot is taken", func() bool {
		last = e.metrics(t)
		return strings.Contains(last, fmt.Sprintf(`rbee_worker_slots_busy{hive="localhost",model="alpha",worker="%s"} %d`, ws[0].ID, ws[0].Slots))
	}, func() string {
		// Held requests that ended already say why the slots are not all
		// taken.
		var ended []string
		for len(ended) < cap(held) {
			select {
			case err := <-held:
				ended = append(ended, fmt.Sprint(err))
				continue
			default:
			}
			break
		}
		return fmt.Sprintf("workers %+v\nheld requests ended: %q\nworkers now %+v\nmetrics:\n%s\n%s", ws, ended, e.workers(),
			grepLines(last, "slots", "waiting", "running", "requests_total"), e.logTails(4000))
	})
	_, err = streamText(ctx, c, "alpha")
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusServiceUnavailable || apiErr.Response.Header.Get("Retry-After") == "" ||
		!strings.Contains(apiErr.Message, "within 1s") {
		t.Errorf("a request past --queue-wait: %v, want 503 with Retry-After", err)
	}
	signal(t, ws[0].PID, syscall.SIGCONT)
	for range ws[0].Slots {
		if err := <-held; err != nil {
			t.Errorf("a request that held a slot: %v", err)
		}
	}
	e.stopQueen()
}

// TestOpenAIDeploymentScales: a deployment of min 1, max 2 on a hive with
// two GPUs that each hold one one-slot worker (fake NVML; the workers run
// on the CPU). While its replica is held (SIGSTOP), a burst of requests
// waits past --scale-wait: a second replica is added on the other GPU and
// serves them, and both replicas served some. Idle for the keep-alive, the
// added one is stopped: back to min. rbee model deployments, rbee ps and
// the metrics say what happened and why.
func TestOpenAIDeploymentScales(t *testing.T) {
	t.Parallel()
	gpus := gputest.GPUsEnv(
		gputest.FakeGPU{Name: "NVIDIA Fake A", TotalMiB: 68, FreeMiB: 68, ComputeCap: "8.6"},
		gputest.FakeGPU{Name: "NVIDIA Fake B", TotalMiB: 68, FreeMiB: 68, ComputeCap: "8.6"},
	)
	e := newEnv(t, gputest.EnvGPUs+"="+gpus, "RBEE_SCALE_WAIT=500ms", "RBEE_KEEP_ALIVE=3s", "RBEE_QUEUE_WAIT=120s", "RBEE_WORKER_STALL=5m")
	e.vars = append(e.vars, "RBEE_NVML_LIBRARY="+fakeNVML) // later entries win
	if r := e.rbee("model", "pull", alphabet, "--alias", "alpha"); r.code != 0 {
		t.Fatalf("model pull: exit %d\n%s", r.code, r.stderr)
	}
	for _, args := range [][]string{{"--replicas", "2", "--max", "3"}, {"--min", "3", "--max", "2"}} {
		if r := e.rbee(append([]string{"model", "deploy", "alpha", "--name", "chat"}, args...)...); r.code != 2 {
			t.Errorf("model deploy %v: exit %d, want 2 (usage)\n%s", args, r.code, r.stderr)
		}
	}
	r := e.rbee("model", "deploy", "alpha", "--name", "chat", "--min", "1", "--max", "2")
	if r.code != 0 || !strings.Contains(r.stdout, "1/1 replicas ready (up to 2 while requests wait)") {
		t.Fatalf("model deploy: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	ds := e.deployments(t)
	if len(ds) != 1 || ds[0].Min != 1 || ds[0].Max != 2 || len(ds[0].Workers) != 1 || ds[0].Workers[0].Slots != 1 ||
		!strings.HasPrefix(ds[0].Workers[0].Device, "gpu") {
		t.Fatalf("deployments = %+v, want one one-slot replica on a GPU, min 1 max 2", ds)
	}
	first := ds[0].Workers[0]
	var pid int
	for _, w := range e.workers() {
		if w.ID == first.Worker {
			pid = w.PID
		}
	}
	if pid == 0 {
		t.Fatalf("worker %s not on the hive", first.Worker)
	}

	// The replica held, a burst waits past --scale-wait. What is checked
	// of it is what stays true however long the checks take: the added
	// replica goes after a keep-alive of 3s, which a busy machine can
	// spend before a check of the live state.
	signal(t, pid, syscall.SIGSTOP)
	ctx := context.Background()
	c := openai.NewClient(option.WithBaseURL("http://"+e.queen+"/v1/"), option.WithAPIKey("unused-on-loopback"), option.WithMaxRetries(0))
	const burst = 8
	type answer struct {
		replica string // the Rbee-Replica header: hive/worker
		err     error
	}
	done := make(chan answer, burst)
	for range burst {
		go func() {
			var resp *http.Response
			text, err := streamText(ctx, c, "chat", option.WithResponseInto(&resp))
			if err == nil && text != alphabetRest {
				err = fmt.Errorf("text %q, want %q", text, alphabetRest)
			}
			var replica string
			if resp != nil {
				replica = resp.Header.Get("Rbee-Replica")
			}
			done <- answer{replica, err}
		}()
	}
	// One request holds the stopped replica's slot; the others are served
	// by the added one.
	served := map[string]int{}
	for i := range burst - 1 {
		a := <-done
		if a.err != nil {
			t.Errorf("request %d of the burst: %v", i, a.err)
		}
		served[a.replica]++
	}
	signal(t, pid, syscall.SIGCONT)
	a := <-done
	if a.err != nil {
		t.Errorf("the request on the held replica: %v", a.err)
	}
	served[a.replica]++
	held := "localhost/" + first.Worker
	if len(served) != 2 || served[held] != 1 || a.replica != held {
		t.Errorf("requests served per replica %v (the last answered by %s), want one by the held %s and the rest by an added replica", served, a.replica, held)
	}
	var added string
	for id := range served {
		if id != held {
			added = id
		}
	}
	if m := e.metrics(t); !strings.Contains(m, `rbee_door_replicas_added_total{model="chat",reason="queue"} 1`) {
		t.Errorf("metrics lack a replica added for the queue:\n%s", grepLines(m, "replicas"))
	}
	if log := e.logTails(1 << 20); !regexp.MustCompile(`msg="replica added" deployment=chat hive=localhost worker=` + regexp.QuoteMeta(strings.TrimPrefix(added, "localhost/")) +
		` device=gpu\d reason=queue detail="\d+ requests waited`).MatchString(log) {
		t.Errorf("the queen's log does not say why %s was added:\n%s", added, grepLines(log, "replica"))
	}

	// Idle for the keep-alive: the added replica goes, back to min.
	waitFor(t, "an idle replica is removed", func() bool {
		ds := e.deployments(t)
		return len(ds) == 1 && len(ds[0].Workers) == 1 && ds[0].LastScale != nil && ds[0].LastScale.Action == "removed"
	})
	ds = e.deployments(t)
	if ev := ds[0].LastScale; ev.Reason != "idle" || !strings.HasPrefix(ev.Detail, "idle ") || ds[0].Ready != 1 ||
		ev.Device == ds[0].Workers[0].Device || !slices.Contains([]string{held, added}, ev.Hive+"/"+ev.Worker) {
		t.Errorf("deployments = %+v, last scale %+v: want one ready replica left, the other (on the other GPU) removed as idle", ds, ev)
	}
	if r := e.rbee("ps"); r.code != 0 || !strings.Contains(r.stdout, "deployment chat: 1/1 ready (min 1, max 2); last scale: removed localhost/gpu") {
		t.Errorf("ps: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := e.rbee("top", "--once"); r.code != 0 || !regexp.MustCompile(`(?m)^chat +alpha +1/1 +1-2 +removed localhost/gpu\d: idle \d+s`).MatchString(r.stdout) {
		t.Errorf("top: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	waitFor(t, "the removed replica's worker exits", func() bool { return len(e.workers()) == 1 })
	if r := e.rbee("model", "deployments"); r.code != 0 || !strings.Contains(r.stdout, "1-2") || !strings.Contains(r.stdout, ": idle ") {
		t.Errorf("model deployments: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	m := e.metrics(t)
	for _, want := range []string{`rbee_door_replicas_added_total{model="chat",reason="min"} 1`, `rbee_door_replicas_added_total{model="chat",reason="queue"} 1`,
		`rbee_door_replicas_removed_total{model="chat",reason="idle"} 1`, `rbee_deployment_replicas_wanted{deployment="chat"} 1`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(m, "replicas"))
		}
	}
	e.stopQueen()
}
