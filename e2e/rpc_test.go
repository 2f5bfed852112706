package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/gpu/gputest"
	"github.com/rbee-dev/rbee/internal/sshtest"
	"github.com/rbee-dev/rbee/internal/testenv"
	"github.com/rbee-dev/rbee/internal/testmodel"
)

var (
	bigOnce  sync.Once
	bigModel string // random-75m, F32: written on first use
	bigErr   error
)

// random75m writes the ~75M-parameter random model once per run.
func random75m(t testing.TB) string {
	t.Helper()
	bigOnce.Do(func() {
		bigModel, bigErr = testenv.WriteModel(tmp, "random-75m.gguf", testmodel.Random(testmodel.Bench))
	})
	if bigErr != nil {
		t.Fatal(bigErr)
	}
	return bigModel
}

// needRPC skips a test when the engine bundle has no RPC server (a bundle
// from before `make engine` built one).
func needRPC(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(engineDir, "rpc-server")); err != nil {
		t.Skipf("the engine bundle at %s has no rpc-server (make engine builds it)", engineDir)
	}
}

// splitEnv is a queen with the local hive and two SSH hives, h1 and h2.
func splitEnv(t *testing.T, keepAlive time.Duration, vars ...string) (*env, []*sshtest.Host) {
	t.Helper()
	needRPC(t)
	e, hosts := sshEnv(t, 2, sshtest.Options{})
	e.vars = append(append(e.vars, "RBEE_KEEP_ALIVE="+keepAlive.String(), "RBEE_WORKER_THREADS=1"), vars...)
	for i, h := range hosts {
		name := fmt.Sprintf("h%d", i+1)
		if r := e.addHive(h, name); r.code != 0 {
			t.Fatalf("hive add %s: exit %d\n%s", name, r.code, r.stderr)
		}
	}
	return e, hosts
}

// sock is one line of /proc/net/tcp.
type sock struct {
	local, remote string // "0100007F:1F90"
	state         string // "0A" listen, "01" established
	inode         string
}

// tcpSocksOf reads a tcp table: /proc/PID/net/tcp is PID's namespace's.
func tcpSocksOf(t *testing.T, path string) []sock {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []sock
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 {
			continue
		}
		out = append(out, sock{local: f[1], remote: f[2], state: f[3], inode: f[9]})
	}
	return out
}

// socketOwners maps socket inodes to the pids holding them.
func socketOwners() map[string][]int {
	out := map[string][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", e.Name(), "fd"))
		for _, fd := range fds {
			l, err := os.Readlink(filepath.Join("/proc", e.Name(), "fd", fd.Name()))
			if ino, ok := strings.CutPrefix(l, "socket:["); ok && err == nil {
				ino = strings.TrimSuffix(ino, "]")
				out[ino] = append(out[ino], pid)
			}
		}
	}
	return out
}

func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

func cmdline(pid int) []string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// rpcServers lists the RPC server processes of the env's local hive and
// of each host, by hive name.
func rpcServers(e *env, hosts []*sshtest.Host) map[string][]int {
	out := map[string][]int{}
	for _, pid := range e.procs() {
		if comm(pid) == "rpc-server" {
			out["localhost"] = append(out["localhost"], pid)
		}
	}
	for i, h := range hosts {
		if ps := hostProcs(h.UID, "rpc-server"); len(ps) > 0 {
			out[fmt.Sprintf("h%d", i+1)] = ps
		}
	}
	return out
}

// splitWorker finds the running rbee-worker started with --rpc, and its
// endpoints.
func splitWorker(e *env, hosts []*sshtest.Host) (pid int, endpoints []string) {
	cands := e.procs()
	for _, h := range hosts {
		cands = append(cands, hostProcs(h.UID, "rbee-worker")...)
	}
	for _, p := range cands {
		if comm(p) != "rbee-worker" {
			continue
		}
		args := cmdline(p)
		if i := slices.Index(args, "--rpc"); i >= 0 && i+1 < len(args) {
			return p, strings.Split(args[i+1], ",")
		}
	}
	return 0, nil
}

