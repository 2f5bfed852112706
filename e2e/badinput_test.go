package e2e

import (
	"debug/elf"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/bundle"
	"github.com/rbee-dev/rbee/download/hubtest"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/internal/sshtest"
	"github.com/rbee-dev/rbee/internal/testenv"
)

// proxy6 forwards [::1]:PORT to addr, so that a host of the harness (which
// listens on 127.0.0.1) is reached by an IPv6 address. It is closed with
// the test.
func proxy6(t *testing.T, addr string) string {
	t.Helper()
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				up, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{})
				go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); close(done) }()
				io.Copy(c, up)
				c.(*net.TCPConn).CloseWrite()
				<-done
			}()
		}
	}()
	return l.Addr().String()
}

// TestBadInputHosts: host strings that used to be misread are refused
// before anything starts, with what to write instead; a bracketed IPv6
// address with a port works; localhost is reserved for this machine.
func TestBadInputHosts(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	h := hosts[0]
	_, port, _ := net.SplitHostPort(h.Addr)

	for _, tt := range []struct {
		target, want string
		extra        []string
	}{
		{target: "me@127.0.0.1:0", want: "port 0 is out of range: use 1-65535"},
		{target: "me@127.0.0.1:99999", want: "port 99999 is out of range"},
		{target: "me@127.0.0.1:", want: `port "" is not a number`},
		{target: "@127.0.0.1", want: "nothing before '@'"},
		{target: "me@", want: "no host: write USER@HOST[:PORT]"},
		{target: "me@[::1", want: "no ']'"},
		{target: "me@[127.0.0.1]:22", want: "brackets are for IPv6 only"},
		{target: "me@::1:2222:zz", want: "write an IPv6 address with a port as [ADDRESS]:PORT"},
		{target: target(h), extra: []string{"--name", "localhost"}, want: "hive name localhost is reserved"},
		{target: "me@localhost", want: "hive name localhost is reserved"},
	} {
		t.Run(tt.target+strings.Join(tt.extra, " "), func(t *testing.T) {
			args := append([]string{"hive", "add", tt.target, "--identity", h.ClientKey, "--accept-new-host-key"}, tt.extra...)
			r := e.rbee(args...)
			if r.code != rbee.ExitUsage || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("hive add %s: exit %d, want %d with %q:\n%s", tt.target, r.code, rbee.ExitUsage, tt.want, r.stderr)
			}
			if strings.Contains(r.stderr, "hive name") && !strings.Contains(tt.want, "hive name") {
				t.Errorf("hive add %s: the refusal blames the hive name:\n%s", tt.target, r.stderr)
			}
			if strings.Contains(tt.want, "reserved") && !strings.Contains(r.stderr, "hint: name the SSH host with --name") {
				t.Errorf("hive add %s: no hint saying what to do:\n%s", tt.target, r.stderr)
			}
		})
	}
	// Refused before any side effect: no queen was started, nothing was
	// recorded, no host key was learnt.
	if left := e.procs(); len(left) > 0 {
		t.Errorf("refused targets started processes: %v", describe(left))
	}
	if inv := e.inventory(t); inv != "" {
		t.Errorf("refused targets reached the inventory:\n%s", inv)
	}
	if _, err := os.Stat(filepath.Join(e.home, ".ssh", "known_hosts")); err == nil {
		t.Errorf("a refused target recorded a host key")
	}

	// [::1]:PORT is an IPv6 address with a port, not a bad port.
	v6 := proxy6(t, h.Addr)
	_, p6, _ := net.SplitHostPort(v6)
	r := e.rbee("hive", "add", h.User+"@[::1]:"+p6, "--name", "v6", "--identity", h.ClientKey, "--accept-new-host-key")
	if r.code != 0 || !strings.Contains(r.stdout, "hive v6 is ready") {
		t.Fatalf("hive add [::1]:%s (sshd on %s): exit %d\n%s\n%s", p6, port, r.code, r.stdout, r.stderr)
	}
	if inv := e.inventory(t); !strings.Contains(inv, `host = "::1"`) || !strings.Contains(inv, "port = "+p6) {
		t.Errorf("inventory after adding [::1]:%s:\n%s", p6, inv)
	}
	// Without --name, the hive is named after the address.
	r = e.rbee("hive", "add", h.User+"@[::1]:"+p6, "--identity", h.ClientKey, "--dry-run")
	if r.code != 0 || !strings.Contains(r.stdout, "hive 1: dry run") {
		t.Errorf("hive add [::1]:%s --dry-run: exit %d\n%s\n%s", p6, r.code, r.stdout, r.stderr)
	}
	// The local hive is untouched by the refused --name localhost.
	r = e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Errorf("infer on the local hive after the refusals: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	e.stopQueen()
}

