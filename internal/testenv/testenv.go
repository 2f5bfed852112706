package testenv

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/internal/gguf"
)

// Root returns the repository root (the directory holding go.mod).
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// EngineDir returns the engine bundle tests use: $RBEE_ENGINE, else
// .rbee-dev/engine/llama-cpu in the repository (made by `make engine`). It
// fails with instructions when there is none: tests never skip silently.
func EngineDir() (string, error) {
	dir := os.Getenv("RBEE_ENGINE")
	if dir == "" {
		root, err := Root()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(root, ".rbee-dev", "engine", "llama-cpu")
	}
	if _, err := os.Stat(filepath.Join(dir, "libllama.so")); err != nil {
		return "", fmt.Errorf("no engine bundle at %s: run `make engine` (or set RBEE_ENGINE)", dir)
	}
	return filepath.Abs(dir)
}

// VulkanEngineDir returns the Vulkan engine bundle tests use:
// $RBEE_TEST_VULKAN_ENGINE, else .rbee-dev/engine/llama-vulkan in the
// repository (made by `make engine-vulkan`, which make test runs). It also
// checks that a Vulkan driver is installed (Mesa's llvmpipe does).
func VulkanEngineDir() (string, error) {
	dir := os.Getenv("RBEE_TEST_VULKAN_ENGINE")
	if dir == "" {
		root, err := Root()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(root, ".rbee-dev", "engine", "llama-vulkan")
	}
	if _, err := os.Stat(filepath.Join(dir, "libggml-vulkan.so")); err != nil {
		return "", fmt.Errorf("no Vulkan engine bundle at %s: run `make engine-vulkan` (or set RBEE_TEST_VULKAN_ENGINE)", dir)
	}
	icds, _ := filepath.Glob("/usr/share/vulkan/icd.d/lvp_icd.*.json")
	if len(icds) == 0 {
		return "", fmt.Errorf("no llvmpipe Vulkan driver: apt-get install mesa-vulkan-drivers libvulkan1 (.ci/run does)")
	}
	return filepath.Abs(dir)
}

// WriteModel writes a generated model into dir and returns its path.
func WriteModel(dir, name string, f *gguf.File) (string, error) {
	path := filepath.Join(dir, name)
	return path, f.WriteFile(path)
}

var (
	buildMu sync.Mutex
	built   = map[string]string{}
)

// Build builds the package pkg (e.g. "./cmd/rbee-worker") into dir with
// CGO_ENABLED=0 and extra -ldflags, once per (pkg, ldflags) per process.
func Build(dir, pkg, ldflags string) (string, error) {
	buildMu.Lock()
	defer buildMu.Unlock()
	key := pkg + "|" + ldflags
	if p, ok := built[key]; ok {
		return p, nil
	}
	root, err := Root()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, fmt.Sprintf("%s-%d", filepath.Base(pkg), len(built)))
	args := []string{"build", "-o", out}
	if ldflags != "" {
		args = append(args, "-ldflags", ldflags)
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	built[key] = out
	return out, nil
}

// Proc is a child process whose stdout is read as JSON lines.
type Proc struct {
	Cmd    *exec.Cmd
	Stderr *strings.Builder
	lines  chan map[string]any
	done   chan struct{}
	mu     sync.Mutex
	err    error
}

