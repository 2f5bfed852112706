package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/queen"
)

type workerCmd struct {
	Install workerInstallCmd `cmd:"" help:"Install an engine bundle (llama.cpp libraries) on a hive."`
	Ls      workerLsCmd      `cmd:"" help:"List a hive's worker catalog: worker binaries and engine bundles."`
	Rm      workerRmCmd      `cmd:"" help:"Remove an engine bundle from a hive."`
	AddType workerAddTypeCmd `cmd:"" name:"add-type" help:"Declare an external OpenAI-speaking engine (llama-server, vLLM) as a worker type."`
}

type workerAddTypeCmd struct {
	Name    string   `arg:"" help:"Type name (rbee infer --worker-type NAME)."`
	Command string   `required:"" help:"Absolute path of the engine's binary on the hive."`
	Arg     []string `help:"An argument (repeat); placeholders {model}, {port}, {device}, {ctx}."`
	Health  string   `default:"/health" help:"Path that answers 200 when the engine is ready."`
	Hive    string   `help:"Hive (default: this machine)."`
}

func (c workerAddTypeCmd) Run(ctx context.Context, g *globals) error {
	if _, _, err := ensureQueen(ctx, g, func(string, string) {}); err != nil {
		return err
	}
	body, _ := json.Marshal(queen.AddWorkerTypeRequest{Hive: c.Hive, Type: hiveapi.WorkerType{Name: c.Name, Command: c.Command, Args: c.Arg, Health: c.Health}})
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+g.Queen+"/v1/worker-types", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil {
		return exitf(rbee.ExitQueen, "", "queen: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return apiError(resp)
	}
	fmt.Printf("worker type %s declared\n", c.Name)
	return nil
}

type workerInstallCmd struct {
	Source string `arg:"" help:"A bundle directory, a .tgz/.zip archive of llama.cpp libraries, or an https:// URL of one."`
	Hive   string `help:"Hive (default: this machine)."`
	JSON   bool   `help:"Print every event as one JSON line."`
}

func (c workerInstallCmd) Run(ctx context.Context, g *globals) error {
	src := c.Source
	if _, err := download.ParseRef(src); err != nil {
		// A local path: checked here, before the queen hears of it.
		abs, err := filepath.Abs(src)
		if err != nil {
			return exitf(rbee.ExitUsage, "", "%v", err)
		}
		if _, err := os.Stat(abs); err != nil {
			return exitf(rbee.ExitNotFound, "", "engine source: %v", err)
		}
		src = abs
	}
	p := &printer{json: c.JSON, out: bufio.NewWriter(os.Stdout)}
	if _, _, err := ensureQueen(ctx, g, func(action, msg string) { p.event(rbee.Narrate("keeper", action, msg)) }); err != nil {
		return err
	}
	body, _ := json.Marshal(queen.InstallEngineRequest{Hive: c.Hive, Source: src})
	return followJob(ctx, g.Queen, "/v1/engines", body, p, false)
}

type workerLsCmd struct {
	Hive string `help:"Hive (default: this machine)."`
	JSON bool   `help:"Print JSON."`
}

func (c workerLsCmd) Run(ctx context.Context, g *globals) error {
	var out struct {
		Workers []hiveapi.WorkerBinary `json:"workers"`
	}
	if err := getJSON(ctx, g, "/v1/engines?hive="+url.QueryEscape(c.Hive), &out); err != nil {
		return err
	}
	if c.JSON {
		b, _ := json.Marshal(out.Workers)
		fmt.Println(string(b))
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTYPE\tVERSION\tCAPABILITIES\tPATH")
	for _, w := range out.Workers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", w.ID, w.Type, w.Version, strings.Join(w.Capabilities, ","), w.Path)
	}
	return tw.Flush()
}

type workerRmCmd struct {
	ID   string `arg:""`
	Hive string `help:"Hive (default: this machine)."`
}

func (c workerRmCmd) Run(ctx context.Context, g *globals) error {
	if err := deleteOnQueen(ctx, g, "/v1/engines/"+url.PathEscape(c.ID)+"?hive="+url.QueryEscape(c.Hive)); err != nil {
		return err
	}
	fmt.Printf("%s removed\n", c.ID)
	return nil
}
