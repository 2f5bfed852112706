package doctor

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/rbee-dev/rbee/provision"
	"github.com/rbee-dev/rbee/remote"
)

// Verdict is how a check went.
type Verdict string

const (
	OK   Verdict = "ok"
	Warn Verdict = "warn" // works, but worse than it could
	Fail Verdict = "fail" // rbee will not work there until this is fixed
	Skip Verdict = "skip" // does not apply, or could not be checked
)

// Check is one line of a report.
type Check struct {
	Name    string  `json:"name"`
	Verdict Verdict `json:"verdict"`
	Detail  string  `json:"detail"`
	Hint    string  `json:"hint,omitempty"`
}

// Report is what Run found about one machine.
type Report struct {
	Target string  `json:"target"` // "localhost", or user@host:port as dialed
	Checks []Check `json:"checks"`
	Facts  Facts   `json:"facts"`
}

// Facts are the probe's raw findings, for tools (hive status --json).
type Facts struct {
	OS        string `json:"os,omitempty"`      // linux
	Arch      string `json:"arch,omitempty"`    // amd64
	Machine   string `json:"machine,omitempty"` // uname -m
	Distro    string `json:"distro,omitempty"`  // PRETTY_NAME of /etc/os-release
	Libc      string `json:"libc,omitempty"`    // "glibc 2.36", "musl"
	Glibc     string `json:"glibc,omitempty"`   // "2.36"
	Libraries []Lib  `json:"libraries"`         // each library the engine loads by name
	Home      string `json:"home,omitempty"`    // the user's home
	// Engine is the engine build rbee gives the machine: cuda, vulkan or
	// cpu (the gpu engine check says why).
	Engine       string   `json:"engine,omitempty"`
	HomeWritable bool     `json:"home_writable"` // test -w on the home (and ~/.rbee when present)
	FreeBytes    uint64   `json:"free_bytes"`    // free in the home's file system
	AuthMethod   string   `json:"auth_method,omitempty"`
	HostKey      string   `json:"host_key,omitempty"` // "known", "recorded", "unknown", "changed"
	Forwarding   string   `json:"forwarding,omitempty"`
	Driver       string   `json:"driver,omitempty"` // NVIDIA driver version
	GPUs         []GPU    `json:"gpus"`
	CUDARuntime  []Lib    `json:"cuda_runtime"`
	Installed    []string `json:"installed"` // versions under ~/.rbee/hive/
	// Engines are the engine bundles installed under ~/.rbee/engines/,
	// each checked against its manifest.
	Engines []EngineFact `json:"engines"`
	// AgentPID is the hive agent's that runs; 0 when none does.
	AgentPID int `json:"agent_pid,omitempty"`
	// AgentError is why the agent's last start failed, else the last
	// warning in its log.
	AgentError string `json:"agent_error,omitempty"`
}

// EngineFact is one installed engine bundle.
type EngineFact struct {
	Dir      string   `json:"dir"`
	Variant  string   `json:"variant,omitempty"` // v0.5.0-cpu
	Backends []string `json:"backends,omitempty"`
	Problem  string   `json:"problem,omitempty"` // what does not match its manifest; "" = intact
}

// Lib is a shared library looked up the way the dynamic loader would.
type Lib struct {
	Name string `json:"name"`           // libffi.so.8
	Path string `json:"path,omitempty"` // where it was found; "" when missing
}

// GPU is one NVIDIA device as nvidia-smi lists it.
type GPU struct {
	Index    int    `json:"index"`
	Name     string `json:"name"`
	MemoryMB int64  `json:"memory_mb"`
}

// Failed reports whether any check failed.
func (r *Report) Failed() bool { return r.count(Fail) > 0 }

func (r *Report) count(v Verdict) int {
	n := 0
	for _, c := range r.Checks {
		if c.Verdict == v {
			n++
		}
	}
	return n
}

// Check returns the check called name.
func (r *Report) Check(name string) (Check, bool) {
	for _, c := range r.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return Check{}, false
}

func (r *Report) add(name string, v Verdict, hint, format string, args ...any) {
	r.Checks = append(r.Checks, Check{Name: name, Verdict: v, Detail: fmt.Sprintf(format, args...), Hint: hint})
}

