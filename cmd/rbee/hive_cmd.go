package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/inventory"
	"github.com/rbee-dev/rbee/queen"
	"github.com/rbee-dev/rbee/queenapi"
)

type hiveCmd struct {
	Add    hiveAddCmd    `cmd:"" help:"Add a host as a hive: connect over SSH, install the agent, probe its devices."`
	Ls     hiveLsCmd     `cmd:"" help:"List the hives."`
	Rm     hiveRmCmd     `cmd:"" help:"Remove a hive (--purge also deletes rbee from the host)."`
	Status hiveStatusCmd `cmd:"" help:"Contact a hive and show its devices and workers."`
	Logs   hiveLogsCmd   `cmd:"" help:"Print the end of a hive agent's log."`
}

func (hiveCmd) Help() string {
	return `Hives are the hosts rbee runs models on: this machine (localhost) and the
SSH hosts of the inventory, now ` + inventory.PathFor(os.Getenv("RBEE_HOME")) + ` ($RBEE_INVENTORY; a home other than ~/.rbee keeps its own).

Examples:
  rbee hive add me@gpu-box me@10.0.0.7:2222 --accept-new-host-key
  rbee hive ls`
}

type hiveAddCmd struct {
	Targets          []string `arg:"" name:"target" help:"USER@HOST[:PORT], or an alias from ~/.ssh/config; several are added in parallel, one line each."`
	Name             string   `help:"Hive name, with a single target (default: the host's first label)."`
	Identity         string   `type:"path" help:"Private key to log in with."`
	AcceptNewHostKey bool     `name:"accept-new-host-key" help:"Trust and record the host key of a host never seen before (like OpenSSH accept-new); a changed key is always refused."`
	DryRun           bool     `name:"dry-run" help:"Connect and print the install plan (what would be uploaded, where, how many bytes); change nothing, not even known_hosts."`
	JSON             bool     `help:"Print every event as one JSON line."`
}

func (c *hiveAddCmd) Help() string {
	return `Connects over SSH, uploads the agent, the worker and the engine bundle (only
what the host lacks, by checksum), starts the agent, probes the devices, and
records the hive in the inventory, now ` + inventory.PathFor(os.Getenv("RBEE_HOME")) + ` ($RBEE_INVENTORY; a home other than ~/.rbee keeps its own).
Host keys are checked against ` + knownHostsPath() + `.

Examples:
  rbee hive add me@gpu-box --accept-new-host-key
  rbee hive add me@a me@b:2222 rack-03 --dry-run`
}

// knownHostsPath is the known_hosts file the queen checks host keys
// against, for help texts.
func knownHostsPath() string {
	if p := os.Getenv("RBEE_KNOWN_HOSTS"); p != "" {
		return p + " ($RBEE_KNOWN_HOSTS)"
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".ssh", "known_hosts") + " ($RBEE_KNOWN_HOSTS overrides)"
}

// Validate runs before anything is started (kong calls it).
func (c *hiveAddCmd) Validate() error {
	if c.Name != "" && len(c.Targets) > 1 {
		return fmt.Errorf("--name names one hive, and %d targets were given: add that host alone, or drop --name (each host is named after its first label)", len(c.Targets))
	}
	return nil
}

