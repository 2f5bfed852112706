package provision

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/bundle"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/modelfile"
	"github.com/rbee-dev/rbee/poll"
	"github.com/rbee-dev/rbee/remote"
)

// Platform names a build target, "linux/amd64".
type Platform = string

// Artifacts are the local files a host may need.
type Artifacts struct {
	Agents  map[Platform]string // rbee-hive builds
	Workers map[Platform]string // rbee-worker builds
	Engines map[Platform]string // engine bundle directories
	// Engine, when set, gets a bundle for a platform Engines lacks (the
	// queen fetches the pinned one on its machine). It is called only for a
	// host that needs installing.
	Engine func(ctx context.Context, p Platform, gpu string) (string, error)
	// GPUEngines are bundle directories for hosts ChooseEngine gives a GPU
	// kind ("vulkan", "cuda"), instead of the pinned package Engine gets.
	GPUEngines map[string]string
	// SoftwareGPU counts a software Vulkan driver (llvmpipe) as a GPU
	// when the engine is chosen, and has the agent list its device
	// (RBEE_SOFTWARE_GPU=1).
	SoftwareGPU bool
	// PackDir caches gzipped copies of what is pushed; "" sends files as
	// they are (over SFTP).
	PackDir string
}

// Probe is what the probe phase learned about a host.
type Probe struct {
	OS, Arch  string // "linux", "amd64"
	Machine   string // uname -m
	Libc      string // first line of ldd --version
	Libffi    bool
	Agent     bool   // an agent's socket exists
	Gzip      bool   // gzip is on the PATH: pushes may go compressed
	FreeBytes uint64 // in the home's filesystem
	Home      string
	// CPUFlags are the CPU's features as /proc/cpuinfo lists them (its
	// flags line on x86, Features on arm); nil when unknown. A push sends
	// only the engine's CPU variants they allow.
	CPUFlags []string
	// NVIDIA is the loaded NVIDIA driver's version ("580.95.05"), from
	// /proc/driver/nvidia/version or nvidia-smi; "" without one.
	NVIDIA string `json:",omitempty"`
	// CUDARuntime: the CUDA 13 runtime the CUDA bundle links
	// (libcudart.so.13, libcublas.so.13) is on the loader's path
	// (LD_LIBRARY_PATH, the system's directories, /usr/local/cuda).
	CUDARuntime bool `json:",omitempty"`
	// Vulkan: the Vulkan loader (libvulkan.so.1) is installed.
	Vulkan bool `json:",omitempty"`
	// VulkanDrivers are the installed Vulkan drivers' manifests
	// ("radeon_icd.x86_64.json", "lvp_icd.x86_64.json").
	VulkanDrivers []string `json:",omitempty"`
	// RenderNodes counts /dev/dri/renderD* (GPUs a Vulkan driver can
	// open).
	RenderNodes int `json:",omitempty"`
}

// Platform returns the host's build target.
func (p Probe) Platform() Platform { return p.OS + "/" + p.Arch }

// Layout is where rbee lives on a host.
type Layout struct{ Home string }

// RbeeDir is the agent's home on the host.
func (l Layout) RbeeDir() string { return path.Join(l.Home, ".rbee") }

// AgentPath is the versioned path of the agent binary.
func (l Layout) AgentPath(version string) string {
	return path.Join(l.RbeeDir(), "hive", version, "rbee-hive")
}

// WorkerPath is the versioned path of the worker binary.
func (l Layout) WorkerPath(version string) string {
	return path.Join(l.RbeeDir(), "hive", version, "rbee-worker")
}

// EngineDir is where an engine bundle of a version lives.
func (l Layout) EngineDir(version string) string { return path.Join(l.RbeeDir(), "engines", version) }

// Socket is the agent's unix socket.
func (l Layout) Socket() string { return path.Join(l.RbeeDir(), "run", "hive.sock") }

// LogPath is the agent's log file.
func (l Layout) LogPath() string { return path.Join(l.RbeeDir(), "logs", "hive.log") }

// Result is what Up did on one host.
type Result struct {
	Probe     Probe
	Handshake hiveapi.Handshake
	Installed bool   // the agent was (re)started by this call
	Replaced  string // version of an agent replaced gracefully
	Uploaded  []string
	Transport string // "streamlocal" or "bridge"
	Phases    []Phase
}

// Phase is one step of Up and how long it took.
type Phase struct {
	Name     string
	Duration time.Duration
}

// Timings formats the phases: "probe 12ms, push 640ms, start 90ms".
func (r Result) Timings() string {
	var parts []string
	for _, p := range r.Phases {
		parts = append(parts, fmt.Sprintf("%s %s", p.Name, p.Duration.Round(time.Millisecond)))
	}
	return strings.Join(parts, ", ")
}

// Options tune Up.
type Options struct {
	Name      string        // hive name the agent narrates as
	KeepAlive time.Duration // worker keep-alive on the host
	Narrate   func(action, msg string)
	// Progress, when set, hears the bytes of the upload (at most about
	// five times a second, and at its end).
	Progress func(done, total int64)
}

