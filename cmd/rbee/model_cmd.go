package main

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/queenapi"
	"golang.org/x/term"
)

type modelCmd struct {
	Pull        modelPullCmd        `cmd:"" help:"Download a model onto a hive (resumable, verified), or name a local GGUF."`
	Ls          modelLsCmd          `cmd:"" help:"List a hive's models."`
	Rm          modelRmCmd          `cmd:"" help:"Remove a model from a hive."`
	Deploy      modelDeployCmd      `cmd:"" help:"Keep a model loaded with N replicas (or --min to --max, following the queue) for the OpenAI front door."`
	Undeploy    modelUndeployCmd    `cmd:"" help:"Remove a deployment (its workers unload when idle)."`
	Deployments modelDeploymentsCmd `cmd:"" help:"List the deployments and their replicas."`
}

func (modelCmd) Help() string {
	return `Models live in each hive's own catalog; this machine's is in the rbee home
(` + envNote("RBEE_HOME", "~/.rbee") + `).

Examples:
  rbee model pull hf:bartowski/Qwen2.5-0.5B-Instruct-GGUF --hive gpu-box
  rbee model ls --hive gpu-box`
}

type modelPullCmd struct {
	Ref   string `arg:"" help:"https://…/file.gguf, hf:ORG/REPO[/FILE.gguf][:QUANT], or a GGUF file on this machine (pushed to the hive; give it a name with --alias)."`
	Hive  string `predictor:"hive" help:"Hive to download on (default: this machine)."`
	Alias string `help:"A short name for the model: 1 to 64 letters, digits, '.', '_' and '-', starting with a letter or a digit."`
	JSON  bool   `help:"Print every event as one JSON line."`
}

func (modelPullCmd) Help() string {
	return `The hive downloads the model itself (resumable, size and sha256 checked);
HF_TOKEN is passed to the hub only, HF_ENDPOINT points at a mirror.

Examples:
  rbee model pull hf:bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q8_0
  rbee model pull https://example.com/models/x.gguf --hive gpu-box --alias x
  rbee model pull ./my-finetune.gguf --alias mine   # a local GGUF, named for clients`
}

func (c modelPullCmd) Run(ctx context.Context, g *globals) error {
	ref := c.Ref
	if _, err := download.ParseRef(c.Ref); err != nil {
		st, serr := os.Stat(c.Ref)
		if serr != nil || !st.Mode().IsRegular() {
			return exitf(rbee.ExitUsage, "give https://…/file.gguf, hf:ORG/REPO[/FILE.gguf][:QUANT] or a GGUF file on this machine", "%v", err)
		}
		if ref, err = filepath.Abs(c.Ref); err != nil {
			return exitf(rbee.ExitUsage, "", "%s: %v", c.Ref, err)
		}
	}
	if c.Alias != "" {
		if err := catalog.ValidAlias(c.Alias); err != nil {
			return exitf(rbee.ExitUsage, "an alias is 1 to 64 letters, digits, '.', '_' and '-', starting with a letter or a digit, e.g. --alias qwen2.5-0.5b", "%w", err)
		}
	}
	p := &printer{json: c.JSON, out: bufio.NewWriter(os.Stdout)}
	qc, err := connect(ctx, g, p.keeper)
	if err != nil {
		return err
	}
	s, err := qc.PullModel(ctx, queenapi.PullRequest{Ref: ref, Hive: c.Hive, Alias: c.Alias})
	return follow(ctx, g, s, err, p, false)
}

type modelLsCmd struct {
	Hive string `predictor:"hive" help:"Hive (default: this machine)."`
	JSON bool   `help:"Print JSON."`
}

func (modelLsCmd) Help() string {
	return `Examples:
  rbee model ls
  rbee model ls --hive gpu-box --json`
}