// TestBadInputAliases: an alias outside the documented set is refused by
// the keeper before anything is downloaded, and by the hive agent (the
// authority) whoever asks; rm of such a name removes nothing; names and
// file names are printed with their control characters escaped.
func TestBadInputAliases(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(alphabet)
	if err != nil {
		t.Fatal(err)
	}
	hub := hubtest.New(t, map[string][]byte{"rbee/abc/alphabet.gguf": data})
	e := newEnv(t, "HF_ENDPOINT="+hub.URL)
	bad := []string{"../../x", "/etc/passwd", "two\nlines", "\x1b[31mred", "sha256:abcd", "-rf"}
	for _, alias := range bad {
		r := e.rbee("model", "pull", "hf:rbee/abc/alphabet.gguf", "--alias="+alias)
		if r.code != rbee.ExitUsage || !strings.Contains(r.stderr, "hint: an alias is 1 to 64 letters") {
			t.Errorf("model pull --alias %q: exit %d, want %d with the character set:\n%s", alias, r.code, rbee.ExitUsage, r.stderr)
		}
		if strings.ContainsAny(r.stderr, "\x1b\x00") {
			t.Errorf("model pull --alias %q: the refusal prints control characters raw: %q", alias, r.stderr)
		}
	}
	if n := hub.BodyGETs("rbee/abc/alphabet.gguf"); n != 0 {
		t.Errorf("refused pulls downloaded %d time(s)", n)
	}
	if left := e.procs(); len(left) > 0 {
		t.Errorf("refused pulls started processes: %v", describe(left))
	}

	// A good alias; then the agent itself refuses bad ones from any client.
	if r := e.rbee("model", "pull", "hf:rbee/abc/alphabet.gguf", "--alias", "abc"); r.code != 0 {
		t.Fatalf("model pull --alias abc: exit %d\n%s", r.code, r.stderr)
	}
	c := e.hive()
	defer c.Close()
	ms, err := c.Models(t.Context())
	if err != nil || len(ms) != 1 {
		t.Fatalf("models: %v %+v", err, ms)
	}
	for _, alias := range append(bad, "nul\x00byte") { // no argv carries a NUL: only an API client can
		_, err := c.AddModel(t.Context(), hiveapi.AddModelRequest{Path: ms[0].Path, Ref: ms[0].Ref, Alias: alias})
		if err == nil || rbee.CodeOf(err) != rbee.CodeBadRequest && !strings.Contains(err.Error(), "alias") {
			t.Errorf("hive AddModel with alias %q: got %v, want it refused", alias, err)
		}
		_, err = c.Pull(t.Context(), hiveapi.PullRequest{Ref: "hf:rbee/abc/alphabet.gguf", Alias: alias, Endpoint: hub.URL}, func(rbee.Event) error { return nil })
		if err == nil || !strings.Contains(err.Error(), "alias") {
			t.Errorf("hive Pull with alias %q: got %v, want it refused", alias, err)
		}
	}
	if ms, _ = c.Models(t.Context()); len(ms) != 1 || ms[0].Alias != "abc" {
		t.Errorf("the catalog changed: %+v", ms)
	}
	if r := e.rbee("model", "rm", "/etc/passwd"); r.code != rbee.ExitNotFound {
		t.Errorf("model rm /etc/passwd: exit %d, want %d\n%s", r.code, rbee.ExitNotFound, r.stderr)
	}
	if ms, _ = c.Models(t.Context()); len(ms) != 1 {
		t.Errorf("model rm /etc/passwd removed a model: %+v", ms)
	}

	// A file name with a newline and an ANSI escape, from the person: the
	// narration and the table show it escaped.
	evil := filepath.Join(t.TempDir(), "a\n[queen] forged line \x1b[2J.gguf")
	if err := os.WriteFile(evil, data, 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.rbee("infer", "--model", evil, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("infer with an odd file name: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stderr, "\x1b") || strings.Contains(r.stderr, "\n[queen] forged") || !strings.Contains(r.stderr, `a\n[queen] forged line \x1b[2J.gguf`) {
		t.Errorf("the narration prints the file name raw:\n%q", r.stderr)
	}
	r = e.rbee("model", "ls")
	if strings.Contains(r.stdout, "\x1b") || strings.Contains(r.stdout, "\n[queen] forged") || !strings.Contains(r.stdout, `\x1b[2J`) {
		t.Errorf("model ls prints the file name raw:\n%q", r.stdout)
	}
	e.stopQueen()
}

// TestBadInputInfer: --temperature NaN is refused as out of range (not
// "job request: EOF"), and a FIFO as the model is refused at once instead
// of hanging the keeper; neither starts anything.
func TestBadInputInfer(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, temp := range []string{"NaN", "nan", "+Inf", "-Inf"} {
		r := e.rbee("infer", "--model", alphabet, "--temperature="+temp, "abc")
		if r.code != rbee.ExitUsage || !strings.Contains(r.stderr, "out of range; use 0 to 2") {
			t.Errorf("--temperature %s: exit %d, want %d saying the range:\n%s", temp, r.code, rbee.ExitUsage, r.stderr)
		}
	}
	fifo := filepath.Join(t.TempDir(), "model.gguf")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan result, 1)
	go func() { done <- e.rbee("infer", "--model", fifo, "abc") }()
	select {
	case r := <-done:
		if r.code != rbee.ExitNotFound || !strings.Contains(r.stderr, "named pipe (FIFO), not a regular file") || !strings.Contains(r.stderr, "hint: ") {
			t.Errorf("infer --model FIFO: exit %d, want %d saying it is no regular file:\n%s", r.code, rbee.ExitNotFound, r.stderr)
		}
	case <-time.After(20 * time.Second):
		// Unblock the keeper's open so that the test can end.
		if f, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		t.Fatal("infer --model FIFO hangs")
	}
	if left := e.procs(); len(left) > 0 {
		t.Errorf("refused jobs started processes: %v", describe(left))
	}
}

// copyEngine copies the test engine bundle and lets edit change its
// libllama, as a person would hand rbee a wrong build.
func copyEngine(t *testing.T, edit func(lib []byte) []byte) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "llama")
	if out, err := exec.Command("cp", "-a", engineDir, dir).CombinedOutput(); err != nil {
		t.Fatalf("copy engine: %v\n%s", err, out)
	}
	lib, err := filepath.EvalSymlinks(filepath.Join(dir, "libllama.so"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(lib)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lib, edit(b), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestBadInputWorkerInstall: an engine bundle for another CPU than the
// hive's, or an unrelated library renamed libllama, is refused by worker
// install, locally and before anything is pushed to an SSH host.
func TestBadInputWorkerInstall(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	arm64 := copyEngine(t, func(b []byte) []byte {
		binary.LittleEndian.PutUint16(b[18:], uint16(elf.EM_AARCH64)) // e_machine
		return b
	})
	unrelated, _ := filepath.Glob("/usr/lib/*/libffi.so.8")
	if len(unrelated) == 0 {
		t.Fatal("no libffi.so.8 here")
	}
	renamed := copyEngine(t, func([]byte) []byte {
		b, err := os.ReadFile(unrelated[0])
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
	if r := e.addHive(hosts[0], "h1"); r.code != 0 {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	before := e.rbee("worker", "ls", "--hive", "h1").stdout
	for _, tt := range []struct{ name, src, want string }{
		{"arm64", arm64, "built for linux/arm64 and this hive runs linux/amd64"},
		{"renamed", renamed, "does not export llama.cpp's functions"},
		{"missing", filepath.Join(t.TempDir(), "no-such-bundle"), "engine source"}, // a bad argument like the others: 2, not 4
	} {
		for _, hive := range []string{"localhost", "h1"} {
			r := e.rbee("worker", "install", "--hive", hive, tt.src)
			if r.code != rbee.ExitUsage || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("worker install %s on %s: exit %d, want %d with %q:\n%s", tt.name, hive, r.code, rbee.ExitUsage, tt.want, r.stderr)
			}
			if strings.Contains(r.stderr, "Options") || strings.Contains(r.stderr, "pushed") {
				t.Errorf("worker install %s on %s: internal names, or a push:\n%s", tt.name, hive, r.stderr)
			}
		}
	}
	if after := e.rbee("worker", "ls", "--hive", "h1").stdout; after != before {
		t.Errorf("the host's worker catalog changed:\n%s\nwas:\n%s", after, before)
	}
	if r := e.rbee("worker", "ls"); strings.Contains(r.stdout, "arm64") {
		t.Errorf("the local worker catalog holds the refused bundle:\n%s", r.stdout)
	}
	e.stopQueen()
}

// TestBadInputExitCodes: a model server that cannot be reached exits with
// "a download failed" (9), not "model missing" (4).
func TestBadInputExitCodes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	closed, err := testenv.FreePort() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + closed + "/m.gguf"
	for _, args := range [][]string{{"model", "pull", url}, {"infer", "--model", url, "abc"}} {
		r := e.rbee(args...)
		if r.code != rbee.ExitDownload || !strings.Contains(r.stderr, closed) {
			t.Errorf("%s with nothing listening: exit %d, want %d naming the server:\n%s", args[0], r.code, rbee.ExitDownload, r.stderr)
		}
	}
	// A server whose file is no GGUF: the header read finds it, with the
	// same code as a download found to be none (4), not a failed download.
	notGGUF := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "m.gguf", time.Time{}, strings.NewReader(strings.Repeat("<html>not a model</html>\n", 4000)))
	}))
	defer notGGUF.Close()
	for _, args := range [][]string{{"model", "pull", notGGUF.URL + "/m.gguf"}, {"infer", "--model", notGGUF.URL + "/m.gguf", "abc"}} {
		r := e.rbee(args...)
		if r.code != rbee.ExitNotFound || !strings.Contains(r.stderr, "not a GGUF file") {
			t.Errorf("%s of a file that is no GGUF: exit %d, want %d saying so:\n%s", args[0], r.code, rbee.ExitNotFound, r.stderr)
		}
	}
	e.stopQueen()
}