// probeScript prints one fact per line. It is a constant: no user input is
// ever pasted into a remote command.
const probeScript = `uname -s; uname -m; (ldd --version 2>&1 || true) | head -n 1; ` +
	`for d in /lib /usr/lib /lib64 /usr/lib64 /lib/*-linux-gnu /usr/lib/*-linux-gnu; do [ -e "$d/libffi.so.8" ] && { echo libffi=yes; break; }; done; ` +
	`[ -S "$HOME/.rbee/run/hive.sock" ] && echo agent=yes; command -v gzip >/dev/null 2>&1 && echo gzip=yes; ` +
	`awk '/^(flags|Features)[ \t]*:/ { sub(/^[^:]*:[ \t]*/, ""); print "cpu=" $0; exit }' /proc/cpuinfo 2>/dev/null; ` +
	// The GPU facts the engine's choice rests on.
	`v=$(sed -n 's/.*Kernel Module[ \t]*\([0-9][0-9.]*\).*/\1/p' /proc/driver/nvidia/version 2>/dev/null | head -n 1); ` +
	`[ -z "$v" ] && command -v nvidia-smi >/dev/null 2>&1 && v=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1); ` +
	`[ -n "$v" ] && echo "nvidia=$v"; ` +
	`for d in $(printf '%s' "$LD_LIBRARY_PATH" | tr ':' ' ') /lib /usr/lib /lib64 /usr/lib64 /lib/*-linux-gnu /usr/lib/*-linux-gnu /usr/local/cuda/lib64 /usr/local/cuda/targets/*/lib; do [ -e "$d/libcudart.so.13" ] && [ -e "$d/libcublas.so.13" ] && { echo cudart=yes; break; }; done; ` +
	`for d in /lib /usr/lib /lib64 /usr/lib64 /lib/*-linux-gnu /usr/lib/*-linux-gnu; do [ -e "$d/libvulkan.so.1" ] && { echo vulkan=yes; break; }; done; ` +
	`for f in /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json /usr/local/share/vulkan/icd.d/*.json; do [ -e "$f" ] && echo "icd=${f##*/}"; done; ` +
	`n=0; for f in /dev/dri/renderD*; do [ -e "$f" ] && n=$((n+1)); done; echo "render=$n"; ` +
	`df -Pk "$HOME" | tail -n 1 | awk '{print $4}'; printf '%s\n' "$HOME"`

// engineFor is the engine bundle to push to a probed host: the one its
// GPU kind gets (ChooseEngine says why, narrated), else this platform's.
// A GPU bundle that cannot be had leaves the host the CPU build, said so.
func (a Artifacts) engineFor(ctx context.Context, p Probe, opt Options, narrate func(action, msg string)) (string, error) {
	plat := p.Platform()
	choice := ChooseEngine(p, a.SoftwareGPU)
	narrate("engine_chosen", fmt.Sprintf("host %s: the %s engine: %s", opt.Name, choice.Kind(), choice.Why))
	if choice.GPU != "" {
		if src := a.GPUEngines[choice.GPU]; src != "" {
			return src, nil
		}
		if a.Engine != nil {
			src, err := a.Engine(ctx, plat, choice.GPU)
			if err == nil {
				return src, nil
			}
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			narrate("engine_fallback", fmt.Sprintf("host %s: no %s engine (%v): the CPU build instead", opt.Name, choice.GPU, err))
		}
	}
	if src := a.Engines[plat]; src != "" {
		return src, nil
	}
	if a.Engine == nil {
		return "", fmt.Errorf("engine bundle for %s: none given", plat)
	}
	src, err := a.Engine(ctx, plat, "")
	if err != nil {
		return "", fmt.Errorf("engine bundle for %s: %w", plat, err)
	}
	return src, nil
}

// ProbeLocal runs the probe on this machine, as ProbeHost does on a host.
func ProbeLocal(ctx context.Context) (Probe, error) {
	return ProbeWith(ctx, func(ctx context.Context, argv []string) ([]byte, error) {
		return exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
	})
}

// ProbeWith runs the probe through run (argv: a constant sh -c script).
func ProbeWith(ctx context.Context, run func(ctx context.Context, argv []string) ([]byte, error)) (Probe, error) {
	out, err := run(ctx, []string{"sh", "-c", probeScript})
	if err != nil {
		return Probe{}, fmt.Errorf("probe: %w", err)
	}
	return parseProbe(out)
}

// ProbeHost runs the probe phase.
func ProbeHost(ctx context.Context, c *remote.Conn) (Probe, error) {
	out, err := c.Run(ctx, []string{"sh", "-c", probeScript}, nil)
	if err != nil {
		return Probe{}, fmt.Errorf("probe: %w", err)
	}
	return parseProbe(out)
}

