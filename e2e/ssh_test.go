package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rbee-dev/rbee/internal/testenv"
	"github.com/rbee-dev/rbee/queenapi"

	"testing"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/download/hubtest"
	"github.com/rbee-dev/rbee/internal/sshtest"
)

// sshEnv is an env whose keeper knows SSH hosts from the harness.
func sshEnv(t *testing.T, n int, opt sshtest.Options) (*env, []*sshtest.Host) {
	t.Helper()
	if err := sshtest.Available(); err != nil {
		t.Fatalf("SSH hosts cannot run here: %v (.ci/run installs openssh-server)", err)
	}
	hosts := sshtest.Start(t, n, opt)
	e := newEnv(t)
	e.vars = append(e.vars, "RBEE_INVENTORY="+filepath.Join(e.home, "inventory.toml"))
	return e, hosts
}

func target(h *sshtest.Host) string { return h.User + "@" + h.Addr }

// addHive runs rbee hive add for h as hive name.
func (e *env) addHive(h *sshtest.Host, name string) result {
	e.t.Helper()
	return e.rbee("hive", "add", target(h), "--name", name, "--identity", h.ClientKey, "--accept-new-host-key")
}

func TestSSHHivesEndToEnd(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 3, sshtest.Options{})
	for i, h := range hosts {
		name := fmt.Sprintf("h%d", i+1)
		r := e.addHive(h, name)
		if r.code != 0 || !strings.Contains(r.stdout, "hive "+name+" is ready") {
			t.Fatalf("hive add %s: exit %d\n%s\n%s", name, r.code, r.stdout, r.stderr)
		}
		inOrder(t, r.stderr, "connecting to hive "+name, "uploaded rbee-hive, rbee-worker, engine", "started rbee-hive", "has 1 device(s): cpu", "added to")
		// Twice is harmless.
		if r := e.addHive(h, name); r.code != 0 || strings.Contains(r.stderr, "uploaded") {
			t.Fatalf("second hive add %s: exit %d\n%s", name, r.code, r.stderr)
		}
	}
	r := e.rbee("up")
	if r.code != 0 {
		t.Fatalf("rbee up: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for i := range hosts {
		if !strings.Contains(r.stdout, fmt.Sprintf("h%d: up: rbee-hive", i+1)) {
			t.Errorf("rbee up lacks the line for h%d:\n%s", i+1, r.stdout)
		}
	}
	for i, h := range hosts {
		name := fmt.Sprintf("h%d", i+1)
		r := e.rbee("infer", "--hive", name, "--model", alphabet, "--temperature", "0", "abc")
		if r.code != 0 || r.stdout != alphabetRest+"\n" {
			t.Fatalf("infer on %s: exit %d %q\n%s", name, r.code, r.stdout, r.stderr)
		}
		inOrder(t, r.stderr, "pushing alphabet.gguf", "starting a worker", "done:")
		// The worker runs on the host, as the host's user.
		if len(hostProcs(h.UID, "rbee-worker")) == 0 {
			t.Errorf("no rbee-worker process of %s on host %s", h.User, name)
		}
		// Security: the agent's socket is 0600 and no process of the host
		// user listens on TCP.
		st, err := os.Stat(filepath.Join(h.Home, ".rbee", "run", "hive.sock"))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("agent socket on %s: %v mode %v, want 0600", name, err, st.Mode())
		}
		if ls := tcpListeners(t, h.UID); len(ls) > 0 {
			t.Errorf("host user %s listens on TCP: %v", h.User, ls)
		}
	}
	var ls []queenapi.HiveInfo
	r = e.rbee("hive", "ls", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &ls); err != nil || len(ls) < 3 {
		t.Fatalf("hive ls --json: %v %q", err, r.stdout)
	}
	for _, h := range ls {
		if h.Kind == "ssh" && (h.Status != "online" || h.Version == "" || len(h.Devices) == 0) {
			t.Errorf("hive ls: %+v, want online with agent version and devices", h)
		}
	}
	if r := e.rbee("hive", "status", "h1"); r.code != 0 || !strings.Contains(r.stdout, "online") || !strings.Contains(r.stdout, "worker w-") {
		t.Errorf("hive status h1: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := e.rbee("hive", "logs", "h1"); r.code != 0 || !strings.Contains(r.stdout, "hive agent up") {
		t.Errorf("hive logs h1: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := e.rbee("hive", "rm", "h3", "--purge"); r.code != 0 {
		t.Fatalf("hive rm h3 --purge: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(hosts[2].Home, ".rbee")); !os.IsNotExist(err) {
		t.Errorf("--purge left ~/.rbee on the host: %v", err)
	}
	if left := hostProcs(hosts[2].UID, "rbee-hive"); len(left) > 0 {
		t.Errorf("--purge left the agent running: %v", left)
	}
	inv, _ := os.ReadFile(filepath.Join(e.home, "inventory.toml"))
	if strings.Contains(string(inv), `"h3"`) || !strings.Contains(string(inv), `"h1"`) {
		t.Errorf("inventory after rm h3:\n%s", inv)
	}
	if r := e.rbee("infer", "--hive", "h3", "--model", alphabet, "abc"); r.code != rbee.ExitNotFound {
		t.Errorf("infer on a removed hive: exit %d, want %d\n%s", r.code, rbee.ExitNotFound, r.stderr)
	}
	e.stopQueen()
}

// tcpListeners lists TCP sockets in LISTEN state owned by uid.
func tcpListeners(t *testing.T, uid int) []string {
	var out []string
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) > 7 && fs[3] == "0A" && fs[7] == strconv.Itoa(uid) {
				out = append(out, fs[1])
			}
		}
	}
	return out
}