// checkIsolated: every RPC server runs in a network namespace of its own
// (its sandbox's): it listens on no socket of the machine's network, not
// even 127.0.0.1, so no other local user can reach it; inside, its only
// client is its sandbox (rbee-hive), which the agent's 0600 relay reaches.
// The worker reaches the servers through forwards on its own loopback.
func checkIsolated(t *testing.T, e *env, hosts []*sshtest.Host) {
	t.Helper()
	servers := rpcServers(e, hosts)
	n := 0
	for _, ps := range servers {
		n += len(ps)
	}
	if n != 2 {
		t.Fatalf("%d RPC servers run, want 2 (the hives that are not the main one): %v", n, servers)
	}
	owners := socketOwners()
	hostNet, _ := os.Readlink("/proc/self/ns/net")
	for hive, ps := range servers {
		for _, pid := range ps {
			if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err != nil || ns == hostNet {
				t.Errorf("hive %s's RPC server (pid %d) runs in the machine's network namespace (%s %v)", hive, pid, ns, err)
			}
			for _, s := range tcpSocksOf(t, "/proc/self/net/tcp") {
				if slices.Contains(owners[s.inode], pid) {
					t.Errorf("hive %s's RPC server (pid %d) has a socket on the machine's network: %s", hive, pid, s.local)
				}
			}
			// Its own namespace: it listens on its loopback, and its
			// clients are its sandbox.
			socks := tcpSocksOf(t, fmt.Sprintf("/proc/%d/net/tcp", pid))
			port := ""
			for _, s := range socks {
				if s.state == "0A" && slices.Contains(owners[s.inode], pid) {
					_, port, _ = strings.Cut(s.local, ":")
				}
			}
			if port == "" {
				t.Errorf("hive %s's RPC server (pid %d) listens nowhere in its namespace", hive, pid)
				continue
			}
			clients := 0
			for _, s := range socks {
				if s.state != "01" || !strings.HasSuffix(s.remote, ":"+port) {
					continue
				}
				for _, c := range owners[s.inode] {
					clients++
					if comm(c) != "rbee-hive" {
						t.Errorf("hive %s's RPC server has a client %s (pid %d): only its sandbox may connect", hive, comm(c), c)
					}
				}
			}
			if clients == 0 {
				t.Errorf("hive %s's RPC server has no client: the split does not use it", hive)
			}
		}
	}
	wpid, eps := splitWorker(e, hosts)
	if wpid == 0 || len(eps) != 2 {
		t.Fatalf("split worker %d with endpoints %v, want 2", wpid, eps)
	}
	for _, ep := range eps {
		if host, _, _ := strings.Cut(ep, ":"); host != "127.0.0.1" {
			t.Errorf("the worker reaches %s, not its loopback", ep)
		}
	}
}

const splitPrompt = "The quick brown fox"

var (
	planLine  = regexp.MustCompile(`(\S+)/cpu \((main worker|RPC server)\): (\d+) layers`)
	placement = regexp.MustCompile(`placement="CPU:(\d+) RPC0@\S+?:(\d+) RPC1@\S+?:(\d+)\+out"`)
)

// checkPlacement: the worker put on each device the layers the plan
// gave its hive (its log's placement line, written by llama.cpp's load).
func checkPlacement(t *testing.T, e *env, hosts []*sshtest.Host, narration string) {
	t.Helper()
	var want []string
	for _, m := range planLine.FindAllStringSubmatch(narration, -1) {
		want = append(want, m[3])
	}
	logs, _ := filepath.Glob(filepath.Join(e.home, ".rbee", "logs", "w-*.log"))
	for _, h := range hosts {
		more, _ := filepath.Glob(filepath.Join(h.Home, ".rbee", "logs", "w-*.log"))
		logs = append(logs, more...)
	}
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		if m := placement.FindStringSubmatch(string(b)); m != nil {
			if got := m[1:]; !slices.Equal(got, want) {
				t.Errorf("the worker placed %v layers, the plan said %v", got, want)
			}
			return
		}
	}
	t.Errorf("no split worker log with a placement among %v", logs)
}