// parseProbe reads probeScript's answer.
func parseProbe(out []byte) (Probe, error) {
	var lines []string
	p := Probe{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if flags, ok := strings.CutPrefix(line, "cpu="); ok {
			p.CPUFlags = strings.Fields(flags)
			continue
		}
		if line == "gzip=yes" {
			p.Gzip = true
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			switch k {
			case "nvidia":
				p.NVIDIA = v
				continue
			case "cudart":
				p.CUDARuntime = true
				continue
			case "vulkan":
				p.Vulkan = true
				continue
			case "icd":
				p.VulkanDrivers = append(p.VulkanDrivers, v)
				continue
			case "render":
				p.RenderNodes, _ = strconv.Atoi(v)
				continue
			}
		}
		lines = append(lines, line)
	}
	if len(lines) < 5 {
		return p, fmt.Errorf("probe: unexpected answer %q", out)
	}
	p.OS = strings.ToLower(lines[0])
	p.Machine = lines[1]
	switch lines[1] {
	case "x86_64", "amd64":
		p.Arch = "amd64"
	case "aarch64", "arm64":
		p.Arch = "arm64"
	default:
		p.Arch = lines[1]
	}
	p.Libc = lines[2]
	i := 3
	if lines[i] == "libffi=yes" {
		p.Libffi = true
		i++
	}
	if lines[i] == "agent=yes" {
		p.Agent = true
		i++
	}
	if kb, err := strconv.ParseUint(lines[i], 10, 64); err == nil {
		p.FreeBytes = kb * 1024
	}
	p.Home = lines[len(lines)-1]
	if !path.IsAbs(p.Home) {
		return p, fmt.Errorf("probe: home %q is not absolute", p.Home)
	}
	return p, nil
}

// Dialer reaches the agent's socket on the host: streamlocal forwarding,
// or `rbee-hive bridge` over an exec channel when the server refuses to
// forward (remote tells that from a missing socket). HTTP keep-alive makes
// dials rare. mode reports the way the last dial went.
func Dialer(c *remote.Conn, l Layout, version string) (hiveapi.DialFunc, func(ctx context.Context) string) {
	var mode atomic.Value // "", "streamlocal" or "bridge"
	mode.Store("")
	var forwards atomic.Bool // streamlocal worked once: the server forwards
	dial := func(ctx context.Context) (net.Conn, error) {
		conn, err := c.DialUnix(ctx, l.Socket())
		if err == nil {
			mode.Store("streamlocal")
			forwards.Store(true)
			return conn, nil
		}
		if !errors.Is(err, remote.ErrForwardingRefused) || forwards.Load() {
			return nil, err // the agent is not listening
		}
		bconn, berr := c.DialBridge(ctx, []string{l.AgentPath(version), "bridge", "--home", l.RbeeDir()})
		if berr != nil {
			return nil, fmt.Errorf("%w; bridge: %w", err, berr)
		}
		mode.Store("bridge")
		return bconn, nil
	}
	return dial, func(context.Context) string { return mode.Load().(string) }
}

