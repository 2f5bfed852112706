package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/download/hubtest"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/internal/sshtest"
	"github.com/rbee-dev/rbee/internal/testenv"
)

// TestFaultsHungWorker: a worker stopped (SIGSTOP) mid-stream makes no
// progress and does not answer its health probe: the hive fails the job
// naming the worker, kills it, and the next job starts a new one.
func TestFaultsHungWorker(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "RBEE_WORKER_STALL=1s")
	cmd, errb := firstToken(t, e, "hello")
	ws := e.workers()
	if len(ws) != 1 {
		t.Fatalf("workers = %+v", ws)
	}
	signal(t, ws[0].PID, syscall.SIGSTOP)
	t.Cleanup(func() { _ = syscall.Kill(ws[0].PID, syscall.SIGCONT) })
	err := cmd.Wait()
	if code := exitCode(err); code != rbee.ExitWorker {
		t.Fatalf("exit code = %d, want %d\n%s", code, rbee.ExitWorker, errb.String())
	}
	if s := errb.String(); !strings.Contains(s, "rbee: worker "+ws[0].ID) || !strings.Contains(s, "made no progress") {
		t.Errorf("stderr does not say the worker hung:\n%s", s)
	}
	if !dead(ws[0].PID) {
		t.Errorf("the hung worker (pid %d) is still there", ws[0].PID)
	}
	if left := e.workers(); len(left) != 0 {
		t.Errorf("hive still lists %+v", left)
	}
	r := e.rbee("infer", "--model", longModel, "--temperature", "0", "--max-tokens", "5", "hello")
	if r.code != 0 || !strings.Contains(r.stderr, "starting a worker") {
		t.Errorf("next job should start a new worker: exit %d\n%s", r.code, r.stderr)
	}
	e.stopQueen()
}

// dead reports whether pid is gone (or a zombie no one reaped yet).
func dead(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(rest, "Z")
}

