package main

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/rbee-dev/rbee"
)

type psCmd struct {
	JSON bool `help:"Print JSON (the API's field names)."`
}

func (c *psCmd) Help() string {
	return `Every worker across the fleet, asked of each hive now: hive, device, model,
the memory its hive holds for it,
slots busy of its total, requests served, how long until the keep-alive
unloads it, and the deployment that keeps it loaded; then each deployment's
replicas (ready of wanted, min-max) and the last replica the door added or
removed, with why.

Examples:
  rbee ps
  rbee ps --json | jq '.processes[] | select(.busy > 0)'`
}

func (c *psCmd) Run(ctx context.Context, g *globals) error {
	qc, err := connect(ctx, g, quietNarrate)
	if err != nil {
		return err
	}
	ps, err := qc.Ps(ctx)
	if err != nil {
		return queenError(g, err)
	}
	if c.JSON {
		return printJSON(ps)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HIVE\tWORKER\tDEVICE\tMODEL\tMEMORY\tSTATE\tSLOTS BUSY\tSERVED\tUP\tUNLOADS IN\tDEPLOYMENT")
	for _, p := range ps.Processes {
		unload := "-"
		switch {
		case p.Deployment != "":
			unload = "never"
		case p.Busy == 0:
			unload = (time.Duration(p.UnloadInS * float64(time.Second))).Round(time.Second).String()
		}
		model := printable(p.Model)
		if p.Embeddings {
			model += " (embeddings)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%d\t%s\t%s\t%s\n", printable(p.Hive), p.Worker, p.Device, model, rbee.Bytes(p.MemoryBytes), p.State, p.Busy, max(p.Slots, 1),
			p.Served, time.Since(p.Started).Round(time.Second), unload, cmp.Or(printable(p.Deployment), "-"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for i, d := range ps.Deployments {
		if i == 0 {
			fmt.Println()
		}
		fmt.Printf("deployment %s: %d/%d ready (min %d, max %d); last scale: %s\n", printable(d.Name), d.Ready, d.Replicas, d.Min, d.Max, lastScale(d.LastScale))
	}
	for _, s := range ps.Skipped {
		fmt.Fprintf(os.Stderr, "rbee: %s\n", printable(s))
	}
	return nil
}