// Up makes sure the agent of this build runs on the host and answers the
// handshake, installing or replacing it as needed.
func Up(ctx context.Context, c *remote.Conn, a Artifacts, opt Options) (Result, *hiveapi.Client, error) {
	narrate := opt.Narrate
	if narrate == nil {
		narrate = func(string, string) {}
	}
	var res Result
	t0 := time.Now()
	phase := func(name string) {
		res.Phases = append(res.Phases, Phase{name, time.Since(t0)})
		t0 = time.Now()
	}
	p, err := ProbeHost(ctx, c)
	if err != nil {
		return res, nil, err
	}
	res.Probe = p
	RemoveLeftovers(ctx, c) // a failed push's partial copy, from before this connection
	l := Layout{Home: p.Home}
	dial, mode := Dialer(c, l, rbee.Version)
	client := hiveapi.NewClient(opt.Name, dial)

	// Try the agent that may already run: same version = nothing to do.
	phase("probe")
	var hs hiveapi.Handshake
	herr := errors.New("no agent socket")
	if p.Agent {
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		hs, herr = client.Handshake(hctx)
		cancel()
		phase("handshake")
	}
	if herr == nil && hs.Version == rbee.Version && hs.Protocol == rbee.ProtocolVersion {
		RemoveOldAgents(ctx, c, l, narrate)
		res.Handshake, res.Transport = hs, settle(ctx, c, l, client, mode(ctx))
		return res, client, nil
	}

	// Install: the files this platform needs.
	narrate("host_probed", fmt.Sprintf("host %s: %s/%s, %s, libffi %s, %s free in %s", opt.Name, p.OS, p.Arch, p.Libc,
		map[bool]string{true: "found", false: "missing"}[p.Libffi], rbee.Bytes(p.FreeBytes), p.Home))
	agentSrc, workerSrc, err := checkHost(p, a, true)
	if err != nil {
		return res, nil, err
	}
	engineSrc, err := a.engineFor(ctx, p, opt, narrate)
	if err != nil {
		return res, nil, err
	}
	phase("engine")
	need, err := sizeOf(agentSrc, workerSrc, engineSrc)
	if err != nil {
		return res, nil, err
	}
	if err := checkRoom(p, need); err != nil {
		return res, nil, err
	}
	m, err := bundle.ValidateOnce(engineSrc)
	if err != nil {
		return res, nil, fmt.Errorf("engine bundle: %w", err)
	}
	engineDir, keep, err := EngineTarget(ctx, c, l, m)
	if err != nil {
		return res, nil, err
	}
	if keep {
		narrate("engine_kept", fmt.Sprintf("host %s: %s already holds every file of engine %s (and more): kept as it is", opt.Name, engineDir, bundle.Variant(m)))
		m = nil // nothing of the engine is sent
	}
	s := &sender{mt: &meter{report: opt.Progress}}
	if p.Gzip {
		s.pack = a.PackDir
	}
	uploaded, err := pushAll(ctx, c, agentSrc, workerSrc, engineSrc, l, engineDir, m, p.CPUFlags, s)
	if err != nil {
		return res, nil, err
	}
	res.Uploaded = uploaded
	phase("push")
	if len(res.Uploaded) > 0 {
		narrate("agent_uploaded", fmt.Sprintf("uploaded %s", strings.Join(res.Uploaded, ", ")))
	}

	// Replace an agent of another version gracefully: its workers stay.
	if herr == nil {
		narrate("agent_replace", fmt.Sprintf("replacing rbee-hive %s (pid %d) with %s; its workers stay", hs.Version, hs.PID, rbee.Version))
		res.Replaced = hs.Version
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := client.Shutdown(sctx, true)
		cancel()
		if err != nil {
			return res, nil, fmt.Errorf("stop the old agent: %w", err)
		}
		if err := WaitExit(ctx, c, hs.PID, 15*time.Second); err != nil {
			return res, nil, fmt.Errorf("the old agent: %w", err)
		}
	}

	// Start detached: its own session, stdin from /dev/null, output to its
	// log. The log's size before is where this start's lines begin.
	args := []string{"sh", "-c", `log=$1; shift; mkdir -p "$(dirname "$log")"; s=0; if [ -f "$log" ]; then s=$(wc -c <"$log"); fi; echo "$s"; setsid "$@" </dev/null >>"$log" 2>&1 &`, "sh",
		l.LogPath(), l.AgentPath(rbee.Version), "serve", "--home", l.RbeeDir(), "--name", opt.Name,
		"--worker-binary", l.WorkerPath(rbee.Version), "--engine", engineDir}
	if a.SoftwareGPU {
		args = append(args, "--software-gpu")
	}
	if opt.KeepAlive > 0 {
		args = append(args, "--keep-alive", opt.KeepAlive.String())
	}
	out, err := c.Run(ctx, args, nil)
	if err != nil {
		return res, nil, fmt.Errorf("start agent: %w", err)
	}
	logFrom, _ := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	res.Installed = true
	phase("start")
	var looked time.Time
	err = poll.Until(ctx, poll.Config{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond, MaxAttempts: 400, Timeout: 20 * time.Second}, func(ctx context.Context) (bool, error) {
		hctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		if hs, err = client.Handshake(hctx); err == nil {
			return true, nil
		}
		// An agent that cannot start says why and exits: its reason,
		// not a handshake that never comes, is the error.
		if time.Since(looked) >= 200*time.Millisecond {
			looked = time.Now()
			if why := agentExit(ctx, c, l.LogPath(), logFrom); why != "" {
				return false, poll.Permanent(fmt.Errorf("%w: %s (log: %s)", ErrAgentExited, why, l.LogPath()))
			}
		}
		return false, err
	})
	if errors.Is(err, ErrAgentExited) {
		return res, nil, err
	}
	if err != nil {
		tail, _ := c.Run(ctx, []string{"tail", "-n", "5", l.LogPath()}, nil)
		return res, nil, fmt.Errorf("agent did not answer the handshake: %w; its log ends: %s", err, strings.TrimSpace(string(tail)))
	}
	if hs.Version != rbee.Version || hs.Protocol != rbee.ProtocolVersion {
		return res, nil, fmt.Errorf("agent answers version %s protocol %d, want %s protocol %d", hs.Version, hs.Protocol, rbee.Version, rbee.ProtocolVersion)
	}
	phase("handshake")
	RemoveOldAgents(ctx, c, l, narrate)
	res.Handshake, res.Transport = hs, settle(ctx, c, l, client, mode(ctx))
	return res, client, nil
}

// ErrAgentExited reports an agent that exited as it started, saying why.
var ErrAgentExited = errors.New("the agent exited as it started")

