package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"
)

type psCmd struct {
	JSON bool `help:"Print JSON (the API's field names)."`
}

func (c *psCmd) Help() string {
	return `Every worker across the fleet, asked of each hive now: hive, device, model,
requests in flight, and how long until the keep-alive unloads it.

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
	fmt.Fprintln(tw, "HIVE\tWORKER\tDEVICE\tMODEL\tSTATE\tBUSY\tUP\tUNLOADS IN")
	for _, p := range ps.Processes {
		unload := "-"
		if p.Busy == 0 {
			unload = (time.Duration(p.UnloadInS * float64(time.Second))).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", printable(p.Hive), p.Worker, p.Device, printable(p.Model), p.State, p.Busy,
			time.Since(p.Started).Round(time.Second), unload)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, s := range ps.Skipped {
		fmt.Fprintf(os.Stderr, "rbee: %s\n", printable(s))
	}
	return nil
}