// parseTarget splits USER@HOST[:PORT], where HOST may be an IPv6 address
// in brackets ([::1]:2222) or, without a port, bare (::1). It refuses what
// would otherwise be read as something else: an empty user or host, a
// port that is not 1-65535.
func parseTarget(s string) (user, host string, port int, err error) {
	rest := s
	if u, r, ok := strings.Cut(s, "@"); ok {
		if u == "" {
			return "", "", 0, fmt.Errorf("nothing before '@': write USER@HOST, or HOST alone to log in as yourself (or as ~/.ssh/config says)")
		}
		user, rest = u, r
	}
	if rest == "" {
		return "", "", 0, fmt.Errorf("no host: write USER@HOST[:PORT]")
	}
	var p string
	hasPort := false
	switch {
	case strings.HasPrefix(rest, "["):
		end := strings.Index(rest, "]")
		if end < 0 {
			return "", "", 0, fmt.Errorf("no ']' after the IPv6 address: write [ADDRESS]:PORT, e.g. [::1]:2222")
		}
		host, p = rest[1:end], rest[end+1:]
		if p != "" {
			if !strings.HasPrefix(p, ":") {
				return "", "", 0, fmt.Errorf("%q after ']': write [ADDRESS]:PORT, e.g. [::1]:2222", p)
			}
			p, hasPort = p[1:], true
		}
		if ip := net.ParseIP(host); ip == nil || ip.To4() != nil {
			return "", "", 0, fmt.Errorf("%q in brackets is not an IPv6 address: brackets are for IPv6 only", host)
		}
	case strings.Count(rest, ":") > 1:
		if ip := net.ParseIP(rest); ip == nil {
			return "", "", 0, fmt.Errorf("%q is neither HOST:PORT nor an IPv6 address: write an IPv6 address with a port as [ADDRESS]:PORT", rest)
		}
		host = rest
	default:
		host, p, hasPort = strings.Cut(rest, ":")
	}
	if host == "" {
		return "", "", 0, fmt.Errorf("no host: write USER@HOST[:PORT]")
	}
	if hasPort {
		n, err := strconv.Atoi(p)
		if err != nil || strings.HasPrefix(p, "+") || strings.HasPrefix(p, "-") {
			return "", "", 0, fmt.Errorf("port %q is not a number: write HOST:PORT with PORT 1-65535, or leave it out for 22 (or ~/.ssh/config's Port)", p)
		}
		if n < 1 || n > 65535 {
			return "", "", 0, fmt.Errorf("port %d is out of range: use 1-65535, or leave it out for 22 (or ~/.ssh/config's Port)", n)
		}
		port = n
	}
	return user, host, port, nil
}

// defaultName derives a hive name from a host: its first label, or the
// address with dots and colons as dashes.
func defaultName(host string) string {
	name := strings.ToLower(host)
	if strings.Contains(name, ":") { // IPv6
		name = strings.Trim(strings.ReplaceAll(name, ":", "-"), "-")
		for strings.Contains(name, "--") {
			name = strings.ReplaceAll(name, "--", "-")
		}
		return name
	}
	if strings.Trim(name, "0123456789.") != "" {
		name, _, _ = strings.Cut(name, ".")
	}
	return strings.NewReplacer(".", "-", "_", "-").Replace(name)
}

// addTarget is one target of hive add, as the queen will be asked.
type addTarget struct {
	target string
	req    queenapi.AddHiveRequest
	err    error // refused here, before the queen or any host hears of it
}

// targets checks every target: its syntax, its name, and that no two
// targets take the same name.
func (c *hiveAddCmd) targets() []addTarget {
	out := make([]addTarget, len(c.Targets))
	taken := map[string]string{} // name -> target
	for i, tg := range c.Targets {
		t := &out[i]
		t.target = tg
		user, host, port, err := parseTarget(tg)
		if err != nil {
			t.err = exitf(rbee.ExitUsage, "", "hive add %s: %w", tg, err)
			continue
		}
		t.req = queenapi.AddHiveRequest{Name: c.Name, Host: host, User: user, Port: port, Identity: c.Identity,
			AcceptNewHostKey: c.AcceptNewHostKey, DryRun: c.DryRun}
		if t.req.Name == "" {
			t.req.Name = defaultName(host)
		}
		if err := queen.ValidateAdd(t.req); err != nil {
			t.err = exitf(rbee.ExitUsage, rbee.HintOf(err), "hive add %s: %w", tg, err)
			continue
		}
		if other, dup := taken[t.req.Name]; dup {
			t.err = exitf(rbee.ExitUsage, "add it on its own with --name", "hive add %s: it would be named %s, as %s is", tg, t.req.Name, other)
			continue
		}
		taken[t.req.Name] = tg
	}
	return out
}

func (c *hiveAddCmd) Run(ctx context.Context, g *globals) error {
	if c.Identity != "" {
		if _, err := os.Stat(c.Identity); err != nil {
			return exitf(rbee.ExitNotFound, "", "identity file: %v", err)
		}
	}
	ts := c.targets()
	if len(ts) == 1 {
		return c.addOne(ctx, g, ts[0])
	}
	return c.addMany(ctx, g, ts)
}

