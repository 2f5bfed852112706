package doctor

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/internal/testenv"
)

// runHiveScript runs hiveScript as a host would, with home as $HOME.
func runHiveScript(t *testing.T, home string) []byte {
	t.Helper()
	cmd := exec.Command("sh", "-s")
	cmd.Env = append(os.Environ(), "HOME="+home)
	cmd.Stdin = strings.NewReader(hiveScript)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hive script: %v", err)
	}
	return out
}

// TestHiveScriptEngines: the engine bundles of a home, listed by the
// script and checked here, pass intact and fail changed, naming the file
// and the command that puts a good copy in place.
func TestHiveScriptEngines(t *testing.T) {
	t.Parallel()
	src, err := testenv.EngineDir()
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	dir := filepath.Join(home, ".rbee", "engines", "v0.5.0-cpu")
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", src, dir).CombinedOutput(); err != nil {
		t.Fatalf("copy engine: %v\n%s", err, out)
	}
	check := func() Check {
		t.Helper()
		rep := &Report{}
		evalEngines(rep, "h1", parseEngines(runHiveScript(t, home)))
		c, _ := rep.Check(checkEngines)
		return c
	}
	if c := check(); c.Verdict != OK || !strings.Contains(c.Detail, "every file matches") {
		t.Errorf("intact bundle: %s %q, want ok", c.Verdict, c.Detail)
	}

	lib, err := filepath.EvalSymlinks(filepath.Join(dir, "libllama.so"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(lib)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 0xff // same size: only the content tells
	if err := os.WriteFile(lib, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if c := check(); c.Verdict != Fail || !strings.Contains(c.Detail, filepath.Base(lib)+": sha256 mismatch") ||
		!strings.HasPrefix(c.Hint, "rbee worker install --hive h1 ") {
		t.Errorf("changed file: %s %q (hint %q), want a failure naming it, with rbee worker install --hive h1", c.Verdict, c.Detail, c.Hint)
	}
	b[len(b)-1] ^= 0xff
	if err := os.WriteFile(lib, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// The brick: a library the manifest does not list.
	if err := os.WriteFile(filepath.Join(dir, "libggml-extra.so"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if c := check(); c.Verdict != Fail || !strings.Contains(c.Detail, "libggml-extra.so: not listed") {
		t.Errorf("unlisted library: %s %q, want a failure naming it", c.Verdict, c.Detail)
	}
}

// TestEvalAgent: an agent whose last start failed fails the check with
// the line it printed as it exited; a running one, or one that stopped
// after a good start, does not.
func TestEvalAgent(t *testing.T) {
	t.Parallel()
	up := `time=2026-12-07T10:00:00Z level=INFO msg="hive agent up" hive=h1 socket=/h/.rbee/run/hive.sock version=0.1.0`
	warn := `time=2026-12-07T10:01:00Z level=WARN msg="corrupt model" hive=h1 model=m`
	fatal := `rbee-hive: register engine: bundle /h/.rbee/engines/v0.5.0-cpu: libggml-rpc.so: not listed in rbee-bundle.json; remove it or reinstall the bundle`
	tests := []struct {
		name   string
		st     agentState
		want   Verdict
		detail string
	}{
		{"never ran", agentState{}, OK, "no agent has run here"},
		{"runs", agentState{pid: 42, log: []string{up, warn}, logRead: true}, OK, "pid 42); the last warning in its log: " + warn},
		{"start failed", agentState{log: []string{up, warn, fatal}, logRead: true}, Fail, "its last start failed: " + fatal},
		{"started again after a failure", agentState{log: []string{fatal, up}, logRead: true}, OK, "stopped without an error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := &Report{}
			evalAgent(rep, "h1", tt.st)
			c, _ := rep.Check(checkAgent)
			if c.Verdict != tt.want || !strings.Contains(c.Detail, tt.detail) {
				t.Errorf("got %s %q, want %s with %q", c.Verdict, c.Detail, tt.want, tt.detail)
			}
			if c.Verdict == Fail && c.Hint == "" {
				t.Error("a failure without a hint")
			}
		})
	}
}

// TestHiveScriptAgent: the script reads the agent's log and pid file; a
// pid that is no rbee-hive is no agent.
func TestHiveScriptAgent(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	rb := filepath.Join(home, ".rbee")
	for _, d := range []string{"logs", "run"} {
		if err := os.MkdirAll(filepath.Join(rb, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	fatal := "rbee-hive: listen: mkdir " + rb + "/run: not a directory"
	if err := os.WriteFile(filepath.Join(rb, "logs", "hive.log"), []byte("level=INFO msg=\"hive agent up\"\n"+fatal+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rb, "run", "hive.pid"), []byte("1\n"), 0o600); err != nil { // init, not rbee-hive
		t.Fatal(err)
	}
	p := parseProbe(runHiveScript(t, home))
	if p.get("agent_pid") != "" || p.get("agent_log_read") != "yes" || len(p["agent_log"]) != 2 || p["agent_log"][1] != fatal {
		t.Errorf("script: pid %q, log %q, want no pid and the log's lines", p.get("agent_pid"), p["agent_log"])
	}
}

// TestRunLocalHome: on this machine the same checks read rbee's home
// (RBEE_HOME): its bundles, and the local agent's log.
func TestRunLocalHome(t *testing.T) {
	t.Parallel()
	src, err := testenv.EngineDir()
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	dir := filepath.Join(home, "engines", "v0.5.0-cpu")
	if err := os.MkdirAll(filepath.Join(home, "logs"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", src, dir).CombinedOutput(); err != nil {
		t.Fatalf("copy engine: %v\n%s", err, out)
	}
	if err := os.Remove(filepath.Join(dir, "rpc-server")); err != nil {
		t.Fatal(err)
	}
	fatal := "rbee-hive: register engine: bundle " + dir + ": rpc-server: missing; reinstall the bundle"
	if err := os.WriteFile(filepath.Join(home, "logs", "hive-localhost.log"), []byte(fatal+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := Run(testCtx(t), Options{Version: "test", Home: home, Hive: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := rep.Check(checkEngines); c.Verdict != Fail || !strings.Contains(c.Detail, "rpc-server: missing") || !strings.Contains(c.Hint, "--hive localhost") {
		t.Errorf("engines: %s %q (hint %q), want a failure naming rpc-server", c.Verdict, c.Detail, c.Hint)
	}
	if c, _ := rep.Check(checkAgent); c.Verdict != Fail || !strings.Contains(c.Detail, fatal) {
		t.Errorf("agent: %s %q, want the failed start", c.Verdict, c.Detail)
	}
	if len(rep.Facts.Engines) != 1 || rep.Facts.Engines[0].Problem == "" || rep.Facts.AgentError != fatal {
		t.Errorf("facts: engines %+v, agent error %q", rep.Facts.Engines, rep.Facts.AgentError)
	}
}