// Options say what to check.
type Options struct {
	// Target is the host to check over SSH; nil checks this machine.
	Target *remote.Target
	// Config is how to reach Target (known_hosts, ssh config, agent).
	Config remote.Config
	// Needs is what the agent and engine require; the zero value takes
	// DefaultNeeds.
	Needs Needs
	// Version is this rbee's version, to say whether the host has it.
	Version string
	// Hive is the hive's name, for the commands hints give ("" = HIVE, or
	// localhost on this machine).
	Hive string
	// Home is rbee's home on this machine (RBEE_HOME), whose engine
	// bundles and local agent a check of this machine looks at; "" leaves
	// them out. Engine is the bundle the local hive is given (RBEE_ENGINE).
	Home, Engine string
}

// Run checks the machine Options name. It returns a report even when the
// host cannot be reached (the reach check says where it stopped); the
// error is only ctx's. ctx bounds the whole run.
func Run(ctx context.Context, opt Options) (*Report, error) {
	if opt.Needs.Glibc == "" {
		opt.Needs = DefaultNeeds()
	}
	rep := &Report{Target: "localhost", Facts: Facts{GPUs: []GPU{}, Libraries: []Lib{}, CUDARuntime: []Lib{}, Installed: []string{}, Engines: []EngineFact{}}}
	var run runner = localRunner{}
	if opt.Target != nil {
		c, ok := reach(ctx, rep, *opt.Target, opt.Config)
		if err := ctx.Err(); err != nil {
			if c != nil {
				c.Close()
			}
			return nil, err
		}
		if !ok {
			skipRest(rep)
			return rep, nil
		}
		defer c.Close()
		run = c
	} else {
		for _, name := range []string{checkReach, checkHostKey, checkAuth, checkForwarding} {
			rep.add(name, Skip, "", "this machine: no SSH")
		}
	}
	// The script goes on stdin: remote refuses newlines in arguments.
	out, err := run.Run(ctx, []string{"sh", "-s"}, strings.NewReader(probeScript))
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return nil, cerr
		}
		rep.add(checkProbe, Fail, "the probe needs a POSIX sh with uname, df and test on the host",
			"probe script: %v", err)
		skipRest(rep)
		return rep, nil
	}
	p := parseProbe(out)
	evaluate(rep, p, opt)
	checkEngineChoice(ctx, rep, run)
	if c, ok := run.(*remote.Conn); ok && p.get("agent_socket") == "yes" {
		checkAgentSocket(ctx, rep, c)
	}
	if err := checkHive(ctx, rep, run, opt); err != nil {
		return nil, err
	}
	slices.SortStableFunc(rep.Checks, func(a, b Check) int {
		return slices.Index(reportOrder, a.Name) - slices.Index(reportOrder, b.Name)
	})
	return rep, nil
}

// checkHive checks what an installed hive left: its engine bundles against
// their manifests, and its agent (does it run, why did its last start
// fail). On a host the constant hiveScript reads them; on this machine
// they are read here, from Options.Home. Only ctx's error is returned.
func checkHive(ctx context.Context, rep *Report, run runner, opt Options) error {
	hive := cmp.Or(opt.Hive, "HIVE")
	if _, local := run.(localRunner); local {
		if opt.Home == "" {
			rep.add(checkEngines, Skip, "", "rbee's home was not given")
			rep.add(checkAgent, Skip, "", "rbee's home was not given")
			return nil
		}
		hive = cmp.Or(opt.Hive, "localhost")
		evalEngines(rep, hive, localEngines(opt.Home, opt.Engine))
		evalAgent(rep, hive, localAgent(opt.Home))
		return nil
	}
	out, err := run.Run(ctx, []string{"sh", "-s"}, strings.NewReader(hiveScript))
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		rep.add(checkEngines, Warn, "", "could not read ~/.rbee: %v", err)
		rep.add(checkAgent, Warn, "", "could not read ~/.rbee: %v", err)
		return nil
	}
	evalEngines(rep, hive, parseEngines(out))
	p := parseProbe(out)
	st := agentState{log: p["agent_log"], logRead: p.get("agent_log_read") == "yes"}
	st.pid, _ = strconv.Atoi(p.get("agent_pid"))
	evalAgent(rep, hive, st)
	return nil
}