// agentExit returns the last "rbee-hive: …" line the agent's log gained
// after offset from: what an agent that cannot start prints as it exits.
// "" when there is none (or the log cannot be read).
func agentExit(ctx context.Context, c *remote.Conn, log string, from int64) string {
	out, err := c.Run(ctx, []string{"sh", "-c", `tail -c +"$2" "$1" 2>/dev/null | grep '^rbee-hive: ' | tail -n 1 | cut -c 1-2000`,
		"sh", log, strconv.FormatInt(from+1, 10)}, nil)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// settle undoes a bridge taken by mistake: while the agent starts, a stale
// or not yet listening socket answers "connect failed", which OpenSSH
// also says when forwarding is off. With the agent up, a direct dial tells
// them apart; when it works, the bridge's idle connections are closed (its
// process ends) and streamlocal is used from then on.
func settle(ctx context.Context, c *remote.Conn, l Layout, client *hiveapi.Client, mode string) string {
	if mode != "bridge" {
		return mode
	}
	nc, err := c.DialUnix(ctx, l.Socket())
	if err != nil {
		return mode
	}
	nc.Close()
	client.Close()
	return "streamlocal"
}

// WaitExit waits until process pid on the host has exited.
func WaitExit(ctx context.Context, c *remote.Conn, pid int, timeout time.Duration) error {
	err := poll.Until(ctx, poll.Config{Timeout: timeout, MaxAttempts: 1000}, func(ctx context.Context) (bool, error) {
		// A zombie has exited too (its parent may never reap it).
		out, err := c.Run(ctx, []string{"sh", "-c", `s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo gone; exit 0; }; s=${s##*) }; case "$s" in Z*) echo gone;; *) echo alive;; esac`, "sh", strconv.Itoa(pid)}, nil)
		return err == nil && strings.TrimSpace(string(out)) == "gone", err
	})
	if err != nil {
		return fmt.Errorf("pid %d did not exit: %w", pid, err)
	}
	return nil
}

func platforms(a Artifacts) string {
	var ps []string
	for p := range a.Agents {
		ps = append(ps, p)
	}
	if len(ps) == 0 {
		return "none"
	}
	return strings.Join(ps, ", ")
}

func sizeOf(paths ...string) (uint64, error) {
	var n uint64
	for _, p := range paths {
		err := filepath.Walk(p, func(_ string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				n += uint64(fi.Size())
			}
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("size of %s: %w", p, err)
		}
	}
	return n, nil
}

// remoteSums returns the sha256 of each existing path on the host.
func remoteSums(ctx context.Context, c *remote.Conn, paths []string) (map[string]string, error) {
	argv := append([]string{"sh", "-c", `for f in "$@"; do [ -f "$f" ] && sha256sum "$f"; done; true`, "sh"}, paths...)
	out, err := c.Run(ctx, argv, nil)
	if err != nil {
		return nil, fmt.Errorf("checksums: %w", err)
	}
	sums := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		sum, p, ok := strings.Cut(line, "  ")
		if ok {
			sums[p] = sum
		}
	}
	return sums, nil
}

// file is one file to put on the host.
type file struct {
	src, dst string
	mode     os.FileMode
	sum      string // sha256 of src
	data     []byte // sent instead of src when set (a manifest made for the host)
}

