package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/queenapi"
)

type modelCmd struct {
	Pull modelPullCmd `cmd:"" help:"Download a model onto a hive (resumable, verified)."`
	Ls   modelLsCmd   `cmd:"" help:"List a hive's models."`
	Rm   modelRmCmd   `cmd:"" help:"Remove a model from a hive."`
}

func (modelCmd) Help() string {
	return `Models live in each hive's own catalog; this machine's is in the rbee home
(` + envNote("RBEE_HOME", "~/.rbee") + `).

Examples:
  rbee model pull hf:bartowski/Qwen2.5-0.5B-Instruct-GGUF --hive gpu-box
  rbee model ls --hive gpu-box`
}

type modelPullCmd struct {
	Ref   string `arg:"" help:"https://…/file.gguf or hf:ORG/REPO[/FILE.gguf][:QUANT]."`
	Hive  string `predictor:"hive" help:"Hive to download on (default: this machine)."`
	Alias string `help:"A short name for the model: 1 to 64 letters, digits, '.', '_' and '-', starting with a letter or a digit."`
	JSON  bool   `help:"Print every event as one JSON line."`
}

func (modelPullCmd) Help() string {
	return `The hive downloads the model itself (resumable, size and sha256 checked);
HF_TOKEN is passed to the hub only, HF_ENDPOINT points at a mirror.

Examples:
  rbee model pull hf:bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q8_0
  rbee model pull https://example.com/models/x.gguf --hive gpu-box --alias x`
}

func (c modelPullCmd) Run(ctx context.Context, g *globals) error {
	if _, err := download.ParseRef(c.Ref); err != nil {
		return exitf(rbee.ExitUsage, "a local file needs no pull: rbee infer --model FILE pushes it", "%v", err)
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
	s, err := qc.PullModel(ctx, queenapi.PullRequest{Ref: c.Ref, Hive: c.Hive, Alias: c.Alias})
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
