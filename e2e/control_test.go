package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/internal/sshtest"
	"github.com/rbee-dev/rbee/queenapi"
)

// asUser runs a command as another local user and returns its stdout and
// exit code.
func asUser(t *testing.T, uid, gid int, name string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	cmd.Dir = "/"
	var out bytes.Buffer
	cmd.Stdout = &out
	err := cmd.Run()
	return out.String(), exitCode(err)
}

// TestControlSocketOwnerOnly: another local user can neither reach the
// queen's control socket nor drive an admin route, even when every mode on
// the way is loosened (the queen checks the peer's uid); the TCP port
// answers /health and nothing administrative; the owner's keeper works.
func TestControlSocketOwnerOnly(t *testing.T) {
	t.Parallel()
	if err := sshtest.Available(); err != nil {
		t.Skip(err) // the harness makes the second user
	}
	e := newEnv(t)
	other := sshtest.Start(t, 1, sshtest.Options{})[0] // a second local user, removed after
	if r := e.rbee("queen", "start"); r.code != 0 {
		t.Fatalf("queen start: exit %d\n%s", r.code, r.stderr)
	}
	run := filepath.Join(e.home, ".rbee", "run")
	sock := filepath.Join(run, "queen.sock")
	for p, want := range map[string]os.FileMode{run: 0o700, sock: 0o600} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %#o, want %#o", p, st.Mode().Perm(), want)
		}
	}
	curl := func(method, path string) (string, int) {
		return asUser(t, other.UID, other.GID, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method,
			"--unix-socket", sock, "http://queen"+path)
	}
	if status, code := curl("GET", "/v1/hives"); code == 0 || status != "000" {
		t.Errorf("another user reached the control socket: curl exit %d, status %s", code, status)
	}

	// A careless chmod opens the way: the uid check still refuses.
	for p := run; p != filepath.Clean(os.TempDir()) && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	for _, rt := range []struct{ method, path string }{
		{"GET", "/v1/hives"}, {"GET", "/v1/workers"}, {"POST", "/v1/worker-types"}, {"POST", "/v1/jobs"}, {"POST", "/v1/shutdown"}, {"GET", "/health"},
	} {
		if status, code := curl(rt.method, rt.path); code != 0 || status != "403" {
			t.Errorf("another user, %s %s on the open socket: curl exit %d, status %s, want 403", rt.method, rt.path, code, status)
		}
	}

	// The TCP port: health, nothing administrative (for the owner too).
	for _, rt := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/health", http.StatusOK}, {"GET", "/v1/hives", http.StatusNotFound}, {"GET", "/v1/workers", http.StatusNotFound},
		{"POST", "/v1/jobs", http.StatusNotFound}, {"POST", "/v1/worker-types", http.StatusNotFound}, {"POST", "/v1/shutdown", http.StatusNotFound},
	} {
		req, _ := http.NewRequest(rt.method, "http://"+e.queen+rt.path, strings.NewReader("{}"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != rt.want {
			t.Errorf("TCP %s %s: %d, want %d", rt.method, rt.path, resp.StatusCode, rt.want)
		}
	}

	// The owner's keeper is served, and nothing the other user sent took
	// effect: the queen still runs.
	r := e.rbee("hive", "ls", "--json")
	var hives []queenapi.HiveInfo
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &hives) != nil {
		t.Errorf("owner's hive ls: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	e.stopQueen()
}

// TestJSONUsesAPIFieldNames: every --json output decodes into the API's
// own types with no unknown field (no Go field names leak).
func TestJSONUsesAPIFieldNames(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if r := e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 {
		t.Fatalf("infer: exit %d\n%s", r.code, r.stderr)
	}
	strict := func(what, s string, v any) {
		t.Helper()
		d := json.NewDecoder(strings.NewReader(s))
		d.DisallowUnknownFields()
		if err := d.Decode(v); err != nil {
			t.Errorf("%s --json: %v\n%s", what, err, s)
		}
	}
	var hives []queenapi.HiveInfo
	strict("hive ls", e.rbee("hive", "ls", "--json").stdout, &hives)
	if len(hives) != 1 || len(hives[0].Devices) == 0 || hives[0].Devices[0].TotalBytes == 0 {
		t.Errorf("hive ls: %+v, want localhost with its devices' sizes", hives)
	}
	var st queenapi.HiveInfo
	strict("hive status", e.rbee("hive", "status", "localhost", "--json").stdout, &st)
	if st.Status != "online" || len(st.Workers) != 1 || st.Devices[0].FreeBytes == 0 {
		t.Errorf("hive status: %+v, want online with one worker", st)
	}
	var ps queenapi.Processes
	strict("ps", e.rbee("ps", "--json").stdout, &ps)
	if len(ps.Processes) != 1 || ps.Processes[0].Hive != "localhost" || ps.Processes[0].Model != "alphabet.gguf" || ps.Processes[0].UnloadInS <= 0 {
		t.Errorf("ps: %+v, want the one warm worker of localhost on alphabet.gguf with time before unload", ps)
	}
	if r := e.rbee("ps"); r.code != 0 || !strings.Contains(r.stdout, "alphabet.gguf") || !strings.Contains(r.stdout, "UNLOADS IN") {
		t.Errorf("ps: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	var models []hiveapi.Model
	strict("model ls", e.rbee("model", "ls", "--json").stdout, &models)
	if len(models) != 1 || models[0].SHA256 == "" || models[0].EstimateBytes == 0 {
		t.Errorf("model ls: %+v, want the alphabet model with its sha256 and estimate", models)
	}
	e.stopQueen()
}

// TestTwoKeepersStartTheQueen: two keepers on a fresh home start the
// queen at the same moment; one queen wins the control socket, the other
// keeper uses it, and one worker serves both jobs.
func TestTwoKeepersStartTheQueen(t *testing.T) {
	t.Parallel()
	for try := range 3 {
		e := newEnv(t)
		var wg sync.WaitGroup
		rs := make([]result, 2)
		for i := range rs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rs[i] = e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
			}()
		}
		wg.Wait()
		for i, r := range rs {
			if r.code != 0 || r.stdout != alphabetRest+"\n" {
				t.Fatalf("try %d, keeper %d: exit %d %q\n%s", try, i, r.code, r.stdout, r.stderr)
			}
		}
		var queens []int
		for _, pid := range e.procs() {
			b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
			if strings.Contains(string(b), "queen\x00serve") {
				queens = append(queens, pid)
			}
		}
		if len(queens) != 1 {
			t.Errorf("try %d: %d queens running, want 1: %v", try, len(queens), describe(queens))
		}
		if ws := e.workers(); len(ws) != 1 {
			t.Errorf("try %d: %d workers, want 1", try, len(ws))
		}
		e.stopQueen()
	}
}