// size is how many bytes f sends.
func (f file) size() (int64, error) {
	if f.data != nil {
		return int64(len(f.data)), nil
	}
	st, err := os.Stat(f.src)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// pushAll puts the agent, the worker and the engine bundle on the host. One
// remote command checks what is there already; only files whose checksum
// differs are uploaded, a few at a time over the one SFTP session, each to a
// temporary name, checked, then renamed. Of the bundle's CPU variants only
// those the host's CPU (flags) needs go (see hostBundle). The bundle's
// manifest goes last (a bundle with a manifest is complete), then its links.
func pushAll(ctx context.Context, c *remote.Conn, agentSrc, workerSrc, engineSrc string, l Layout, engineDir string, m *bundle.Manifest, flags []string, s *sender) ([]string, error) {
	files, err := binaryFiles(agentSrc, workerSrc, l)
	if err != nil {
		return nil, err
	}
	if m == nil { // the host's engine stays as it is: the binaries only
		have, err := remoteSums(ctx, c, dsts(files))
		if err != nil {
			return nil, err
		}
		sent, err := sendFiles(ctx, c, files, file{}, have, s) // no file goes last
		if err != nil {
			return nil, err
		}
		var names []string
		for _, f := range sent {
			names = append(names, map[bool]string{true: "rbee-hive", false: "rbee-worker"}[f.src == agentSrc])
		}
		return names, nil
	}
	bfiles, manifest, err := bundleFiles(engineSrc, engineDir, m)
	if err != nil {
		return nil, err
	}
	have, err := remoteSums(ctx, c, dsts(append(append(files, bfiles...), manifest)))
	if err != nil {
		return nil, err
	}
	bfiles, manifest, stale, err := hostBundle(bfiles, manifest, m, flags, have)
	if err != nil {
		return nil, err
	}
	if len(stale) > 0 {
		// Omitted variants left there with other contents: ggml would
		// load them, and the bundle check refuses unlisted libraries.
		if _, err := c.Run(ctx, append([]string{"rm", "-f", "--"}, stale...), nil); err != nil {
			return nil, fmt.Errorf("remove stale engine files: %w", err)
		}
	}
	sent, err := sendFiles(ctx, c, append(files, bfiles...), manifest, have, s)
	if err != nil {
		return nil, err
	}
	if err := linkBundle(ctx, c, engineDir, m); err != nil {
		return nil, err
	}
	var names []string
	engineFiles := 0
	for _, f := range sent {
		switch f.src {
		case agentSrc:
			names = append(names, "rbee-hive")
		case workerSrc:
			names = append(names, "rbee-worker")
		default:
			engineFiles++
		}
	}
	if engineFiles > 0 {
		names = append(names, fmt.Sprintf("engine %s (%d files)", m.Version, engineFiles))
	}
	return names, nil
}

// binaryFiles lists the agent and the worker for the host.
func binaryFiles(agentSrc, workerSrc string, l Layout) ([]file, error) {
	files := []file{{src: agentSrc, dst: l.AgentPath(rbee.Version), mode: 0o755}, {src: workerSrc, dst: l.WorkerPath(rbee.Version), mode: 0o755}}
	for i := range files {
		sum, err := cachedSHA256(files[i].src)
		if err != nil {
			return nil, fmt.Errorf("push %s: %w", files[i].src, err)
		}
		files[i].sum = sum
	}
	return files, nil
}

// hostBundle cuts a bundle's files (bundleFiles) to what a host whose CPU
// shows flags needs: of the CPU variant libraries, the one ggml picks there
// and the portable one (bundle.Manifest.CPUNeeds), plus any it holds
// already with the right checksum (have: a home shared by hosts of other
// CPUs keeps theirs). When some are left out, the manifest is made for the
// host, listing them as omitted; stale are the paths there of omitted
// variants with other contents, to remove before the manifest goes.
func hostBundle(files []file, manifest file, m *bundle.Manifest, flags []string, have map[string]string) (keep []file, last file, stale []string, err error) {
	dst := map[string]file{}
	for _, f := range files {
		dst[path.Base(f.dst)] = f
	}
	needs := m.CPUNeeds(flags)
	pm, err := m.Partial(func(bf bundle.File) bool {
		return (needs(bf.Name) && !bundle.Unused(bf.Name)) || have[dst[bf.Name].dst] == bf.SHA256
	})
	if err != nil {
		return nil, file{}, nil, fmt.Errorf("engine bundle: %w", err)
	}
	if len(pm.Omitted) == len(m.Omitted) {
		return files, manifest, nil, nil
	}
	for _, bf := range pm.Files {
		keep = append(keep, dst[bf.Name])
	}
	for _, bf := range pm.Omitted {
		if f, ok := dst[bf.Name]; ok && have[f.dst] != "" {
			stale = append(stale, f.dst)
		}
	}
	data, err := pm.Marshal()
	if err != nil {
		return nil, file{}, nil, err
	}
	sum := sha256.Sum256(data)
	manifest.data, manifest.sum = data, hex.EncodeToString(sum[:])
	return keep, manifest, stale, nil
}

// dsts lists where files go on the host.
func dsts(files []file) []string {
	var out []string
	for _, f := range files {
		out = append(out, f.dst)
	}
	return out
}

// bundleFiles lists a bundle's files for dst on the host, and its manifest.
func bundleFiles(src, dst string, m *bundle.Manifest) ([]file, file, error) {
	var files []file
	for _, bf := range m.Files {
		files = append(files, file{src: filepath.Join(src, bf.Name), dst: path.Join(dst, bf.Name), mode: bf.Mode(), sum: bf.SHA256})
	}
	manifest := file{src: filepath.Join(src, bundle.ManifestName), dst: path.Join(dst, bundle.ManifestName), mode: 0o644}
	sum, err := cachedSHA256(manifest.src)
	manifest.sum = sum
	return files, manifest, err
}

// pushFiles uploads the files whose checksum on the host differs (one
// remote command checks them all), then last, and returns what it sent
// besides last.
func pushFiles(ctx context.Context, c *remote.Conn, files []file, last file, s *sender) ([]file, error) {
	have, err := remoteSums(ctx, c, dsts(append(files, last)))
	if err != nil {
		return nil, err
	}
	return sendFiles(ctx, c, files, last, have, s)
}

// sendFiles uploads the files whose checksum differs from have's, then
// last, and returns what it sent besides last.
func sendFiles(ctx context.Context, c *remote.Conn, files []file, last file, have map[string]string, s *sender) ([]file, error) {
	var todo []file
	for _, f := range files {
		if have[f.dst] != f.sum {
			todo = append(todo, f)
		}
	}
	sendLast := have[last.dst] != last.sum
	planned := todo
	if sendLast {
		planned = append(slices.Clip(todo), last)
	}
	for _, f := range planned {
		n, err := s.wireSize(f)
		if err != nil {
			return nil, err
		}
		s.mt.plan(n)
	}
	var packs, plain []file
	for _, f := range todo {
		if s.pack != "" && canPack(f) {
			packs = append(packs, f)
		} else {
			plain = append(plain, f)
		}
	}
	switch err := sendPacked(ctx, c, packs, s.pack, s.mt); {
	case errors.Is(err, errUnpacked):
		for _, f := range packs {
			_ = os.Remove(filepath.Join(s.pack, f.sum+".gz")) // a bad copy among them: all go as they are
		}
		plain = append(plain, packs...)
	case errors.Is(err, errUnpack):
		plain = append(plain, packs...) // as they are, over SFTP
	case err != nil:
		return nil, err
	}
	if err := uploadAll(ctx, c, plain, s); err != nil {
		return nil, err
	}
	if sendLast {
		if err := uploadOne(ctx, c, last, s); err != nil {
			return nil, err
		}
	}
	s.mt.finish()
	return todo, nil
}

// sender is how a push sends: counted on a meter, gzipped from a cache
// directory when pack is set.
type sender struct {
	mt   *meter
	pack string
}

// wireSize is how many bytes f takes on the link: its gzipped copy's
// size when it goes gzipped (the copy is made now, once per content).
func (s *sender) wireSize(f file) (int64, error) {
	if s.pack != "" && canPack(f) {
		if _, n, err := packed(s.pack, f); err == nil {
			return n, nil
		}
	}
	n, err := f.size()
	if err != nil {
		return 0, fmt.Errorf("push %s: %w", filepath.Base(f.src), err)
	}
	return n, nil
}

// meter counts the bytes of a push for its progress report; a nil meter
// or one without report counts nothing.
type meter struct {
	report func(done, total int64)

	mu    sync.Mutex
	total int64
	done  int64
	last  time.Time
}

// plan adds n bytes to the push's total.
func (m *meter) plan(n int64) {
	if m == nil || m.report == nil {
		return
	}
	m.mu.Lock()
	m.total += n
	m.mu.Unlock()
}

// add counts n bytes sent, reporting at most about five times a second.
func (m *meter) add(n int) {
	if m == nil || m.report == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.done += int64(n)
	if now := time.Now(); now.Sub(m.last) >= 200*time.Millisecond {
		m.last = now
		m.report(m.done, m.total)
	}
}

// finish reports the end of a push that sent anything.
func (m *meter) finish() {
	if m == nil || m.report == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.total > 0 {
		m.report(m.done, m.total)
	}
}

// counted counts what is read through it on a meter.
type counted struct {
	r  io.Reader
	mt *meter
}

func (c counted) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.mt.add(n)
	return n, err
}