func (c modelLsCmd) Run(ctx context.Context, g *globals) error {
	qc, err := connect(ctx, g, quietNarrate)
	if err != nil {
		return err
	}
	out, err := qc.Models(ctx, c.Hive)
	if err != nil {
		return queenError(g, err)
	}
	if c.JSON {
		return printJSON(out.Models)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tREF\tALIAS\tARCH\tQUANT\tSIZE\tNEEDS\tLAST USED")
	for _, m := range out.Models {
		used := "never"
		if !m.LastUsed.IsZero() {
			used = time.Since(m.LastUsed).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", printable(m.ID), printable(m.Ref), printable(m.Alias), printable(m.Arch), printable(m.Quant), rbee.Bytes(uint64(m.Size)), rbee.Bytes(m.EstimateBytes), used)
	}
	return tw.Flush()
}

type modelRmCmd struct {
	Name string `arg:"" predictor:"model" help:"Model id, alias, ref or path."`
	Hive string `predictor:"hive" help:"Hive (default: this machine)."`
}

func (modelRmCmd) Help() string {
	return `A model a running worker uses is refused.

Examples:
  rbee model rm qwen
  rbee model rm hf:ORG/REPO/model-Q8_0.gguf --hive gpu-box`
}

func (c modelRmCmd) Run(ctx context.Context, g *globals) error {
	qc, err := connect(ctx, g, quietNarrate)
	if err != nil {
		return err
	}
	if err := qc.RemoveModel(ctx, c.Hive, c.Name); err != nil {
		return queenError(g, err)
	}
	fmt.Printf("model %s removed\n", printable(c.Name))
	return nil
}

type modelDeployCmd struct {
	Model      string        `arg:"" predictor:"model" help:"Alias, reference, catalog id or local file name of the model."`
	Name       string        `help:"The name clients ask for (default: the model's name as given)."`
	Replicas   *int          `short:"n" help:"Workers to keep loaded, one per device (default 1; the same as --min N --max N)."`
	Min        int           `help:"Least workers to keep loaded (default 1 with --max)."`
	Max        int           `help:"Most workers: the door adds one (on a free device) while requests wait longer than the queen's --scale-wait, and stops those above --min idle for the keep-alive (default: --min)."`
	Hive       []string      `predictor:"hive" sep:"," help:"Only these hives (repeat or comma-separate; default: any)."`
	Device     string        `help:"Only this device on each hive (cpu, gpu0, …; default: the scheduler's pick)."`
	Embeddings bool          `help:"The replicas serve /v1/embeddings (rbee-worker --embeddings)."`
	Wait       time.Duration `default:"10m" help:"Wait this long for every replica to be ready (0: return at once)."`
	JSON       bool          `help:"Print the deployment as JSON."`
}

func (modelDeployCmd) Help() string {
	return `A deployment keeps a model loaded — N workers, each on its own device —
so the front door (POST /v1/chat/completions on the queen's port) never
waits for a load. It is kept in the queen's catalog: after a restart the
queen finds the running replicas again (none is loaded twice) and replaces
replicas that died. Requests go to the ready replica with the fewest
requests in flight per slot.

With --min and --max the replicas follow the queue: when requests wait
longer than the queen's --scale-wait (2s) and a device is free (one that
holds no replica of it, on the deployment's hives and device), a replica
is added, up to --max; a replica above --min that served nothing for the
keep-alive is stopped. rbee model deployments and rbee ps show the last
such event and why; /metrics counts them.

Examples:
  rbee model deploy qwen --replicas 2
  rbee model deploy qwen --min 1 --max 4
  rbee model deploy hf:ORG/REPO:Q4_K_M --name chat --hive gpu-box,server --device gpu0
  rbee model deployments`
}

func (c modelDeployCmd) Run(ctx context.Context, g *globals) error {
	lo, hi, err := c.bounds()
	if err != nil {
		return err
	}
	name := c.Name
	if name == "" {
		if strings.Contains(c.Model, "/") {
			return exitf(rbee.ExitUsage, "e.g. --name chat", "%s: give the deployment a --name (clients ask for it; a name has no '/')", printable(c.Model))
		}
		name = c.Model
	}
	qc, err := connect(ctx, g, quietNarrate)
	if err != nil {
		return err
	}
	if err := qc.Deploy(ctx, queenapi.DeployRequest{Name: name, Model: c.Model, Min: lo, Max: hi, Hives: c.Hive, Device: c.Device, Embeddings: c.Embeddings}); err != nil {
		return queenError(g, err)
	}
	var last queenapi.Deployment
	deadline := time.Now().Add(c.Wait)
	// A line redrawn in place on a terminal; in a pipe or a log, a line
	// each time the count changes.
	tty := term.IsTerminal(int(os.Stderr.Fd()))
	said := -1
	for {
		ds, err := qc.Deployments(ctx)
		if err != nil {
			return queenError(g, err)
		}
		for _, d := range ds.Deployments {
			if d.Name == name {
				last = d
			}
		}
		if last.Ready >= last.Min || !time.Now().Before(deadline) {
			break
		}
		switch {
		case c.JSON:
		case tty:
			fmt.Fprintf(os.Stderr, "\r%s: %d/%d replicas ready", printable(name), last.Ready, last.Min)
		case last.Ready != said:
			fmt.Fprintf(os.Stderr, "%s: %d/%d replicas ready\n", printable(name), last.Ready, last.Min)
			said = last.Ready
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	if c.JSON {
		return printJSON(last)
	}
	if tty {
		fmt.Fprintf(os.Stderr, "\r\033[K")
	}
	scales := ""
	if last.Max > last.Min {
		scales = fmt.Sprintf(" (up to %d while requests wait)", last.Max)
	}
	fmt.Printf("deployment %s: %d/%d replicas ready%s\n", printable(name), last.Ready, last.Min, scales)
	if last.Ready < last.Min && c.Wait > 0 {
		msg := "not every replica is ready yet; rbee model deployments shows them"
		if last.Error != "" {
			msg = last.Error
		}
		return exitf(rbee.ExitNoRoom, "rbee model deployments shows the replicas; rbee model undeploy "+name+" removes it", "deployment %s: %s", printable(name), printable(msg))
	}
	return nil
}

// bounds are the replicas asked for: --replicas N is --min N --max N.
func (c modelDeployCmd) bounds() (lo, hi int, err error) {
	switch {
	case c.Replicas != nil && (c.Min != 0 || c.Max != 0):
		return 0, 0, exitf(rbee.ExitUsage, "e.g. --replicas 2, or --min 1 --max 4", "--replicas is a fixed number: give it or --min/--max, not both")
	case c.Replicas != nil:
		lo, hi = *c.Replicas, *c.Replicas
	default:
		lo, hi = max(c.Min, 1), c.Max
		if hi == 0 {
			hi = lo
		}
	}
	switch {
	case c.Replicas != nil && (lo < 1 || lo > 64):
		return 0, 0, exitf(rbee.ExitUsage, "e.g. --replicas 2", "--replicas %d: 1 to 64", lo)
	case c.Min < 0 || lo > 64 || hi < lo || hi > 64:
		return 0, 0, exitf(rbee.ExitUsage, "e.g. --min 1 --max 4", "--min %d --max %d: 1 <= min <= max <= 64", lo, hi)
	}
	return lo, hi, nil
}

type modelUndeployCmd struct {
	Name string `arg:"" help:"Deployment name."`
}

func (modelUndeployCmd) Help() string {
	return `The deployment's record goes; its workers serve the requests they have and
unload once idle for the keep-alive.

Examples:
  rbee model undeploy chat`
}

func (c modelUndeployCmd) Run(ctx context.Context, g *globals) error {
	qc, err := connect(ctx, g, quietNarrate)
	if err != nil {
		return err
	}
	if err := qc.Undeploy(ctx, c.Name); err != nil {
		return queenError(g, err)
	}
	fmt.Printf("deployment %s removed; its workers unload once idle for the keep-alive\n", printable(c.Name))
	return nil
}

type modelDeploymentsCmd struct {
	JSON bool `help:"Print JSON."`
}

func (modelDeploymentsCmd) Help() string {
	return `Each deployment with its replicas: ready of wanted, min-max,
hive/device (worker requests-in-flight/slots), the last replica the door
added or removed and why, and the last failure to start one.

Examples:
  rbee model deployments
  rbee model deployments --json | jq '.[] | select(.ready < .replicas)'`
}

func (c modelDeploymentsCmd) Run(ctx context.Context, g *globals) error {
	qc, err := connect(ctx, g, quietNarrate)
	if err != nil {
		return err
	}
	ds, err := qc.Deployments(ctx)
	if err != nil {
		return queenError(g, err)
	}
	if c.JSON {
		return printJSON(ds.Deployments)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tMODEL\tREADY\tMIN-MAX\tHIVES\tDEVICE\tREPLICAS\tLAST SCALE\tERROR")
	for _, d := range ds.Deployments {
		var reps []string
		for _, r := range d.Workers {
			reps = append(reps, fmt.Sprintf("%s/%s(%s %d/%d)", r.Hive, r.Device, r.Worker, r.InFlight, r.Slots))
		}
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%d-%d\t%s\t%s\t%s\t%s\t%s\n", printable(d.Name), printable(d.Model), d.Ready, d.Replicas, d.Min, d.Max,
			cmp.Or(printable(strings.Join(d.Hives, ",")), "any"), cmp.Or(d.Device, "any"), cmp.Or(strings.Join(reps, " "), "-"), lastScale(d.LastScale), printable(d.Error))
	}
	return tw.Flush()
}

// lastScale is a deployment's last scale event for a table: "added
// h2/gpu0: 3 requests waited 2.4s (12s ago)", or "-".
func lastScale(ev *queenapi.ScaleEvent) string {
	if ev == nil {
		return "-"
	}
	return fmt.Sprintf("%s (%s ago)", printable(ev.String()), time.Since(ev.At).Round(time.Second))
}