// TestBadInputEngine: an engine bundle changed since it was prepared, and
// one without the rpc-server a split needs, are install problems: exit 10
// with the command that installs a good one, not "the worker failed" (6),
// for no worker ran.
func TestBadInputEngine(t *testing.T) {
	t.Parallel()
	t.Run("tampered", func(t *testing.T) {
		t.Parallel()
		tampered := copyEngine(t, func(b []byte) []byte {
			b[len(b)-1] ^= 0xff // same size: the agent's quick look passes, the worker's check does not
			return b
		})
		e := newEnv(t, "RBEE_ENGINE="+tampered)
		r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
		if r.code != rbee.ExitEngine || !strings.Contains(r.stderr, "sha256 mismatch") || !strings.Contains(r.stderr, "hint: rbee worker install --hive localhost ") {
			t.Errorf("infer on a tampered engine: exit %d, want %d naming the file and the command that reinstalls it:\n%s", r.code, rbee.ExitEngine, r.stderr)
		}
		if r.stdout != "" {
			t.Errorf("infer on a tampered engine printed %q", r.stdout)
		}
		e.stopQueen()
	})
	t.Run("no rpc-server", func(t *testing.T) {
		t.Parallel()
		e, hosts := sshEnv(t, 1, sshtest.Options{})
		e.vars = append(e.vars, "RBEE_ENGINE="+plainEngine(t)) // no RPC backend, no rpc-server
		if r := e.addHive(hosts[0], "h1"); r.code != 0 {
			t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
		}
		r := e.rbee("infer", "--split", "localhost,h1", "--model", alphabet, "--temperature", "0", "abc")
		if r.code != rbee.ExitEngine || !strings.Contains(r.stderr, "no engine with llama.cpp's RPC backend") || !strings.Contains(r.stderr, "hint: rbee worker install --hive ") {
			t.Errorf("a split without rpc-server: exit %d, want %d with the command that installs one:\n%s", r.code, rbee.ExitEngine, r.stderr)
		}
		e.stopQueen()
	})
}