type lockedBuilder struct {
	mu sync.Mutex
	b  *strings.Builder
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// Start starts bin with args. The test's cleanup stops it by PID (SIGTERM,
// then SIGKILL after 10 s) and waits for it.
func Start(t testing.TB, bin string, env []string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	p := &Proc{Cmd: cmd, Stderr: &strings.Builder{}, lines: make(chan map[string]any, 16), done: make(chan struct{})}
	cmd.Stderr = &lockedBuilder{b: p.Stderr}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				p.lines <- m
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	t.Cleanup(func() { p.Stop(10 * time.Second) })
	return p
}

// Next returns the next JSON line on stdout whose "event" is event, or an
// error when the process exits or timeout passes first.
func (p *Proc) Next(event string, timeout time.Duration) (map[string]any, error) {
	deadline := time.After(timeout)
	for {
		select {
		case m, ok := <-p.lines:
			if !ok {
				<-p.done
				return nil, fmt.Errorf("process exited (%v) before %q; stderr:\n%s", p.ExitErr(), event, p.StderrText())
			}
			if m["event"] == event {
				return m, nil
			}
		case <-deadline:
			return nil, fmt.Errorf("no %q line within %s; stderr:\n%s", event, timeout, p.StderrText())
		}
	}
}

// StderrText returns what the process wrote to stderr so far.
func (p *Proc) StderrText() string {
	lb := p.Cmd.Stderr.(*lockedBuilder)
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return lb.b.String()
}

// Wait waits for the process to exit and returns its exit code.
func (p *Proc) Wait(timeout time.Duration) (int, error) {
	select {
	case <-p.done:
		return p.Cmd.ProcessState.ExitCode(), nil
	case <-time.After(timeout):
		return -1, fmt.Errorf("process %d still running after %s", p.Cmd.Process.Pid, timeout)
	}
}

// ExitErr returns the error Wait returned, once the process has exited.
func (p *Proc) ExitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) error { return p.Cmd.Process.Signal(sig) }

// Stop sends SIGTERM, waits up to timeout, then kills.
func (p *Proc) Stop(timeout time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.Cmd.Process.Kill()
		<-p.done
	}
}

// PeakRSS returns the process's peak resident memory (VmHWM) in bytes.
func PeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb); err != nil {
				return 0, err
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("VmHWM not in /proc/%d/status", pid)
}

// Bins are rbee's three binaries, built side by side (the keeper finds the
// hive agent and the worker next to itself).
type Bins struct {
	Dir, Rbee, Hive, Worker string
}

// BuildAll builds rbee, rbee-hive (cgo, for NVML) and rbee-worker into
// dir/bin.
func BuildAll(dir string) (Bins, error) { return BuildAllVersion(dir, "") }

// BuildAllVersion is BuildAll with rbee.Version set to version (when not
// empty): an "older" rbee for upgrade tests.
func BuildAllVersion(dir, version string) (Bins, error) {
	root, err := Root()
	if err != nil {
		return Bins{}, err
	}
	bin := filepath.Join(dir, "bin")
	b := Bins{Dir: bin, Rbee: filepath.Join(bin, "rbee"), Hive: filepath.Join(bin, "rbee-hive"), Worker: filepath.Join(bin, "rbee-worker")}
	for _, t := range []struct {
		out, pkg, cgo string
	}{{b.Rbee, "./cmd/rbee", "0"}, {b.Hive, "./cmd/rbee-hive", "1"}, {b.Worker, "./cmd/rbee-worker", "0"}} {
		// Built like `make build` builds them: stripped, so what the SSH
		// tests push is what users push.
		ldflags := "-s -w"
		if version != "" {
			ldflags += " -X github.com/rbee-dev/rbee.Version=" + version
		}
		args := []string{"build", "-trimpath", "-ldflags", ldflags, "-o", t.out}
		cgo := t.cgo
		// RBEE_TEST_RACE=1: the keeper, queen and agent built with the
		// race detector (it needs cgo); set GORACE=log_path=… to keep
		// its reports.
		if os.Getenv("RBEE_TEST_RACE") == "1" && t.pkg != "./cmd/rbee-worker" {
			args, cgo = append(args, "-race"), "1"
		}
		cmd := exec.Command("go", append(args, t.pkg)...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo)
		if out, err := cmd.CombinedOutput(); err != nil {
			return Bins{}, fmt.Errorf("go build %s: %w\n%s", t.pkg, err, out)
		}
	}
	return b, nil
}

// ProcsWithEnv returns the PIDs of processes whose environment holds kv
// ("KEY=value"): how tests find every process they caused, daemons and
// grandchildren included, to check and clean them up by PID.
func ProcsWithEnv(kv string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil && strings.Contains(string(st), ") Z ") {
			continue // a zombie: already dead, waiting for its parent
		}
		for _, v := range strings.Split(string(b), "\x00") {
			if v == kv {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// KillAll sends SIGTERM to pids, waits up to grace for them to go, then
// SIGKILLs what is left.
func KillAll(pids []int, grace time.Duration) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for _, pid := range pids {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if alive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func alive(pid int) bool {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(st), ") Z ")
}

// FreePort returns a loopback address with a port free right now.
func FreePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