// uploadAll uploads files, four at a time.
func uploadAll(ctx context.Context, c *remote.Conn, files []file, s *sender) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, 4)
	)
	for _, f := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := uploadOne(ctx, c, f, s); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				cancel()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func uploadOne(ctx context.Context, c *remote.Conn, f file, s *sender) error {
	var (
		in   io.Reader
		size int64
	)
	if f.data != nil {
		in, size = bytes.NewReader(f.data), int64(len(f.data))
	} else {
		fh, err := os.Open(f.src)
		if err != nil {
			return fmt.Errorf("push %s: %w", f.src, err)
		}
		defer fh.Close()
		st, err := fh.Stat()
		if err != nil {
			return fmt.Errorf("push %s: %w", f.src, err)
		}
		in, size = fh, st.Size()
	}
	got, err := c.Upload(ctx, counted{in, s.mt}, size, f.dst, f.mode)
	if err != nil {
		return fmt.Errorf("push %s: %w", filepath.Base(f.src), err)
	}
	if got != f.sum {
		return fmt.Errorf("push %s: checksum %s of what was sent, %s expected (the file changed while rbee read it?)", filepath.Base(f.src), got, f.sum)
	}
	return nil
}

var (
	shaMu    sync.Mutex
	shaCache = map[string]string{} // path|size|mtime → sha256
)

// cachedSHA256 hashes a local file once per content (path, size, mtime):
// rbee up on many hosts hashes the agent once.
func cachedSHA256(p string) (string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	key := fmt.Sprintf("%s|%d|%d", p, st.Size(), st.ModTime().UnixNano())
	shaMu.Lock()
	sum, ok := shaCache[key]
	shaMu.Unlock()
	if ok {
		return sum, nil
	}
	if sum, err = modelfile.Hash(context.Background(), p); err != nil {
		return "", err
	}
	shaMu.Lock()
	shaCache[key] = sum
	shaMu.Unlock()
	return sum, nil
}

// PushBundle puts a prepared engine bundle on the host at dst: only the
// files whose checksum differs are sent, the manifest last, then its links.
// It returns how many files were sent; progress, when set, hears the bytes.
func PushBundle(ctx context.Context, c *remote.Conn, src, dst string, progress func(done, total int64)) (int, error) {
	m, err := bundle.ValidateOnce(src)
	if err != nil {
		return 0, fmt.Errorf("engine bundle: %w", err)
	}
	files, manifest, err := bundleFiles(src, dst, m)
	if err != nil {
		return 0, err
	}
	sent, err := pushFiles(ctx, c, files, manifest, &sender{mt: &meter{report: progress}})
	if err != nil {
		return 0, err
	}
	if err := pruneBundle(c, dst, m); err != nil {
		return 0, err
	}
	return len(sent), linkBundle(ctx, c, dst, m)
}