func TestSSHRefusals(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 2, sshtest.Options{})
	h, other := hosts[0], hosts[1]
	marker := filepath.Join(e.home, "pwned")

	t.Run("unknown host key", func(t *testing.T) {
		r := e.rbee("hive", "add", target(h), "--name", "h1", "--identity", h.ClientKey)
		if r.code != rbee.ExitHive || !strings.Contains(r.stderr, "SHA256:") || !strings.Contains(r.stderr, "--accept-new-host-key") {
			t.Errorf("exit %d, want %d with the fingerprint and the flag to pass:\n%s", r.code, rbee.ExitHive, r.stderr)
		}
		if b, _ := os.ReadFile(filepath.Join(e.home, ".ssh", "known_hosts")); strings.Contains(string(b), h.Addr[:strings.LastIndex(h.Addr, ":")]) {
			t.Errorf("the unknown key was recorded:\n%s", b)
		}
	})
	t.Run("wrong client key", func(t *testing.T) {
		r := e.rbee("hive", "add", target(h), "--name", "h1", "--identity", other.ClientKey, "--accept-new-host-key")
		if r.code != rbee.ExitHive || !strings.Contains(r.stderr, "authorized_keys") {
			t.Errorf("exit %d, want %d with advice on authorized_keys:\n%s", r.code, rbee.ExitHive, r.stderr)
		}
	})
	t.Run("metacharacters in the host", func(t *testing.T) {
		for _, bad := range []string{"u@$(touch " + marker + ")", "u@`touch " + marker + "`", "u@h;touch " + marker} {
			r := e.rbee("hive", "add", bad, "--name", "bad", "--accept-new-host-key")
			if r.code != rbee.ExitUsage {
				t.Errorf("hive add %q: exit %d, want %d\n%s", bad, r.code, rbee.ExitUsage, r.stderr)
			}
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatal("a command in the host name ran")
		}
	})
	t.Run("metacharacters in the model path", func(t *testing.T) {
		if r := e.addHive(h, "h1"); r.code != 0 {
			t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
		}
		dir := t.TempDir()
		// No '/' may appear in a file name: "cd" goes to $HOME, local or remote.
		evil := filepath.Join(dir, "$(cd;touch pwned) `cd;touch pwned`; cd;touch pwned.gguf")
		data, _ := os.ReadFile(alphabet)
		if err := os.WriteFile(evil, data, 0o644); err != nil {
			t.Fatal(err)
		}
		r := e.rbee("infer", "--hive", "h1", "--model", evil, "--temperature", "0", "abc")
		if r.code != 0 || r.stdout != alphabetRest+"\n" {
			t.Fatalf("exit %d %q\n%s", r.code, r.stdout, r.stderr)
		}
		for _, m := range []string{marker, filepath.Join(h.Home, "pwned")} {
			if _, err := os.Stat(m); err == nil {
				t.Fatalf("a command in the model path ran: %s exists", m)
			}
		}
	})
	t.Run("changed host key", func(t *testing.T) {
		h.RotateHostKey(t)
		r := e.rbee("infer", "--hive", "h1", "--model", alphabet, "abc")
		if r.code != rbee.ExitHive || strings.Count(r.stderr, "SHA256:") < 2 {
			t.Errorf("exit %d, want %d naming both fingerprints:\n%s", r.code, rbee.ExitHive, r.stderr)
		}
		r = e.rbee("hive", "add", target(h), "--name", "h1", "--identity", h.ClientKey, "--accept-new-host-key")
		if r.code != rbee.ExitHive {
			t.Errorf("a changed key must be refused even with --accept-new-host-key: exit %d\n%s", r.code, r.stderr)
		}
	})
	e.stopQueen()
}