// checkEngineChoice says which engine build rbee gives this machine and
// why: what the probe a connection runs finds of its GPUs (NVIDIA driver
// and CUDA runtime, Vulkan loader and drivers, render nodes, arch).
func checkEngineChoice(ctx context.Context, rep *Report, run runner) {
	p, err := provision.ProbeWith(ctx, func(ctx context.Context, argv []string) ([]byte, error) {
		return run.Run(ctx, argv, nil)
	})
	if err != nil {
		rep.add(checkEngine, Warn, "", "the GPU probe failed: %v", err)
		return
	}
	c := provision.ChooseEngine(p, os.Getenv("RBEE_SOFTWARE_GPU") == "1")
	rep.Facts.Engine = c.Kind()
	if c.GPU == "" && (p.NVIDIA != "" || p.RenderNodes > 0) {
		rep.add(checkEngine, Warn, "see the reason: a GPU is there that no engine build can use yet", "the %s build: %s", c.Kind(), c.Why)
		return
	}
	rep.add(checkEngine, OK, "", "the %s build: %s", c.Kind(), c.Why)
}

// checkAgentSocket settles the forwarding check where an agent already
// runs: a streamlocal dial to its socket is exactly what rbee does.
func checkAgentSocket(ctx context.Context, rep *Report, c *remote.Conn) {
	const sock = "~/.rbee/run/hive.sock"
	nc, err := c.DialUnix(ctx, sock)
	switch {
	case err == nil:
		nc.Close()
		rep.Facts.Forwarding = "allowed"
		rep.set(checkForwarding, OK, "", "allowed: a forwarded connection reached the running agent's socket")
	case errors.Is(err, remote.ErrForwardingRefused) && rep.Facts.Forwarding == "allowed":
		rep.set(checkForwarding, Warn, "check that the agent runs (rbee hive status), and AllowStreamLocalForwarding yes in sshd_config",
			"tcp forwarding is allowed, but the agent's socket could not be reached through it: %v", err)
	case errors.Is(err, remote.ErrForwardingRefused):
		rep.Facts.Forwarding = "refused"
	}
}

// set replaces the check called name.
func (r *Report) set(name string, v Verdict, hint, format string, args ...any) {
	r.Checks = slices.DeleteFunc(r.Checks, func(c Check) bool { return c.Name == name })
	r.add(name, v, hint, format, args...)
}

// Check names, in report order.
const (
	checkReach      = "reach"
	checkHostKey    = "host key"
	checkAuth       = "auth"
	checkForwarding = "forwarding"
	checkProbe      = "probe"
	checkPlatform   = "platform"
	checkGlibc      = "glibc"
	checkLibs       = "libraries"
	checkDisk       = "disk"
	checkHome       = "home"
	checkGPU        = "gpu"
	checkCUDA       = "cuda runtime"
	checkEngine     = "gpu engine"
	checkInstalled  = "installed"
	checkEngines    = "engines"
	checkAgent      = "agent"
)

var allChecks = []string{checkReach, checkHostKey, checkAuth, checkForwarding, checkPlatform, checkGlibc,
	checkLibs, checkDisk, checkHome, checkGPU, checkCUDA, checkEngine, checkInstalled, checkEngines, checkAgent}

var reportOrder = slices.Insert(slices.Clone(allChecks), 4, checkProbe)

// skipRest marks every check not yet reported as skipped.
func skipRest(rep *Report) {
	for _, name := range allChecks {
		if _, ok := rep.Check(name); !ok {
			rep.add(name, Skip, "", "not checked: the host could not be probed")
		}
	}
}

// runner runs argv where the checks look: remote.Conn, or this machine.
type runner interface {
	Run(ctx context.Context, argv []string, stdin io.Reader) ([]byte, error)
}

type localRunner struct{}

func (localRunner) Run(ctx context.Context, argv []string, stdin io.Reader) ([]byte, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = stdin
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("run %s: %w", argv[0], err)
	}
	return out, nil
}

// WriteText prints the report for people: one line per check, a hint
// line under each that has one.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "rbee doctor: %s\n", r.Target)
	for _, c := range r.Checks {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", c.Verdict, c.Name, c.Detail)
		if c.Hint != "" {
			fmt.Fprintf(tw, "  \t\thint: %s\n", c.Hint)
		}
	}
	var sum []string
	for _, v := range []Verdict{Fail, Warn} {
		if n := r.count(v); n > 0 {
			sum = append(sum, fmt.Sprintf("%d %s", n, v))
		}
	}
	if len(sum) == 0 {
		sum = append(sum, "no problem found")
	}
	fmt.Fprintf(tw, "%s\n", strings.Join(sum, ", "))
	return tw.Flush()
}

// WriteJSON prints the report as one JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