// plainEngine prepares the pinned CPU bundle as rbee fetches it: without
// llama.cpp's RPC backend and rpc-server.
func plainEngine(t *testing.T) string {
	t.Helper()
	root, err := testenv.Root()
	if err != nil {
		t.Fatal(err)
	}
	archives, _ := filepath.Glob(filepath.Join(root, ".rbee-dev", "cache", "node-llama-cpp-linux-x64-*.tgz"))
	if len(archives) == 0 {
		t.Fatal("no engine archive in .rbee-dev/cache: run `make engine`")
	}
	plain := filepath.Join(t.TempDir(), "plain")
	if _, err := bundle.Prepare(t.Context(), archives[0], plain, bundle.Options{Source: archives[0]}); err != nil {
		t.Fatal(err)
	}
	return plain
}

// TestBadInputWorkerTypeRemoval: a worker type can be removed; one a
// running worker uses is refused with what to do; an unknown one exits 4.
func TestBadInputWorkerTypeRemoval(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.rbee("worker", "add-type", "oai", "--command", bins.Worker, "--health", "/health",
		"--arg=--model", "--arg={model}", "--arg=--engine", "--arg="+engineDir, "--arg=--listen", "--arg=127.0.0.1:{port}", "--arg=--threads", "--arg=1")
	if r.code != 0 {
		t.Fatalf("add-type: exit %d\n%s", r.code, r.stderr)
	}
	if r := e.rbee("infer", "--worker-type", "oai", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 {
		t.Fatalf("infer on the type: exit %d\n%s", r.code, r.stderr)
	}
	r = e.rbee("worker", "rm-type", "oai")
	if r.code != rbee.ExitUsage || !strings.Contains(r.stderr, "of type oai is running") || !strings.Contains(r.stderr, "hint: ") {
		t.Errorf("rm-type of a type in use: exit %d, want %d with a hint:\n%s", r.code, rbee.ExitUsage, r.stderr)
	}
	for _, w := range e.workers() {
		c := e.hive()
		if err := c.StopWorker(t.Context(), w.ID); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	if r := e.rbee("worker", "rm-type", "oai"); r.code != 0 || r.stdout != "worker type oai removed\n" {
		t.Fatalf("rm-type: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	if r := e.rbee("worker", "ls"); strings.Contains(r.stdout, "external-oai") {
		t.Errorf("worker ls still lists the type:\n%s", r.stdout)
	}
	if r := e.rbee("worker", "rm-type", "oai"); r.code != rbee.ExitNotFound || !strings.Contains(r.stderr, "no worker type oai") {
		t.Errorf("rm-type of an unknown type: exit %d, want %d\n%s", r.code, rbee.ExitNotFound, r.stderr)
	}
	if r := e.rbee("infer", "--worker-type", "oai", "--model", alphabet, "abc"); r.code == 0 {
		t.Errorf("infer on a removed type succeeded:\n%s", r.stderr)
	}
	e.stopQueen()
}

// TestBadInputCatalog: a queen catalog that is not a database — or is
// empty, as a crash or a full disk can leave it — stops the queen with the
// corrupt-catalog message, said once, and the file kept as it was (never
// silently replaced by an empty catalog).
func TestBadInputCatalog(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, content string }{
		{"garbage", "this is not a database\n"},
		{"empty", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			db := filepath.Join(e.home, ".rbee", "queen.db")
			if err := os.MkdirAll(filepath.Dir(db), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(db, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			r := e.rbee("queen", "start")
			if r.code != rbee.ExitQueen || strings.Count(r.stderr, "catalog is corrupt") != 1 || !strings.Contains(r.stderr, "move it aside") {
				t.Errorf("queen start: exit %d, want %d saying once that the catalog is corrupt:\n%s", r.code, rbee.ExitQueen, r.stderr)
			}
			if b, err := os.ReadFile(db); err != nil || string(b) != tt.content {
				t.Errorf("the catalog file was changed: %q %v", b, err)
			}
		})
	}
}

// TestBadInputHome: an RBEE_HOME that cannot be a directory means the
// queen cannot be started: exit 3, saying what to fix (it was 1).
func TestBadInputHome(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	file := filepath.Join(e.home, "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	e.vars = append(e.vars, "RBEE_HOME="+filepath.Join(file, "rbee"))
	r := e.rbee("infer", "--model", alphabet, "abc")
	if r.code != rbee.ExitQueen || !strings.Contains(r.stderr, "RBEE_HOME") {
		t.Errorf("infer with a home under a file: exit %d, want %d with a hint about RBEE_HOME:\n%s", r.code, rbee.ExitQueen, r.stderr)
	}
}