// TestFaultsCorruptBlob: bytes flipped in a pulled model's blob are found
// before a worker loads it: the job fails with the corrupt-model code,
// the blob is moved aside (not deleted) and leaves the catalog, and the
// next job downloads it again.
func TestFaultsCorruptBlob(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(longModel)
	if err != nil {
		t.Fatal(err)
	}
	const ref = "hf:rbee/tiny/random-3m-Q8_0.gguf"
	hub := hubtest.New(t, map[string][]byte{"rbee/tiny/random-3m-Q8_0.gguf": data})
	e := newEnv(t, "HF_ENDPOINT="+hub.URL)
	infer := func() result {
		return e.rbee("infer", "--model", ref, "--temperature", "0", "--max-tokens", "4", "hello")
	}
	if r := infer(); r.code != 0 {
		t.Fatalf("first job: exit %d\n%s", r.code, r.stderr)
	}
	e.stopQueen() // the next job loads the model from disk again

	store := filepath.Join(e.home, ".rbee", "models", "store")
	blobs, _ := filepath.Glob(filepath.Join(store, "blobs", "sha256-*"))
	if len(blobs) != 1 {
		t.Fatalf("blobs: %v", blobs)
	}
	f, err := os.OpenFile(blobs[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	off := int64(len(data) / 2)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	f.Close()

	r := infer()
	if r.code != rbee.ExitNotFound || !strings.Contains(r.stderr, "is corrupt") || strings.Contains(r.stderr, "starting a worker") {
		t.Fatalf("job on the corrupt blob: exit %d, want %d saying it is corrupt, no worker started\n%s", r.code, rbee.ExitNotFound, r.stderr)
	}
	if _, err := os.Stat(blobs[0]); !os.IsNotExist(err) {
		t.Errorf("the corrupt blob is still in the store: %v", err)
	}
	if q, _ := filepath.Glob(filepath.Join(store, "quarantine", filepath.Base(blobs[0])+".*")); len(q) != 1 {
		t.Errorf("quarantine holds %v, want the corrupt blob", q)
	}
	var ms []hiveapi.Model
	if err := json.Unmarshal([]byte(e.rbee("model", "ls", "--json").stdout), &ms); err != nil || len(ms) != 0 {
		t.Errorf("catalog after the corrupt blob: %v %+v, want empty", err, ms)
	}
	r = infer()
	if r.code != 0 || !strings.Contains(r.stderr, "] downloading") {
		t.Errorf("the job after: exit %d, want it downloaded again\n%s", r.code, r.stderr)
	}
	e.stopQueen()
}

// TestFaultsLocalFileChanged: a local model file changed in place is
// registered anew and its old entry leaves the catalog.
func TestFaultsLocalFileChanged(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	path := filepath.Join(e.home, "m.gguf")
	copyFile(t, alphabet, path)
	if r := e.rbee("infer", "--model", path, "--temperature", "0", "abc"); r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("first job: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	copyFile(t, longModel, path)
	if r := e.rbee("infer", "--model", path, "--temperature", "0", "--max-tokens", "4", "abc"); r.code != 0 {
		t.Fatalf("job on the changed file: exit %d\n%s", r.code, r.stderr)
	}
	var ms []hiveapi.Model
	if err := json.Unmarshal([]byte(e.rbee("model", "ls", "--json").stdout), &ms); err != nil {
		t.Fatal(err)
	}
	var at []string
	for _, m := range ms {
		if m.Path == path {
			at = append(at, m.ID)
		}
	}
	if len(at) != 1 {
		t.Errorf("catalog entries for %s: %v, want one (the file as it is now)", path, at)
	}
	e.stopQueen()
}

// copyFile writes src's content over dst in place (same inode).
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestFaultsPushDiskFull: a host whose disk cannot take a model is told
// so before a byte moves ("disk full on HOST: needs X, has Y") and keeps
// no partial copy; what an earlier failed push left is removed so that a
// model that fits is pushed.
func TestFaultsPushDiskFull(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	h := hosts[0]
	if r := e.addHive(h, "h1"); r.code != 0 {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	// The host's model directory is a 32 MiB filesystem.
	models := filepath.Join(h.Home, ".rbee", "models")
	if err := os.MkdirAll(models, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=32m,mode=0700,uid=%d", h.UID), "tmpfs", models).CombinedOutput(); err != nil {
		t.Fatalf("mount a small filesystem on the host's model directory: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", models).Run() })
	fill := func(name string) string {
		p := filepath.Join(models, name)
		// Leaves 128 KiB: less than the model.
		if err := os.WriteFile(p, make([]byte, 32<<20-128<<10), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	partials := func() []string {
		ps, _ := filepath.Glob(filepath.Join(models, "*.partial"))
		return ps
	}

	other := fill("sha256-other.gguf") // another model fills the disk
	r := e.rbee("infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != rbee.ExitNoRoom || !strings.Contains(r.stderr, "disk full on "+strings.Split(h.Addr, ":")[0]) || !strings.Contains(r.stderr, "it has ") || strings.Contains(r.stderr, "sftp") {
		t.Errorf("push to a full disk: exit %d, want a disk-full error naming the host and the numbers\n%s", r.code, r.stderr)
	}
	if ps := partials(); len(ps) != 0 {
		t.Errorf("the refused push left %v", ps)
	}

	// An earlier failed push left a partial copy that fills the disk.
	os.Remove(other)
	left := fill("sha256-0123.gguf.partial")
	// ... an hour ago: a partial written just now may be a push running.
	hourAgo := time.Now().Add(-time.Hour)
	if err := os.Chtimes(left, hourAgo, hourAgo); err != nil {
		t.Fatal(err)
	}
	r = e.rbee("infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Errorf("push after a failed one: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Stat(left); !os.IsNotExist(err) {
		t.Errorf("the earlier push's partial copy is still there: %v", err)
	}
	e.stopQueen()
}

// TestFaultsVersionSkew: a newer rbee finds an older queen of this user
// running, says so and, the queen being idle, restarts it as its own
// version; on the host, the old agent's version directory stays while an
// adopted worker runs from it and is removed by the next rbee up once no
// process uses it.
func TestFaultsVersionSkew(t *testing.T) {
	t.Parallel()
	const oldVersion = "0.0.7-skew"
	old, err := testenv.BuildAllVersion(filepath.Join(tmp, "skew"), oldVersion)
	if err != nil {
		t.Fatal(err)
	}
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	h := hosts[0]
	if r := e.run(old.Rbee, "hive", "add", target(h), "--name", "h1", "--identity", h.ClientKey, "--accept-new-host-key"); r.code != 0 {
		t.Fatalf("old hive add: exit %d\n%s", r.code, r.stderr)
	}
	if r := e.run(old.Rbee, "infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc"); r.code != 0 {
		t.Fatalf("old infer: exit %d\n%s", r.code, r.stderr)
	}
	oldPID, err := e.queenHealth()
	if err != nil {
		t.Fatal(err)
	}

	r := e.rbee("infer", "--hive", "h1", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Fatalf("new infer: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	inOrder(t, r.stderr, "the running queen is rbee "+oldVersion, "restarting it", "queen is awake")
	c := e.queenClient()
	hl, err := c.Health(t.Context())
	c.Close()
	if err != nil || hl.Version != rbee.Version || hl.PID == oldPID {
		t.Errorf("queen after the restart: %+v %v, want version %s, not pid %d", hl, err, rbee.Version, oldPID)
	}
	oldDir := filepath.Join(h.Home, ".rbee", "hive", oldVersion)
	if _, err := os.Stat(oldDir); err != nil {
		t.Errorf("the old agent version was removed while its adopted worker runs from it: %v", err)
	}

	// Once no process runs from it, the next rbee up removes it.
	for _, pid := range hostProcs(h.UID, "rbee-worker") {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	waitFor(t, "the adopted worker is gone", func() bool { return len(hostProcs(h.UID, "rbee-worker")) == 0 })
	if r := e.rbee("queen", "stop"); r.code != 0 { // the next queen connects afresh
		t.Fatalf("queen stop: exit %d\n%s", r.code, r.stderr)
	}
	if r = e.rbee("up"); r.code != 0 {
		t.Fatalf("rbee up: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Stat(oldDir); !os.IsNotExist(err) {
		t.Errorf("old agent version still on the host after rbee up: %v\n%s", err, r.stdout)
	}
	if _, err := os.Stat(filepath.Join(h.Home, ".rbee", "hive", rbee.Version)); err != nil {
		t.Errorf("this version's agent: %v", err)
	}
	e.stopQueen()
}