// EngineTarget is where bundle m goes on the host: its variant's
// directory, unless that holds a different bundle, which is never
// overwritten — m then gets a directory of its own (the variant and a
// digest of its files). keep says the variant's directory already holds
// every file of m, and more (a bundle that adds to it, such as the one with
// the RPC backend): it is used as it is and nothing of m is sent, where
// pushing m's manifest over it would leave files it does not list (an
// agent that then refused its engine, and a host bricked until someone
// removed the directory by hand).
func EngineTarget(ctx context.Context, c *remote.Conn, l Layout, m *bundle.Manifest) (dir string, keep bool, err error) {
	dir = l.EngineDir(bundle.Variant(m))
	sc, release, err := c.SFTP()
	if err != nil {
		return "", false, fmt.Errorf("engine bundle: %w", err)
	}
	defer release()
	f, err := sc.Open(path.Join(dir, bundle.ManifestName))
	if err != nil {
		return dir, false, nil // none there (or unreadable: the push says so)
	}
	defer f.Close()
	var there bundle.Manifest
	if err := json.NewDecoder(io.LimitReader(f, 4<<20)).Decode(&there); err != nil {
		return dir, false, nil // a broken manifest: the push replaces it
	}
	switch bundleRelation(m, &there) {
	case sameOrLess:
		return dir, false, nil
	case superset:
		return dir, true, nil
	}
	return l.EngineDir(bundle.Variant(m) + "-" + bundleDigest(m)), false, nil
}

type relation int

const (
	sameOrLess relation = iota // there is m, or a part of it: m completes it
	superset                   // there holds all of m and more
	different                  // files of the same name differ, or each lacks some of the other's
)

// bundleRelation compares two manifests of one variant by their files
// (present and omitted: a host's copy leaves out CPU variants it cannot
// run).
func bundleRelation(m, there *bundle.Manifest) relation {
	ours, theirs := fileSums(m), fileSums(there)
	for name, sum := range ours {
		if t, ok := theirs[name]; ok && t != sum {
			return different
		}
	}
	missing := 0
	for name := range ours {
		if _, ok := theirs[name]; !ok {
			missing++
		}
	}
	extra := len(theirs) - (len(ours) - missing)
	switch {
	case extra == 0:
		return sameOrLess
	case missing == 0:
		return superset
	}
	return different
}

func fileSums(m *bundle.Manifest) map[string]string {
	out := map[string]string{}
	for _, f := range append(slices.Clone(m.Files), m.Omitted...) {
		out[f.Name] = f.SHA256
	}
	return out
}

// bundleDigest names a bundle by its files: 8 hex digits.
func bundleDigest(m *bundle.Manifest) string {
	h := sha256.New()
	names := slices.Sorted(maps.Keys(fileSums(m)))
	sums := fileSums(m)
	for _, n := range names {
		fmt.Fprintf(h, "%s %s\n", n, sums[n])
	}
	return hex.EncodeToString(h.Sum(nil))[:8]
}

// pruneBundle removes from a bundle directory on the host the regular
// files its new manifest does not list: what an earlier bundle of the same
// name left (a bundle with the RPC backend replaced by one without).
func pruneBundle(c *remote.Conn, dst string, m *bundle.Manifest) error {
	sc, release, err := c.SFTP()
	if err != nil {
		return fmt.Errorf("engine bundle: %w", err)
	}
	defer release()
	keep := map[string]bool{bundle.ManifestName: true}
	for _, f := range m.Files {
		keep[f.Name] = true
	}
	for name := range m.Links {
		keep[name] = true
	}
	dir := strings.TrimPrefix(dst, "~/") // SFTP paths are relative to the home
	entries, err := sc.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("engine bundle: list %s: %w", dst, err)
	}
	for _, e := range entries {
		// Uploads in flight (NAME.tmp-…) and hidden files are not the
		// bundle's.
		if keep[e.Name()] || !e.Mode().IsRegular() || strings.HasPrefix(e.Name(), ".") || strings.Contains(e.Name(), ".tmp-") {
			continue
		}
		if err := sc.Remove(path.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("engine bundle: remove %s left by an earlier bundle: %w", e.Name(), err)
		}
	}
	return nil
}

// linkBundle recreates a bundle's plain-name links on the host.
func linkBundle(ctx context.Context, c *remote.Conn, dst string, m *bundle.Manifest) error {
	if len(m.Links) == 0 {
		return nil
	}
	argv := []string{"sh", "-c", `dir=$1; shift; while [ $# -ge 2 ]; do ln -sfn "$2" "$dir/$1"; shift 2; done`, "sh", dst}
	for name, target := range m.Links {
		if strings.Contains(name, "/") || strings.Contains(target, "/") {
			return errors.New("engine bundle: links must stay inside the bundle")
		}
		argv = append(argv, name, target)
	}
	if _, err := c.Run(ctx, argv, nil); err != nil {
		return fmt.Errorf("engine bundle links: %w", err)
	}
	return nil
}
