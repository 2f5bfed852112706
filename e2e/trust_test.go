package e2e

import (
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/sshtest"
	"github.com/rbee-dev/rbee/internal/testenv"
)

// asNobody runs curl as uid 65534 and returns the HTTP status it got.
func asNobody(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("curl", append([]string{"-s", "-o", "/dev/null", "-w", "%{http_code}"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, _ := cmd.Output()
	return strings.TrimSpace(string(out))
}

// TestHiveSocketOwnerOnly: with its directory and socket modes loosened,
// the hive agent still refuses another local user (403) — who could
// otherwise declare a /bin/sh worker type and run commands as the hive's
// owner — and the owner's hive works on.
func TestHiveSocketOwnerOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 {
		t.Fatalf("infer: exit %d\n%s", r.code, r.stderr)
	}
	run := filepath.Join(e.home, ".rbee", "run")
	sock := filepath.Join(run, "hive.sock")
	for _, p := range []string{filepath.Dir(e.home), e.home, filepath.Join(e.home, ".rbee"), run, sock} {
		if err := os.Chmod(p, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	body := `{"name":"sh","command":"/bin/sh","args":["-c","id > /tmp/pwned-rbee"]}`
	if got := asNobody(t, "--unix-socket", sock, "-H", "Content-Type: application/json", "-d", body, "http://hive/v1/worker-types"); got != "403" {
		t.Errorf("another user declaring a worker type: status %q, want 403", got)
	}
	if got := asNobody(t, "--unix-socket", sock, "http://hive/v1/workers"); got != "403" {
		t.Errorf("another user listing workers: status %q, want 403", got)
	}
	if r := e.rbee("worker", "ls"); strings.Contains(r.stdout, "/bin/sh") {
		t.Errorf("the worker type was added:\n%s", r.stdout)
	}
	if r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 || !strings.Contains(r.stderr, "no spawn") {
		t.Errorf("the owner after the refusals: exit %d\n%s", r.code, r.stderr)
	}
	e.stopQueen()
}

// TestDoorRefusesWebPages: the reproductions against a real
// queen — a DNS-rebinding Host, a foreign Origin with a text/plain body,
// the model list and the metrics by a foreign Host, a preflight — are
// refused; a URL named as the model makes the queen fetch nothing.
func TestDoorRefusesWebPages(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 {
		t.Fatalf("infer: exit %d\n%s", r.code, r.stderr)
	}
	base := "http://" + e.queen
	do := func(method, path, host, origin, ctype, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if host != "" {
			req.Host = host
		}
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b := new(strings.Builder)
		_, _ = io.Copy(b, resp.Body)
		return resp.StatusCode, b.String()
	}
	completion := `{"model":"alphabet.gguf","prompt":"abc","max_tokens":3}`
	for _, tt := range []struct {
		name, method, path, host, origin, ctype, body string
		want                                          int
	}{
		{"rebinding page", "POST", "/v1/completions", "evil.example", "http://evil.example", "text/plain", completion, http.StatusForbidden},
		{"rebinding models", "GET", "/v1/models", "evil.example", "", "", "", http.StatusForbidden},
		{"rebinding metrics", "GET", "/metrics", "evil.example:7833", "", "", "", http.StatusForbidden},
		{"cross-site simple request", "POST", "/v1/completions", "", "http://evil.example", "text/plain", completion, http.StatusForbidden},
		{"preflight", "OPTIONS", "/v1/completions", "", "http://evil.example", "", "", http.StatusForbidden},
		{"text/plain from a program", "POST", "/v1/completions", "", "", "text/plain", completion, http.StatusUnsupportedMediaType},
		{"a program", "POST", "/v1/completions", "", "", "application/json", completion, http.StatusOK},
	} {
		if got, body := do(tt.method, tt.path, tt.host, tt.origin, tt.ctype, tt.body); got != tt.want {
			t.Errorf("%s: %d %s, want %d", tt.name, got, body, tt.want)
		}
	}

	// A URL as the model: refused before any connection to it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			c.Close()
		}
	}()
	for _, model := range []string{"https://" + ln.Addr().String() + "/x.gguf", "hf:org/repo/x.gguf"} {
		got, body := do("POST", "/v1/completions", "", "", "application/json", `{"model":"`+model+`","prompt":"abc"}`)
		if got != http.StatusNotFound || !strings.Contains(body, "does not download") {
			t.Errorf("model %s: %d %s, want 404 saying the door does not download", model, got, body)
		}
	}
	if n := len(accepted); n != 0 {
		t.Errorf("the queen made %d connections to the URL a client named", n)
	}
	if _, metrics := do("GET", "/metrics", "", "", "", ""); strings.Contains(metrics, ln.Addr().String()) || strings.Contains(metrics, "hf:org") {
		t.Errorf("a name a client sent became a metrics label")
	}
	e.stopQueen()
}

// TestTwoHomesKeepTheirHosts: two rbee homes on one machine (one user, one
// XDG_CONFIG_HOME) do not share an inventory: a hive added in one is not a
// hive of the other, whose queen never connects to it.
func TestTwoHomesKeepTheirHosts(t *testing.T) {
	t.Parallel()
	if err := sshtest.Available(); err != nil {
		t.Fatalf("SSH hosts cannot run here: %v (.ci/run installs openssh-server)", err)
	}
	hosts := sshtest.Start(t, 1, sshtest.Options{})
	a := newEnv(t) // the default home, ~/.rbee
	a.vars = append(a.vars, "XDG_CONFIG_HOME="+filepath.Join(a.home, "xdg"))
	addr, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	b := &env{t: t, home: a.home, queen: addr, rbeeHome: filepath.Join(a.home, "other")}
	b.vars = append(append([]string{}, a.vars...), "RBEE_HOME="+filepath.Join(a.home, "other"), "RBEE_QUEEN="+addr)
	t.Cleanup(func() {
		if left := b.procs(); len(left) > 0 {
			testenv.KillAll(left, 10*time.Second)
		}
	})
	if r := a.addHive(hosts[0], "h1"); r.code != 0 {
		t.Fatalf("hive add in the default home: exit %d\n%s", r.code, r.stderr)
	}
	if r := a.rbee("hive", "ls"); !strings.Contains(r.stdout, "h1") {
		t.Errorf("the default home lost its hive:\n%s", r.stdout)
	}
	if r := b.rbee("hive", "ls"); r.code != 0 || strings.Contains(r.stdout, "h1") {
		t.Errorf("the other home lists the first home's hive: exit %d\n%s", r.code, r.stdout)
	}
	if _, err := os.Stat(filepath.Join(a.home, "xdg", "rbee", "inventory.toml")); err != nil {
		t.Errorf("the default home's inventory is not the XDG one: %v", err)
	}
	a.stopQueen()
	if r := b.rbee("queen", "stop"); r.code != 0 {
		t.Errorf("queen stop in the other home: exit %d\n%s", r.code, r.stderr)
	}
}