// addOne adds one host with the whole narration, as a job shows it.
func (c *hiveAddCmd) addOne(ctx context.Context, g *globals, t addTarget) error {
	if t.err != nil {
		return t.err
	}
	p := &printer{json: c.JSON, out: bufio.NewWriter(os.Stdout)}
	qc, err := connect(ctx, g, p.keeper)
	if err != nil {
		return err
	}
	s, err := qc.AddHive(ctx, t.req)
	if err := follow(ctx, g, s, err, p, false); err != nil {
		return err
	}
	switch {
	case c.JSON:
	case c.DryRun:
		fmt.Printf("hive %s: dry run, nothing changed\n", t.req.Name)
	default:
		fmt.Printf("hive %s is ready\n", t.req.Name)
	}
	return nil
}

// addMany adds the hosts in parallel, one line per host on stdout as each
// ends (or its plan, with --dry-run), and fails when any failed.
func (c *hiveAddCmd) addMany(ctx context.Context, g *globals, ts []addTarget) error {
	out := &lockedLines{w: bufio.NewWriter(os.Stdout)}
	errs := make([]error, len(ts))
	var qc *queenapi.Client
	for i, t := range ts {
		if t.err != nil {
			errs[i] = t.err
			out.result(c.JSON, t, t.err)
		} else if qc == nil {
			p := &printer{out: bufio.NewWriter(os.Stderr)}
			client, err := connect(ctx, g, p.keeper)
			if err != nil {
				return err
			}
			qc = client
		}
	}
	var wg sync.WaitGroup
	for i, t := range ts {
		if t.err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.addQuiet(ctx, g, qc, t, out)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var failed []string
	code := rbee.ExitOK
	for i, err := range errs {
		if err == nil {
			continue
		}
		failed = append(failed, ts[i].target)
		var ee *exitError
		ec := rbee.ExitError
		if errors.As(err, &ee) {
			ec = ee.code
		}
		if code == rbee.ExitOK || code == ec {
			code = ec
		} else {
			code = rbee.ExitError // failures of different kinds
		}
	}
	if len(failed) > 0 {
		return exitf(code, "", "hive add: %d of %d host(s) failed: %s", len(failed), len(ts), strings.Join(failed, ", "))
	}
	return nil
}

// addQuiet adds one host of several: its narration is dropped, its result
// (or plan) is printed as lines of its own.
func (c *hiveAddCmd) addQuiet(ctx context.Context, g *globals, qc *queenapi.Client, t addTarget, out *lockedLines) error {
	s, err := qc.AddHive(ctx, t.req)
	var res addResult
	err = follow(ctx, g, s, err, &printer{json: false, quiet: true, out: bufio.NewWriter(io.Discard), collect: &res}, false)
	if res.plan != nil {
		out.plan(c.JSON, t.req.Name, res.plan)
	}
	if err != nil {
		out.result(c.JSON, t, err)
		return err
	}
	msg := "added"
	if c.DryRun {
		msg = "dry run, nothing changed"
	} else {
		var parts []string
		if res.awake != "" {
			parts = append(parts, res.awake)
		}
		if res.devices != "" {
			parts = append(parts, res.devices)
		}
		if len(parts) > 0 {
			msg += ": " + strings.Join(parts, ", ")
		}
	}
	out.line(c.JSON, rbee.Narrate("hive "+t.req.Name, "hive_added", msg))
	return nil
}

// addResult is what addQuiet keeps of a hive add's events.
type addResult struct {
	awake, devices string
	plan           *queenapi.InstallPlan
}

func (r *addResult) event(ev rbee.Event) {
	if ev.Type != rbee.EventNarration {
		return
	}
	// "hive h1: started rbee-hive …", "hive h1 has 1 device(s): …"
	_, rest, _ := strings.Cut(ev.Message, ": ")
	switch ev.Action {
	case "hive_awake":
		r.awake = rest
	case "devices_detected":
		if _, devs, ok := strings.Cut(ev.Message, " has "); ok {
			r.devices = devs
		}
	case queenapi.EventInstallPlan:
		var p queenapi.InstallPlan
		if json.Unmarshal(ev.Data, &p) == nil {
			r.plan = &p
		}
	}
}

// lockedLines writes whole lines from many goroutines.
type lockedLines struct {
	mu sync.Mutex
	w  *bufio.Writer
}

// line prints a host's result: "NAME: message", or the event as JSON.
func (l *lockedLines) line(asJSON bool, ev rbee.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if asJSON {
		b, _ := json.Marshal(ev)
		l.w.Write(append(b, '\n'))
	} else {
		name := strings.TrimPrefix(ev.Actor, "hive ")
		if ev.Type == rbee.EventError {
			fmt.Fprintf(l.w, "%s: FAILED: %s\n", name, ev.Message)
			if ev.Hint != "" {
				fmt.Fprintf(l.w, "%s: hint: %s\n", name, ev.Hint)
			}
		} else {
			fmt.Fprintf(l.w, "%s: %s\n", name, ev.Message)
		}
	}
	l.w.Flush()
}

// result prints a host's failure.
func (l *lockedLines) result(asJSON bool, t addTarget, err error) {
	name := t.req.Name
	if name == "" {
		name = t.target
	}
	ev := rbee.Fail("hive "+name, rbee.CodeBadRequest, err.Error())
	var ee *exitError
	if errors.As(err, &ee) {
		ev.Hint = ee.hint
	}
	l.line(asJSON, ev)
}

// plan prints a host's install plan, each line led by its name.
func (l *lockedLines) plan(asJSON bool, name string, p *queenapi.InstallPlan) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if asJSON {
		b, _ := json.Marshal(p)
		l.w.Write(append(b, '\n'))
	} else {
		writePlan(l.w, name+": ", p)
	}
	l.w.Flush()
}

