package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rbee-dev/rbee"
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

type hiveAddCmd struct {
	Target           string `arg:"" help:"USER@HOST[:PORT], or an alias from ~/.ssh/config."`
	Name             string `help:"Hive name (default: the host's first label)."`
	Identity         string `type:"path" help:"Private key to log in with."`
	AcceptNewHostKey bool   `name:"accept-new-host-key" help:"Trust and record the host key of a host never seen before (like OpenSSH accept-new)."`
	JSON             bool   `help:"Print every event as one JSON line."`
}

// parseTarget splits USER@HOST[:PORT].
func parseTarget(s string) (user, host string, port int, err error) {
	if u, rest, ok := strings.Cut(s, "@"); ok {
		user, s = u, rest
	}
	host = s
	if h, p, ok := strings.Cut(s, ":"); ok {
		host = h
		if port, err = strconv.Atoi(p); err != nil {
			return "", "", 0, fmt.Errorf("port %q is not a number", p)
		}
	}
	return user, host, port, nil
}

// defaultName derives a hive name from a host: its first label, or the
// address with dots as dashes.
func defaultName(host string) string {
	name := strings.ToLower(host)
	if strings.Trim(name, "0123456789.") != "" {
		name, _, _ = strings.Cut(name, ".")
	}
	return strings.NewReplacer(".", "-", "_", "-").Replace(name)
}

func (c *hiveAddCmd) Run(ctx context.Context, g *globals) error {
	user, host, port, err := parseTarget(c.Target)
	if err != nil {
		return exitf(rbee.ExitUsage, "", "hive add %s: %v", c.Target, err)
	}
	req := queenapi.AddHiveRequest{Name: c.Name, Host: host, User: user, Port: port, Identity: c.Identity, AcceptNewHostKey: c.AcceptNewHostKey}
	if req.Name == "" {
		req.Name = defaultName(host)
	}
	// Refused here, before the queen or any host hears of it.
	if err := queen.ValidateAdd(req); err != nil {
		return exitf(rbee.ExitUsage, "", "%v", err)
	}
	if c.Identity != "" {
		if _, err := os.Stat(c.Identity); err != nil {
			return exitf(rbee.ExitNotFound, "", "identity file: %v", err)
		}
	}
	p := &printer{json: c.JSON, out: bufio.NewWriter(os.Stdout)}
	qc, err := connect(ctx, g, p.keeper)
	if err != nil {
		return err
	}
	s, err := qc.AddHive(ctx, req)
	if err := follow(ctx, g, s, err, p, false); err != nil {
		return err
	}
	if !c.JSON {
		fmt.Printf("hive %s is ready\n", req.Name)
	}
	return nil
}

type hiveLsCmd struct {
	JSON bool `help:"Print JSON."`
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
		if h.Reason != "" {
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", h.Name, h.Address, status, strings.Join(devs, ", "), h.Version, seen)
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
	Name  string `arg:""`
	Purge bool   `help:"Also stop the agent and its workers and delete ~/.rbee on the host."`
}

func (c hiveRmCmd) Run(ctx context.Context, g *globals) error {
	qc, err := connect(ctx, g, quietNarrate)
	if err != nil {
		return err
	}
	if err := qc.RemoveHive(ctx, c.Name, c.Purge); err != nil {
		return queenError(g, err)
	}
	fmt.Printf("hive %s removed\n", c.Name)
	return nil
}

type hiveStatusCmd struct {
	Name string `arg:"" predictor:"hive"`
	JSON bool   `help:"Print JSON."`
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
			fmt.Printf(" — %s", h.Reason)
		}
		fmt.Printf("\nagent: %s\n", h.Version)
		for _, d := range h.Devices {
			fmt.Printf("device %s: %s, %s total, %s free\n", d.ID, d.Name, rbee.Bytes(d.TotalBytes), rbee.Bytes(d.FreeBytes))
		}
		for _, w := range h.Workers {
			fmt.Printf("worker %s: %s on %s (pid %d, %s)\n", w.ID, filepath.Base(w.Model), w.Device, w.PID, w.State)
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
	JSON bool `help:"Print every event as one JSON line."`
}

// Run brings every inventory hive up in parallel: one line per host, all
// errors together, non-zero when any failed.
func (c upCmd) Run(ctx context.Context, g *globals) error {
	p := &printer{json: c.JSON, out: bufio.NewWriter(os.Stdout), upLines: true}
	qc, err := connect(ctx, g, p.keeper)
	if err != nil {
		return err
	}
	s, err := qc.Up(ctx)
	return follow(ctx, g, s, err, p, false)
}
