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
	Deploy      modelDeployCmd      `cmd:"" help:"Keep a model loaded with N replicas for the OpenAI front door."`
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
	Replicas   int           `short:"n" default:"1" help:"Workers to keep loaded, one per device."`
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

Examples:
  rbee model deploy qwen --replicas 2
  rbee model deploy hf:ORG/REPO:Q4_K_M --name chat --hive gpu-box,server --device gpu0
  rbee model deployments`
}

func (c modelDeployCmd) Run(ctx context.Context, g *globals) error {
	if c.Replicas < 1 || c.Replicas > 64 {
		return exitf(rbee.ExitUsage, "e.g. --replicas 2", "--replicas %d: 1 to 64", c.Replicas)
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
	if err := qc.Deploy(ctx, queenapi.DeployRequest{Name: name, Model: c.Model, Replicas: c.Replicas, Hives: c.Hive, Device: c.Device, Embeddings: c.Embeddings}); err != nil {
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
		if last.Ready >= last.Replicas || !time.Now().Before(deadline) {
			break
		}
		switch {
		case c.JSON:
		case tty:
			fmt.Fprintf(os.Stderr, "\r%s: %d/%d replicas ready", printable(name), last.Ready, last.Replicas)
		case last.Ready != said:
			fmt.Fprintf(os.Stderr, "%s: %d/%d replicas ready\n", printable(name), last.Ready, last.Replicas)
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
	fmt.Printf("deployment %s: %d/%d replicas ready\n", printable(name), last.Ready, last.Replicas)
	if last.Ready < last.Replicas && c.Wait > 0 {
		msg := "not every replica is ready yet; rbee model deployments shows them"
		if last.Error != "" {
			msg = last.Error
		}
		return exitf(rbee.ExitNoRoom, "rbee model deployments shows the replicas; rbee model undeploy "+name+" removes it", "deployment %s: %s", printable(name), printable(msg))
	}
	return nil
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
	return `Each deployment with its replicas: hive/device (worker requests-in-flight/slots),
and the last failure to start one.

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
	fmt.Fprintln(tw, "NAME\tMODEL\tREADY\tHIVES\tDEVICE\tREPLICAS\tERROR")
	for _, d := range ds.Deployments {
		var reps []string
		for _, r := range d.Workers {
			reps = append(reps, fmt.Sprintf("%s/%s(%s %d/%d)", r.Hive, r.Device, r.Worker, r.InFlight, r.Slots))
		}
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\n", printable(d.Name), printable(d.Model), d.Ready, d.Replicas,
			cmp.Or(printable(strings.Join(d.Hives, ",")), "any"), cmp.Or(d.Device, "any"), cmp.Or(strings.Join(reps, " "), "-"), printable(d.Error))
	}
	return tw.Flush()
}