// writePlan prints an install plan for a person, each line led by prefix.
func writePlan(w io.Writer, prefix string, p *queenapi.InstallPlan) {
	var b strings.Builder
	libffi := "libffi missing"
	if p.Libffi {
		libffi = "libffi found"
	}
	fmt.Fprintf(&b, "hive %s (%s): %s/%s, %s, %s, %s free in %s\n", p.Hive, p.Host, p.OS, p.Arch, p.Libc, libffi, rbee.Bytes(p.FreeBytes), p.Home)
	if p.NewHostKey != "" {
		fmt.Fprintf(&b, "new host key %s: hive add --accept-new-host-key would record it\n", p.NewHostKey)
	}
	switch {
	case p.Reuse:
		fmt.Fprintf(&b, "rbee-hive %s already runs there: nothing would be uploaded or started\n", p.Running)
	case p.Running != "":
		fmt.Fprintf(&b, "rbee-hive %s runs there: it would be replaced gracefully (its workers stay)\n", p.Running)
	}
	if len(p.Files) > 0 {
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		for _, f := range p.Files {
			what := "keep"
			if f.Upload {
				what = "upload"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d bytes\t%s\t-> %s\t\n", what, f.Name, f.Bytes, rbee.Bytes(uint64(f.Bytes)), f.Path)
		}
		tw.Flush()
	}
	if p.EngineKind != "" {
		pkg := ""
		if p.EnginePackage != "" {
			pkg = " (" + p.EnginePackage + ")"
		}
		fmt.Fprintf(&b, "engine: the %s build%s: %s\n", p.EngineKind, pkg, printable(p.EngineWhy))
	}
	if p.Engine == "" && !p.Reuse {
		b.WriteString("engine bundle: none for this platform on this machine yet; rbee would get the pinned one first\n")
	}
	if p.Links > 0 {
		fmt.Fprintf(&b, "engine %s: %d library link(s) would be made\n", p.Engine, p.Links)
	}
	if !p.Reuse {
		fmt.Fprintf(&b, "total: %d file(s), %d bytes (%s) to upload; %d already there\n", p.UploadFiles, p.UploadBytes, rbee.Bytes(uint64(p.UploadBytes)), len(p.Files)-p.UploadFiles)
		if p.Problem == "" {
			b.WriteString("then: start rbee-hive detached, handshake, probe the devices, record the hive\n")
		}
	}
	if p.Problem != "" {
		fmt.Fprintf(&b, "problem: %s\n", p.Problem)
	}
	for _, line := range strings.SplitAfter(strings.TrimSuffix(b.String(), "\n"), "\n") {
		fmt.Fprintf(w, "%s%s", prefix, strings.TrimRight(line, " \n")+"\n")
	}
}

type hiveLsCmd struct {
	JSON bool `help:"Print JSON."`
}

func (hiveLsCmd) Help() string {
	return `Lists the hives as the queen last saw them, without contacting any; an
inventory entry with problems shows as invalid, with the file and line.

Examples:
  rbee hive ls
  rbee hive ls --json | jq -r '.[] | select(.status != "online") | .name'`
}

func (c hiveLsCmd) Run(ctx context.Context, g *globals) error {
	qc, err := connect(ctx, g, quietNarrate)
	if err != nil {
		return err
	}
	hives, err := qc.Hives(ctx)
	if err != nil {
		return queenError(g, err)
	}
	if c.JSON {
		return printJSON(hives)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDRESS\tSTATUS\tDEVICES\tAGENT\tLAST SEEN")
	for _, h := range hives {
		status := h.Status
		switch {
		case h.Status == queen.StatusInvalid:
			// The whole of it: the file, line and field to fix.
			status += " (" + strings.ReplaceAll(h.Reason, "\n", "; ") + ")"
		case h.Reason != "":
			status += " (" + firstLine(h.Reason) + ")"
		}
		var devs []string
		for _, d := range h.Devices {
			devs = append(devs, fmt.Sprintf("%s %s", d.ID, rbee.Bytes(d.TotalBytes)))
		}
		seen := "never"
		if !h.LastSeen.IsZero() {
			seen = time.Since(h.LastSeen).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", printable(h.Name), printable(h.Address), printable(status), printable(strings.Join(devs, ", ")), printable(h.Version), seen)
	}
	return tw.Flush()
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	if len(l) > 80 {
		l = l[:77] + "..."
	}
	return l
}

type hiveRmCmd struct {
	Name  string `arg:"" predictor:"hive"`
	Purge bool   `help:"Also stop the agent and its workers and delete ~/.rbee on the host."`
}

func (hiveRmCmd) Help() string {
	return `Removes the hive from the inventory (its entry only: comments and other
entries stay) and from the catalog. An entry with problems is removed by its
name too.

Examples:
  rbee hive rm gpu-box
  rbee hive rm gpu-box --purge     # also stop its agent and delete ~/.rbee there`
}

func (c hiveRmCmd) Run(ctx context.Context, g *globals) error {
	qc, err := connect(ctx, g, quietNarrate)
	if err != nil {
		return err
	}
	if err := qc.RemoveHive(ctx, c.Name, c.Purge); err != nil {
		return queenError(g, err)
	}
	fmt.Printf("hive %s removed\n", printable(c.Name))
	return nil
}

type hiveStatusCmd struct {
	Name string `arg:"" predictor:"hive"`
	JSON bool   `help:"Print JSON."`
}

func (hiveStatusCmd) Help() string {
	return `Contacts the hive now; exits 7 when it cannot be reached.

Examples:
  rbee hive status gpu-box
  rbee hive status localhost --json`
}

// hostLine is a hive's machine in one line: "linux/amd64, ldd (Debian
// GLIBC 2.36-9) 2.36, libffi found, no NVIDIA driver (…), 12.3 GiB free in
// /home/me".
func hostLine(f *queenapi.HostFacts) string {
	parts := []string{f.OS + "/" + f.Arch}
	if f.Libc != "" {
		parts = append(parts, f.Libc)
	}
	parts = append(parts, map[bool]string{true: "libffi found", false: "libffi missing"}[f.Libffi])
	switch {
	case f.NVIDIADriver != "":
		parts = append(parts, "NVIDIA driver "+f.NVIDIADriver)
	case f.NVML != "":
		parts = append(parts, "no NVIDIA driver ("+f.NVML+")")
	}
	if f.Home != "" {
		parts = append(parts, fmt.Sprintf("%s free in %s", rbee.Bytes(f.FreeBytes), f.Home))
	}
	return strings.Join(parts, ", ")
}

func (c hiveStatusCmd) Run(ctx context.Context, g *globals) error {
	qc, err := connect(ctx, g, quietNarrate)
	if err != nil {
		return err
	}
	h, err := qc.HiveStatus(ctx, c.Name)
	if err != nil {
		return queenError(g, err)
	}
	if c.JSON {
		if err := printJSON(h); err != nil {
			return err
		}
	} else {
		fmt.Printf("hive %s (%s): %s", h.Name, h.Address, h.Status)
		if h.Reason != "" {
			fmt.Printf(" — %s", printableText(h.Reason))
		}
		fmt.Printf("\nagent: %s\n", h.Version)
		if f := h.Host; f != nil {
			fmt.Printf("host: %s\n", printable(hostLine(f)))
			if f.EngineKind != "" {
				fmt.Printf("engine: the %s build for this host: %s\n", f.EngineKind, printable(f.EngineWhy))
			}
			if len(f.Engines) > 0 {
				fmt.Printf("engines installed: %s\n", printable(strings.Join(f.Engines, "; ")))
			}
			if f.EngineDevices != "" {
				fmt.Printf("engine devices: %s\n", printable(f.EngineDevices))
			}
		}
		for _, d := range h.Devices {
			line := fmt.Sprintf("device %s: %s, %s total, %s free", printable(d.ID), printable(d.Name), rbee.Bytes(d.TotalBytes), rbee.Bytes(d.FreeBytes))
			if dr := d.Driven(); dr != "" {
				line += " (" + printable(dr) + ")"
			}
			fmt.Println(line)
		}
		for _, w := range h.Workers {
			fmt.Printf("worker %s: %s on %s (pid %d, %s)\n", printable(w.ID), printable(filepath.Base(w.Model)), printable(w.Device), w.PID, printable(w.State))
		}
	}
	if h.Status != "online" {
		return exitf(rbee.ExitCodeFor(rbee.CodeHiveDown), "", "hive %s is %s", h.Name, h.Status)
	}
	return nil
}

type hiveLogsCmd struct {
	Name string `arg:"" predictor:"hive"`
}

func (hiveLogsCmd) Help() string {
	return `Prints the last 200 lines of the agent's log (~/.rbee/logs/hive.log on the host).

Examples:
  rbee hive logs gpu-box
  rbee hive logs localhost | grep worker`
}

func (c hiveLogsCmd) Run(ctx context.Context, g *globals) error {
	qc, err := connect(ctx, g, quietNarrate)
	if err != nil {
		return err
	}
	raw, err := qc.HiveLogs(ctx, c.Name)
	if err != nil {
		return queenError(g, err)
	}
	_, err = os.Stdout.Write(raw)
	return err
}

type upCmd struct {
	AcceptNewHostKey bool `name:"accept-new-host-key" help:"Trust and record the host keys of inventory hosts never seen before (like OpenSSH accept-new); a changed key is always refused."`
	JSON             bool `help:"Print every event as one JSON line."`
}

func (upCmd) Help() string {
	return `Every hive of the inventory, now ` + inventory.PathFor(os.Getenv("RBEE_HOME")) + ` ($RBEE_INVENTORY; a home other than ~/.rbee keeps its own),
is reached in parallel and its agent installed or started when needed. One
line per host; an inventory entry with problems gets its own FAILED line,
with the file and line, and the others come up anyway.

Examples:
  rbee up
  rbee up --accept-new-host-key    # hosts written into the inventory by hand`
}

// Run brings every inventory hive up in parallel: one line per host, all
// errors together, non-zero when any failed.
func (c upCmd) Run(ctx context.Context, g *globals) error {
	p := &printer{json: c.JSON, out: bufio.NewWriter(os.Stdout), upLines: true}
	qc, err := connect(ctx, g, p.keeper)
	if err != nil {
		return err
	}
	s, err := qc.Up(ctx, queenapi.UpRequest{AcceptNewHostKey: c.AcceptNewHostKey})
	return follow(ctx, g, s, err, p, false)
}