// TestRPCSplit: random-75m split over the local hive and two SSH hosts
// gives the unsplit run's greedy output byte for byte; the RPC servers
// listen on 127.0.0.1 only and are reached only through the forwards;
// after the keep-alive nothing of the split is left.
func TestRPCSplit(t *testing.T) {
	t.Parallel()
	const keepAlive = 8 * time.Second
	e, hosts := splitEnv(t, keepAlive)
	model := random75m(t)
	args := []string{"--model", model, "--temperature", "0", "--max-tokens", "64", "--raw", splitPrompt}

	t0 := time.Now()
	one := e.rbee(append([]string{"infer", "--hive", "localhost"}, args...)...)
	if one.code != 0 || one.stdout == "" {
		t.Fatalf("unsplit run: exit %d %q\n%s", one.code, one.stdout, one.stderr)
	}
	t.Logf("unsplit run: %s", time.Since(t0).Round(time.Millisecond))
	// The same again, warm: the worker reuses its cached prompt and decodes
	// only the last prompt token, a batch of one instead of the whole
	// prompt; the float sums come out in another order and, on a random
	// model whose logits are nearly flat, may pick other tokens. A warm
	// split is compared with this, like with like.
	oneWarm := e.rbee(append([]string{"infer", "--hive", "localhost"}, args...)...)
	if oneWarm.code != 0 || !strings.Contains(oneWarm.stderr, "no spawn") {
		t.Fatalf("warm unsplit run: exit %d %q\n%s", oneWarm.code, oneWarm.stdout, oneWarm.stderr)
	}

	t0 = time.Now()
	// h1 runs the main worker (named first, the same room as the others):
	// its forwards are SSH remote forwards on its loopback, to the local
	// hive's RPC server through the queen, and to h2's inside SSH.
	sp := e.rbee(append([]string{"infer", "--split", "h1,localhost,h2", "--explain"}, args...)...)
	t.Logf("split run (%s):\n%s", time.Since(t0).Round(time.Millisecond), sp.stderr)
	if sp.code != 0 {
		t.Fatalf("split run: exit %d\n%s", sp.code, sp.stderr)
	}
	if sp.stdout != one.stdout {
		t.Errorf("split output differs from the unsplit one:\nsplit   %q\nunsplit %q", sp.stdout, one.stdout)
	}
	inOrder(t, sp.stderr, "split across 3 hives", "h1/cpu (main worker)", "RPC server", "forward 127.0.0.1:", "hive h1's 127.0.0.1 (an SSH remote forward)", "inside SSH", "is ready")
	checkIsolated(t, e, hosts)
	checkPlacement(t, e, hosts, sp.stderr)
	// Another local user reaches none of it: the worker's forwards (on
	// h1's loopback, which every user reaches) close its connections
	// unanswered, and the owner's next job runs as before.
	_, eps := splitWorker(e, hosts)
	for _, ep := range eps {
		if out, code := asUser(t, 65534, 65534, "curl", "-s", "-m", "5", "http://"+ep+"/"); code == 0 || out != "" {
			t.Errorf("uid 65534 through the forward %s: curl exit %d %q, want its connection closed", ep, code, out)
		}
	}

	// Warm: the same split again reuses the worker.
	again := e.rbee(append([]string{"infer", "--split", "h2,h1,localhost"}, args...)...)
	if again.code != 0 || !strings.Contains(again.stderr, "no spawn") {
		t.Errorf("warm split run: exit %d %q\n%s", again.code, again.stdout, again.stderr)
	}
	if again.stdout != oneWarm.stdout {
		t.Errorf("warm split output differs from the warm unsplit one:\nsplit   %q\nunsplit %q", again.stdout, oneWarm.stdout)
	}

	// After the keep-alive: no RPC server, no split worker, anywhere.
	deadline := time.Now().Add(keepAlive + 30*time.Second)
	for {
		servers := rpcServers(e, hosts)
		wpid, _ := splitWorker(e, hosts)
		if len(servers) == 0 && wpid == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the keep-alive: RPC servers %v and split worker %d still run", servers, wpid)
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.stopQueen()
}

// TestRPCSplitLostHost: killing one host's RPC server mid-stream fails the
// job with exit 6 naming that hive within seconds; the agents and the
// other workers are untouched; the next split without it succeeds.
func TestRPCSplitLostHost(t *testing.T) {
	t.Parallel()
	lostSplit(t, "RPC server", func(t *testing.T, h *sshtest.Host, rpcServer int) {
		signal(t, rpcServer, syscall.SIGKILL)
	})
}

// TestRPCSplitStalledHost: an RPC server that stops answering mid-stream
// (kill -STOP: its process and connections stay) fails the job within the
// stall bound, naming the hive, instead of hanging it for good.
func TestRPCSplitStalledHost(t *testing.T) {
	t.Parallel()
	lostSplit(t, "RPC server sent nothing", func(t *testing.T, h *sshtest.Host, rpcServer int) {
		signal(t, rpcServer, syscall.SIGSTOP)
	}, "RBEE_RPC_STALL=8s") // well above a busy machine's pauses while the model loads over RPC
}

// TestRPCSplitLostLink: the SSH connection to an RPC host breaking
// mid-stream (its sshd session killed) does the same, and the host's
// agent stops its RPC server when the lease's request breaks.
func TestRPCSplitLostLink(t *testing.T) {
	t.Parallel()
	lostSplit(t, "SSH connection", func(t *testing.T, h *sshtest.Host, _ int) {
		var sessions []int
		for _, name := range []string{"sshd", "sshd-session"} {
			sessions = append(sessions, hostProcs(h.UID, name)...)
		}
		if len(sessions) == 0 {
			t.Fatal("no sshd session of the host's user to kill")
		}
		for _, pid := range sessions {
			signal(t, pid, syscall.SIGKILL)
		}
	})
}

// lostSplit runs a split over the local hive and h1, h2 with an ordinary
// worker on each, breaks a remote RPC hive with kill mid-stream, and
// checks the failure and what is left: every agent (the victim's too:
// it runs detached) and every other worker untouched, the split's remains
// gone, the next split without the victim served.
func lostSplit(t *testing.T, cause string, kill func(t *testing.T, h *sshtest.Host, rpcServer int), vars ...string) {
	e, hosts := splitEnv(t, time.Minute, vars...)
	model := random75m(t)
	// An ordinary worker on every hive, which the loss must not touch.
	bystanders := map[string]int{}
	for _, h := range []string{"localhost", "h1", "h2"} {
		r := e.rbee("infer", "--hive", h, "--model", alphabet, "--temperature", "0", "abc")
		if r.code != 0 || r.stdout != alphabetRest+"\n" {
			t.Fatalf("infer on %s: exit %d %q\n%s", h, r.code, r.stdout, r.stderr)
		}
	}
	agents := map[string][]int{"h1": hostProcs(hosts[0].UID, "rbee-hive"), "h2": hostProcs(hosts[1].UID, "rbee-hive")}
	for _, pid := range e.procs() {
		switch comm(pid) {
		case "rbee-hive":
			agents["localhost"] = append(agents["localhost"], pid)
		case "rbee-worker":
			bystanders["localhost"] = pid
		}
	}
	for i, h := range hosts {
		if ps := hostProcs(h.UID, "rbee-worker"); len(ps) == 1 {
			bystanders[fmt.Sprintf("h%d", i+1)] = ps[0]
		}
	}
	if len(bystanders) != 3 || len(agents["localhost"]) != 1 {
		t.Fatalf("bystander workers %v, agents %v", bystanders, agents)
	}

	cmd, out, stderr := e.start("infer", "--split", "localhost,h1,h2", "--model", model, "--temperature", "0", "--max-tokens", "1500", "--raw", splitPrompt)
	if _, err := out.ReadByte(); err != nil { // the first token: the split works
		_ = cmd.Wait()
		t.Fatalf("no token from the split: %v\n%s", err, stderr.String())
	}
	// The victim: a remote hive serving RPC (the main hive serves none).
	servers := rpcServers(e, hosts)
	victim := ""
	for _, h := range []string{"h1", "h2"} {
		if len(servers[h]) == 1 {
			victim = h
			break
		}
	}
	if victim == "" {
		t.Fatalf("no remote hive serves RPC: %v", servers)
	}
	killed := time.Now()
	kill(t, hosts[victim[1]-'1'], servers[victim][0])
	done := make(chan error, 1)
	go func() {
		_, _ = out.WriteTo(discard{})
		done <- cmd.Wait()
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the job still runs 30s after hive %s's RPC server was killed\n%s", victim, stderr.String())
	}
	took := time.Since(killed)
	code := cmd.ProcessState.ExitCode()
	msg := stderr.String()
	t.Logf("exit %d after %s:\n%s", code, took.Round(time.Millisecond), msg)
	if code != rbee.ExitWorker || !strings.Contains(msg, "lost hive "+victim+": the "+cause) {
		t.Errorf("exit %d, want %d naming hive %s and its %s", code, rbee.ExitWorker, victim, cause)
	}
	if took > 25*time.Second { // the stall bound (8 s) and a busy machine's slack: not minutes
		t.Errorf("the failure took %s, want seconds", took)
	}
	// Untouched: every agent, every bystander worker.
	for h, ps := range agents {
		for _, pid := range ps {
			if syscall.Kill(pid, 0) != nil {
				t.Errorf("hive %s's agent (pid %d) is gone", h, pid)
			}
		}
	}
	for h, pid := range bystanders {
		if syscall.Kill(pid, 0) != nil {
			t.Errorf("hive %s's other worker (pid %d) is gone", h, pid)
		}
	}
	// The split's remains go: its worker, the other RPC server.
	waitFor(t, "the split's worker and RPC servers to go", func() bool {
		wpid, _ := splitWorker(e, hosts)
		return wpid == 0 && len(rpcServers(e, hosts)) == 0
	})
	// The next job plans again without it.
	rest := []string{"localhost", "h1", "h2"}
	rest = slices.DeleteFunc(rest, func(h string) bool { return h == victim })
	r := e.rbee("infer", "--split", strings.Join(rest, ","), "--model", model, "--temperature", "0", "--max-tokens", "16", "--raw", splitPrompt)
	if r.code != 0 || r.stdout == "" {
		t.Errorf("the next split without %s: exit %d %q\n%s", victim, r.code, r.stdout, r.stderr)
	}
	e.stopQueen()
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// TestRPCSplitNeedsRPCEngine: on the engine rbee installs by itself (no
// RPC backend) a split is refused before any room is reserved, with the
// one command per hive that makes it work; after those commands, the same
// split runs.
func TestRPCSplitNeedsRPCEngine(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	e.vars = append(e.vars, "RBEE_ENGINE="+plainEngine(t))
	if r := e.addHive(hosts[0], "h1"); r.code != 0 {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	args := []string{"infer", "--split", "localhost,h1", "--model", alphabet, "--temperature", "0", "abc"}
	r := e.rbee(args...)
	if r.code != rbee.ExitCodeFor(rbee.CodeEngine) || !strings.Contains(r.stderr, "hives localhost, h1 have no engine with llama.cpp's RPC backend") {
		t.Fatalf("split on plain engines: exit %d, want %d naming both hives\n%s", r.code, rbee.ExitCodeFor(rbee.CodeEngine), r.stderr)
	}
	if strings.Contains(r.stderr, "reserved") {
		t.Errorf("room was reserved before the refusal:\n%s", r.stderr)
	}
	for _, h := range []string{"localhost", "h1"} {
		if cmd := "rbee worker install --hive " + h + " DIR"; !strings.Contains(r.stderr, cmd) {
			t.Errorf("the hint lacks %q:\n%s", cmd, r.stderr)
		}
	}
	if w := e.rbee("worker", "install", "--hive", "localhost", engineDir); w.code != 0 {
		t.Fatalf("worker install on localhost: exit %d\n%s", w.code, w.stderr)
	}
	// Now this machine has a bundle with it: the hint names its directory.
	r = e.rbee(args...)
	cmd := regexp.MustCompile(`rbee worker install --hive h1 (/\S+)`).FindStringSubmatch(r.stderr)
	if r.code == 0 || !strings.Contains(r.stderr, "hive h1 has no engine") || cmd == nil {
		t.Fatalf("split with h1 on the plain engine: exit %d, want the hint with localhost's bundle\n%s", r.code, r.stderr)
	}
	if w := e.rbee("worker", "install", "--hive", "h1", cmd[1]); w.code != 0 {
		t.Fatalf("the hint's command: exit %d\n%s", w.code, w.stderr)
	}
	if r = e.rbee(args...); r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("split after the installs: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	e.stopQueen()
}

// TestDoorSplitsAcrossHosts: a deployment whose model no single device of
// its hives holds is served through the door by one worker split across
// two hosts (llama.cpp's RPC), as rbee infer serves it. The hosts' GPUs
// are fakes (NVML) each with 70% of the room the model needs: the split
// is planned on them; the processes run on the CPU bundle, for real.
func TestDoorSplitsAcrossHosts(t *testing.T) {
	t.Parallel()
	needRPC(t)
	model := random75m(t)
	// What the model needs, as the queen estimates it, from a plain run.
	e := newEnv(t, "RBEE_WORKER_THREADS=1")
	r := e.rbee("infer", "--hive", "localhost", "--device", "cpu", "--explain", "--model", model, "--max-tokens", "1", "hello")
	m := regexp.MustCompile(`needs about ([0-9.]+) MiB`).FindStringSubmatch(r.stderr)
	if r.code != 0 || m == nil {
		t.Fatalf("infer to learn the need: exit %d\n%s", r.code, r.stderr)
	}
	e.stopQueen()
	need, _ := strconv.ParseFloat(m[1], 64)
	gpuMiB := int(need * 0.7)

	// The hosts' agents load the fake NVML (from a directory their users
	// reach) with one GPU of gpuMiB each.
	dir, err := os.MkdirTemp("", "rbee-fake-nvml-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	lib, err := os.ReadFile(fakeNVML)
	if err != nil {
		t.Fatal(err)
	}
	nvml := filepath.Join(dir, filepath.Base(fakeNVML))
	if err := os.WriteFile(nvml, lib, 0o755); err != nil {
		t.Fatal(err)
	}
	gpus := gputest.GPUsEnv(gputest.FakeGPU{Name: "NVIDIA Fake", TotalMiB: gpuMiB, FreeMiB: gpuMiB, ComputeCap: "8.6"})
	hosts := sshtest.Start(t, 2, sshtest.Options{ExtraConfig: "PermitUserEnvironment yes\n"})
	for _, h := range hosts {
		env := "RBEE_NVML_LIBRARY=" + nvml + "\n" + gputest.EnvGPUs + "=" + gpus + "\n"
		if err := os.WriteFile(filepath.Join(h.Home, ".ssh", "environment"), []byte(env), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	e = newEnv(t, "RBEE_WORKER_THREADS=1", "RBEE_INVENTORY="+filepath.Join(t.TempDir(), "inventory.toml"))
	for i, h := range hosts {
		if r := e.addHive(h, fmt.Sprintf("h%d", i+1)); r.code != 0 {
			t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
		}
	}
	// The model reaches h1 (a CPU run there), then the deployment keeps
	// it on the hosts' GPUs.
	if r := e.rbee("infer", "--hive", "h1", "--device", "cpu", "--model", model, "--max-tokens", "1", "hello"); r.code != 0 {
		t.Fatalf("infer on h1: exit %d\n%s", r.code, r.stderr)
	}
	if r := e.rbee("model", "deploy", model, "--name", "big", "--hive", "h1,h2", "--device", "gpu0"); r.code != 0 {
		t.Fatalf("model deploy: exit %d\n%s", r.code, r.stderr)
	}
	c := openai.NewClient(option.WithBaseURL("http://"+e.queen+"/v1/"), option.WithAPIKey("unused-on-loopback"), option.WithMaxRetries(0))
	got, err := c.Completions.New(context.Background(), openai.CompletionNewParams{
		Model: "big", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("hello")}, Temperature: openai.Float(0), MaxTokens: openai.Int(8),
	})
	if err != nil || len(got.Choices) != 1 || got.Usage.CompletionTokens == 0 {
		t.Fatalf("door completion of the split deployment: %v %+v", err, got)
	}
	pid, eps := splitWorker(e, hosts)
	servers := rpcServers(e, hosts)
	if pid == 0 || len(eps) != 1 || len(servers) != 1 {
		t.Fatalf("split worker %d with endpoints %v, RPC servers %v; want one worker reaching one RPC server on the other host", pid, eps, servers)
	}
	ds := e.deployments(t)
	if len(ds) != 1 || len(ds[0].Workers) != 1 || ds[0].Workers[0].Device != "gpu0" {
		t.Errorf("deployments = %+v, want one replica on gpu0", ds)
	}
	e.stopQueen()
}