func TestSSHForwardingDisabledUsesBridge(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{NoForwarding: true})
	r := e.addHive(hosts[0], "h1")
	if r.code != 0 || !strings.Contains(r.stderr, "via bridge") {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	r = e.rbee("infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("infer through the bridge: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	e.stopQueen()
}

func TestSSHDKilledMidStream(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	h := hosts[0]
	if r := e.addHive(h, "h1"); r.code != 0 {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	cmd, errb := firstToken(t, e, "--hive", "h1", "hello")
	h.Kill()
	err := cmd.Wait()
	if code := exitCode(err); code != rbee.ExitHive {
		t.Fatalf("exit %d, want %d\n%s", code, rbee.ExitHive, errb.String())
	}
	if !strings.Contains(errb.String(), "hive h1") {
		t.Errorf("the error does not name the hive:\n%s", errb.String())
	}
	var ls []queenapi.HiveInfo
	r := e.rbee("hive", "ls", "--json")
	_ = json.Unmarshal([]byte(r.stdout), &ls)
	var h1 queenapi.HiveInfo
	for _, x := range ls {
		if x.Name == "h1" {
			h1 = x
		}
	}
	if h1.Status != "offline" || h1.Reason == "" {
		t.Errorf("hive h1 = %+v, want offline with a reason", h1)
	}
	r = e.rbee("infer", "--hive", "h1", "--model", longModel, "--max-tokens", "3", "hi")
	if r.code != rbee.ExitHive {
		t.Errorf("infer to a host without sshd: exit %d, want %d\n%s", r.code, rbee.ExitHive, r.stderr)
	}
	h.Restart(t)
	r = e.rbee("infer", "--hive", "h1", "--model", longModel, "--temperature", "0", "--max-tokens", "3", "hi")
	if r.code != 0 || !strings.Contains(r.stderr, "no spawn") {
		t.Errorf("after sshd is back the running worker should be used: exit %d\n%s", r.code, r.stderr)
	}
	e.stopQueen()
}

// TestSSHAgentUpgradeKeepsWorker: an older rbee installed the agent and
// started a worker; the current rbee replaces the agent gracefully and the
// worker, adopted, serves the next job warm.
func TestSSHAgentUpgradeKeepsWorker(t *testing.T) {
	t.Parallel()
	old, err := testenv.BuildAllVersion(filepath.Join(tmp, "old"), "0.0.9-old")
	if err != nil {
		t.Fatal(err)
	}
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	h := hosts[0]
	r := e.run(old.Rbee, "hive", "add", target(h), "--name", "h1", "--identity", h.ClientKey, "--accept-new-host-key")
	if r.code != 0 {
		t.Fatalf("old hive add: exit %d\n%s", r.code, r.stderr)
	}
	if r = e.run(old.Rbee, "infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 {
		t.Fatalf("old infer: exit %d\n%s", r.code, r.stderr)
	}
	before := hostProcs(h.UID, "rbee-worker")
	if len(before) != 1 {
		t.Fatalf("workers on the host before the upgrade: %v", before)
	}
	if r = e.run(old.Rbee, "queen", "stop"); r.code != 0 {
		t.Fatalf("old queen stop: exit %d\n%s", r.code, r.stderr)
	}

	r = e.rbee("infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("infer after upgrade: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	inOrder(t, r.stderr, "replacing rbee-hive 0.0.9-old", "its workers stay", "started rbee-hive", "no spawn")
	after := hostProcs(h.UID, "rbee-worker")
	if len(after) != 1 || after[0] != before[0] {
		t.Errorf("worker pids after the upgrade %v, want the same %v", after, before)
	}
	e.stopQueen()
}

// run runs another rbee binary (an older build) in this env.
func (e *env) run(bin string, args ...string) result {
	e.t.Helper()
	other := *e
	other.bin = bin
	return other.rbee(args...)
}

// TestSSHEngineInstallFromArchive installs the CPU engine bundle on a remote
// hive from the npm archive itself, and the next worker runs on it.
func TestSSHEngineInstallFromArchive(t *testing.T) {
	t.Parallel()
	root, err := testenv.Root()
	if err != nil {
		t.Fatal(err)
	}
	archives, _ := filepath.Glob(filepath.Join(root, ".rbee-dev", "cache", "node-llama-cpp-linux-x64-*.tgz"))
	if len(archives) == 0 {
		t.Fatal("no engine archive in .rbee-dev/cache: run `make engine`")
	}
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	if r := e.addHive(hosts[0], "h1"); r.code != 0 {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	r := e.rbee("worker", "install", "--hive", "h1", archives[0])
	if r.code != 0 || !strings.Contains(r.stderr, "engine engine-llama.cpp-v0.5.0-cpu installed") {
		t.Fatalf("worker install: exit %d\n%s", r.code, r.stderr)
	}
	r = e.rbee("worker", "ls", "--hive", "h1", "--json")
	if !strings.Contains(r.stdout, `"engine-llama.cpp-v0.5.0-cpu"`) || !strings.Contains(r.stdout, filepath.Join(".rbee", "engines", "v0.5.0-cpu")) {
		t.Fatalf("worker ls: %s", r.stdout)
	}
	r = e.rbee("infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" || !strings.Contains(r.stderr, "engine v0.5.0-cpu") {
		t.Fatalf("infer on the installed engine: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	e.stopQueen()
}

// hostProcs lists the live (not zombie) processes named name ("" = any) that run as
// uid: the host's processes, read from /proc (the hosts share this kernel).
func hostProcs(uid int, name string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		status, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		var comm, state string
		var puid int
		for _, line := range strings.Split(string(status), "\n") {
			switch {
			case strings.HasPrefix(line, "Name:"):
				comm = strings.TrimSpace(strings.TrimPrefix(line, "Name:"))
			case strings.HasPrefix(line, "State:"):
				state = strings.TrimSpace(strings.TrimPrefix(line, "State:"))
			case strings.HasPrefix(line, "Uid:"):
				fmt.Sscanf(strings.TrimPrefix(line, "Uid:"), "%d", &puid)
			}
		}
		if (name == "" || comm == name) && puid == uid && !strings.HasPrefix(state, "Z") {
			out = append(out, pid)
		}
	}
	return out
}

// TestSSHHiveToHiveCopy: a model one hive downloaded is copied to the next
// over the queen's SSH connections, not downloaded again.
func TestSSHHiveToHiveCopy(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(longModel)
	if err != nil {
		t.Fatal(err)
	}
	hub := hubtest.New(t, map[string][]byte{"rbee/tiny/m-Q8_0.gguf": data})
	e, hosts := sshEnv(t, 2, sshtest.Options{})
	e.vars = append(e.vars, "HF_ENDPOINT="+hub.URL)
	for i, h := range hosts {
		if r := e.addHive(h, fmt.Sprintf("h%d", i+1)); r.code != 0 {
			t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
		}
	}
	if r := e.rbee("model", "pull", "--hive", "h1", "hf:rbee/tiny/m-Q8_0.gguf"); r.code != 0 {
		t.Fatalf("pull on h1: exit %d\n%s", r.code, r.stderr)
	}
	gets := hub.BodyGETs("rbee/tiny/m-Q8_0.gguf")
	r := e.rbee("model", "pull", "--hive", "h2", "hf:rbee/tiny/m-Q8_0.gguf")
	if r.code != 0 || !strings.Contains(r.stderr, "hive h1 already holds hf:rbee/tiny/m-Q8_0.gguf: copying it to hive h2") {
		t.Fatalf("pull on h2: exit %d\n%s", r.code, r.stderr)
	}
	if n := hub.BodyGETs("rbee/tiny/m-Q8_0.gguf"); n != gets {
		t.Errorf("the hub served the body again (%d -> %d GETs)", gets, n)
	}
	r = e.rbee("infer", "--hive", "h2", "--model", "hf:rbee/tiny/m-Q8_0.gguf", "--temperature", "0", "--max-tokens", "3", "hi")
	if r.code != 0 || !strings.Contains(r.stderr, "already on hive h2") {
		t.Fatalf("infer on h2: exit %d\n%s", r.code, r.stderr)
	}
	e.stopQueen()
}

// TestFleetScheduling: a job that names no hive is planned across the
// whole inventory — a warm worker anywhere wins; a local file stays local;
// an unreachable hive is left out, not waited on.
func TestFleetScheduling(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 3, sshtest.Options{})
	for i, h := range hosts {
		if r := e.addHive(h, fmt.Sprintf("h%d", i+1)); r.code != 0 {
			t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
		}
	}
	if r := e.rbee("infer", "--hive", "h2", "--model", longModel, "--temperature", "0", "--max-tokens", "3", "hi"); r.code != 0 {
		t.Fatalf("infer on h2: exit %d\n%s", r.code, r.stderr)
	}
	hosts[2].Kill() // h3 goes away
	r := e.rbee("infer", "--explain", "--model", longModel, "--temperature", "0", "--max-tokens", "3", "hi")
	if r.code != 0 {
		t.Fatalf("fleet job: exit %d\n%s", r.code, r.stderr)
	}
	inOrder(t, r.stderr, "hive h3 is unreachable, left out", "fleet: hive h2, warm worker", "no spawn")
	r = e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" || !strings.Contains(r.stderr, "fleet: hive localhost") {
		t.Fatalf("a local file should run locally: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	e.stopQueen()
}

// TestSSHParallelFirstUse: jobs and pulls that bring the same model to a
// host at once share one push (each its own raced on the host's partial
// file: three of four failed); every one succeeds.
func TestSSHParallelFirstUse(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	if r := e.addHive(hosts[0], "h1"); r.code != 0 {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	var wg sync.WaitGroup
	results := make([]result, 6)
	for i := range results {
		wg.Go(func() {
			if i < 4 {
				results[i] = e.rbee("infer", "--hive", "h1", "--model", longModel, "--temperature", "0", "--max-tokens", "2", "hi")
			} else {
				results[i] = e.rbee("model", "pull", longModel, "--hive", "h1")
			}
		})
	}
	wg.Wait()
	pushes := 0
	for i, r := range results {
		if r.code != 0 {
			t.Errorf("parallel first use %d: exit %d\n%s", i, r.code, r.stderr)
		}
		pushes += strings.Count(r.stderr, "] pushing random-3m.gguf")
	}
	if pushes == 0 {
		t.Errorf("no push of the model narrated for 6 parallel first uses")
	}
	e.stopQueen()
}

// TestDoorSeesReconnectedHive: the moment rbee up has brought a host back,
// the door serves the models it holds (its snapshots of the fleet were
// taken while the host was away: for up to two refreshes they said the
// model was on no hive).
func TestDoorSeesReconnectedHive(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	h := hosts[0]
	if r := e.addHive(h, "h1"); r.code != 0 {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	if r := e.rbee("model", "pull", longModel, "--hive", "h1", "--alias", "tiny"); r.code != 0 {
		t.Fatalf("model pull: exit %d\n%s", r.code, r.stderr)
	}
	models := func() string {
		t.Helper()
		resp, err := http.Get("http://" + e.queen + "/v1/models")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if m := models(); !strings.Contains(m, `"tiny"`) {
		t.Fatalf("models before: %s", m)
	}
	h.Kill()
	waitFor(t, "the door drops h1's models", func() bool { return !strings.Contains(models(), `"tiny"`) })
	h.Restart(t)
	if r := e.rbee("up"); r.code != 0 {
		t.Fatalf("up: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if m := models(); !strings.Contains(m, `"tiny"`) {
		t.Errorf("right after rbee up, the door does not list h1's model: %s", m)
	}
	e.stopQueen()
}

// TestSSHSameAccountTwice: the account a hive reaches, added again under
// another name, is refused (its agent answers with the first name): two
// hives on one install would share its workers, and purging one would
// wipe the other's.
func TestSSHSameAccountTwice(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	h := hosts[0]
	if r := e.addHive(h, "h1"); r.code != 0 {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	r := e.addHive(h, "again")
	if r.code != rbee.ExitUsage || !strings.Contains(r.stderr, "the account hive h1 already reaches") {
		t.Errorf("the same account as a second hive: exit %d, want %d naming h1\n%s", r.code, rbee.ExitUsage, r.stderr)
	}
	if r := e.rbee("hive", "ls"); strings.Contains(r.stdout, "again") {
		t.Errorf("the refused hive was recorded:\n%s", r.stdout)
	}
	e.stopQueen()
}

// TestSSHEngineNeverClobbered: the brick. The queen gives a host
// the plain engine; the RPC build (what the --split hint says to install)
// goes over it; the host's agent dies (a reboot). The next job's install
// keeps the RPC build — it holds every file of the plain one — instead of
// pushing the plain manifest over it (the agent then refused its engine and
// every job failed until someone removed the directory by hand).
func TestSSHEngineNeverClobbered(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	e.vars = append(e.vars, "RBEE_ENGINE="+plainEngine(t)) // what the queen gives hosts
	h := hosts[0]
	if r := e.addHive(h, "h1"); r.code != 0 {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	if r := e.rbee("worker", "install", "--hive", "h1", engineDir); r.code != 0 { // the RPC build
		t.Fatalf("worker install of the RPC build: exit %d\n%s", r.code, r.stderr)
	}
	for _, pid := range hostProcs(h.UID, "rbee-hive") {
		signal(t, pid, syscall.SIGKILL)
	}
	r := e.rbee("infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("a job after the agent died: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "already holds every file of engine") {
		t.Errorf("the host's RPC build was not kept:\n%s", r.stderr)
	}
	e.stopQueen()
}

// TestSSHPurgeWithoutAgent: hive rm --purge works on a host whose agent
// cannot start (the state it needs is broken): over SSH alone it stops
// what runs from ~/.rbee and removes it.
func TestSSHPurgeWithoutAgent(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	h := hosts[0]
	if r := e.addHive(h, "h1"); r.code != 0 {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	if r := e.rbee("infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 {
		t.Fatalf("infer: exit %d\n%s", r.code, r.stderr)
	}
	e.stopQueen() // the next queen must connect afresh
	for _, pid := range hostProcs(h.UID, "rbee-hive") {
		signal(t, pid, syscall.SIGKILL)
	}
	// The agent can start no more: its run directory is a file.
	run := filepath.Join(h.Home, ".rbee", "run")
	if err := os.RemoveAll(run); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(run, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := e.rbee("infer", "--hive", "h1", "--model", alphabet, "abc"); r.code == 0 {
		t.Fatalf("infer with a broken host: exit 0, want a failure\n%s", r.stderr)
	}
	r := e.rbee("hive", "rm", "h1", "--purge")
	if r.code != 0 {
		t.Fatalf("hive rm --purge without an agent: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(h.Home, ".rbee")); !os.IsNotExist(err) {
		t.Errorf("--purge left ~/.rbee on the host: %v", err)
	}
	if left := append(hostProcs(h.UID, "rbee-worker"), hostProcs(h.UID, "rbee-hive")...); len(left) > 0 {
		t.Errorf("--purge left rbee processes running: %v", left)
	}
	e.stopQueen()
}

// TestSSHAgentCannotStart: a host whose agent exits as it starts (its run
// directory is a file) fails the job with the agent's own reason and where
// to look, at once — not "did not answer within 5s" — and rbee doctor
// reports that reason as the agent's last error.
func TestSSHAgentCannotStart(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	h := hosts[0]
	if r := e.addHive(h, "h1"); r.code != 0 {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	e.stopQueen() // the next queen connects afresh
	for _, pid := range hostProcs(h.UID, "rbee-hive") {
		signal(t, pid, syscall.SIGKILL)
	}
	run := filepath.Join(h.Home, ".rbee", "run")
	if err := os.RemoveAll(run); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(run, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r := e.rbee("infer", "--hive", "h1", "--model", alphabet, "abc")
	if r.code != rbee.ExitHive || !strings.Contains(r.stderr, "rbee-hive: listen: mkdir "+run+": not a directory") ||
		!strings.Contains(r.stderr, "hint: ") || strings.Contains(r.stderr, "did not answer") {
		t.Errorf("infer on a host whose agent cannot start: exit %d, want %d with the agent's reason and a hint:\n%s", r.code, rbee.ExitHive, r.stderr)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("infer on a host whose agent cannot start took %s, want it told at once", took)
	}

	// rbee doctor says why, and checks the host's engine bundles: one
	// changed since it was pushed fails, with the command that fixes it.
	// The queen goes first: its redials would push the file back (doctor
	// needs no queen).
	e.stopQueen()
	libs, _ := filepath.Glob(filepath.Join(h.Home, ".rbee", "engines", "*", "libllama.v*.so"))
	if len(libs) == 0 {
		t.Fatal("no engine bundle on the host")
	}
	b, err := os.ReadFile(libs[0])
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 0xff
	if err := os.WriteFile(libs[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	r = e.rbee("doctor", "--hive", "h1")
	if r.code != rbee.ExitError || !regexp.MustCompile(`fail\s+agent\s+rbee-hive is not running: its last start failed: rbee-hive: listen: mkdir .*: not a directory`).MatchString(r.stdout) ||
		!regexp.MustCompile(`fail\s+engines\s+bundle .*`+regexp.QuoteMeta(filepath.Base(libs[0]))+`: sha256 mismatch`).MatchString(r.stdout) ||
		!strings.Contains(r.stdout, "hint: rbee worker install --hive h1 ") {
		t.Errorf("doctor: exit %d, want %d with the agent's reason and the changed engine file:\n%s\n%s", r.code, rbee.ExitError, r.stdout, r.stderr)
	}
	e.stopQueen()
}

// TestSSHChannelTimeout: a host whose sshd closes idle channels
// (ChannelTimeout *=2s, OpenSSH 9.2+) still takes model pushes after an idle
// spell (every push failed "connection lost", while other jobs worked).
func TestSSHChannelTimeout(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{ExtraConfig: "ChannelTimeout *=2s"})
	if r := e.addHive(hosts[0], "h1"); r.code != 0 {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	time.Sleep(4 * time.Second) // idle past the server's channel timeout: no event to wait for
	if r := e.rbee("model", "pull", longModel, "--hive", "h1"); r.code != 0 {
		t.Fatalf("model pull after an idle spell: exit %d\n%s", r.code, r.stderr)
	}
	if r := e.rbee("infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("infer: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	e.stopQueen()
}
