package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/queenapi"
)

type workerCmd struct {
	Install workerInstallCmd `cmd:"" help:"Install an engine bundle (llama.cpp libraries) on a hive."`
	Ls      workerLsCmd      `cmd:"" help:"List a hive's worker catalog: worker binaries and engine bundles."`
	Rm      workerRmCmd      `cmd:"" help:"Remove an engine bundle from a hive."`
	AddType workerAddTypeCmd `cmd:"" name:"add-type" help:"Declare an external OpenAI-speaking engine (llama-server, vLLM) as a worker type."`
	RmType  workerRmTypeCmd  `cmd:"" name:"rm-type" help:"Remove a worker type declared with add-type."`
}

func (workerCmd) Help() string {
	return `Examples:
  rbee worker install ./node-llama-cpp-linux-x64-cuda-3.22.1.tgz --hive gpu-box
  rbee worker ls --hive gpu-box`
}

type workerAddTypeCmd struct {
	Name    string   `arg:"" help:"Type name (rbee infer --worker-type NAME)."`
	Command string   `required:"" help:"Absolute path of the engine's binary on the hive."`
	Arg     []string `help:"An argument (repeat); placeholders {model}, {port}, {device}, {ctx}."`
	Health  string   `default:"/health" help:"Path that answers 200 when the engine is ready."`
	Hive    string   `predictor:"hive" help:"Hive (default: this machine)."`
}

func (workerAddTypeCmd) Help() string {
	return `rbee starts the engine itself for a job that names the type, and speaks
OpenAI to it. Placeholders in --arg: {model}, {port}, {device}, {ctx}.

Examples:
  rbee worker add-type llamaserver --command /opt/llama/llama-server \
      --arg=-m --arg={model} --arg=--port --arg={port} --arg=--host --arg=127.0.0.1
  rbee infer --worker-type llamaserver --model ./model.gguf "hi"`
}

func (c workerAddTypeCmd) Run(ctx context.Context, g *globals) error {
	qc, err := connect(ctx, g, quietNarrate)
	if err != nil {
		return err
	}
	err = qc.AddWorkerType(ctx, queenapi.AddWorkerTypeRequest{Hive: c.Hive, Type: hiveapi.WorkerType{Name: c.Name, Command: c.Command, Args: c.Arg, Health: c.Health}})
	if err != nil {
		return queenError(g, err)
	}
	fmt.Printf("worker type %s declared\n", c.Name)
	return nil
}

type workerInstallCmd struct {
	Source string `arg:"" help:"A bundle directory, a .tgz/.zip archive of llama.cpp libraries, or an https:// URL of one."`
	Hive   string `predictor:"hive" help:"Hive (default: this machine)."`
	JSON   bool   `help:"Print every event as one JSON line."`
}

func (workerInstallCmd) Help() string {
	return `The bundle is checksummed and its backends recorded; for a remote hive it is
pushed over SSH (only the files the host lacks).

Examples:
  rbee worker install ./engine-dir
  rbee worker install https://example.com/llama-cuda.tgz --hive gpu-box`
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
			// A bad bundle argument, like every other bad bundle: usage.
			return exitf(rbee.ExitUsage, "give a bundle directory, a .tgz/.zip archive or an https:// URL", "engine source: %v", err)
		}
		src = abs
	}
	p := &printer{json: c.JSON, out: bufio.NewWriter(os.Stdout)}
	qc, err := connect(ctx, g, p.keeper)
	if err != nil {
		return err
	}
	s, err := qc.InstallEngine(ctx, queenapi.InstallEngineRequest{Hive: c.Hive, Source: src})
	return follow(ctx, g, s, err, p, false)
}

type workerLsCmd struct {
	Hive string `predictor:"hive" help:"Hive (default: this machine)."`
	JSON bool   `help:"Print JSON."`
}

func (workerLsCmd) Help() string {
	return `Examples:
  rbee worker ls
  rbee worker ls --hive gpu-box --json`
}

func (c workerLsCmd) Run(ctx context.Context, g *globals) error {
	qc, err := connect(ctx, g, quietNarrate)
	if err != nil {
		return err
	}
	out, err := qc.Engines(ctx, c.Hive)
	if err != nil {
		return queenError(g, err)
	}
	if c.JSON {
		return printJSON(out.Workers)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTYPE\tVERSION\tCAPABILITIES\tPATH")
	for _, w := range out.Workers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", printable(w.ID), printable(w.Type), printable(w.Version), printable(strings.Join(w.Capabilities, ",")), printable(w.Path))
	}
	return tw.Flush()
}

type workerRmCmd struct {
	ID   string `arg:""`
	Hive string `predictor:"hive" help:"Hive (default: this machine)."`
}

func (workerRmCmd) Help() string {
	return `Examples:
  rbee worker rm engine-llama.cpp-v0.5.0-cpu
  rbee worker rm engine-llama.cpp-v0.5.0-cuda --hive gpu-box`
}

func (c workerRmCmd) Run(ctx context.Context, g *globals) error {
	qc, err := connect(ctx, g, quietNarrate)
	if err != nil {
		return err
	}
	if err := qc.RemoveEngine(ctx, c.Hive, c.ID); err != nil {
		return queenError(g, err)
	}
	fmt.Printf("%s removed\n", printable(c.ID))
	return nil
}

type workerRmTypeCmd struct {
	Name string `arg:"" help:"Type name, as given to add-type."`
	Hive string `predictor:"hive" help:"Hive (default: this machine)."`
}

func (workerRmTypeCmd) Help() string {
	return `A type a running worker uses is refused; the engine's binary stays.

Examples:
  rbee worker rm-type llamaserver
  rbee worker rm-type vllm --hive gpu-box`
}

func (c workerRmTypeCmd) Run(ctx context.Context, g *globals) error {
	qc, err := connect(ctx, g, quietNarrate)
	if err != nil {
		return err
	}
	if err := qc.RemoveWorkerType(ctx, c.Hive, c.Name); err != nil {
		return queenError(g, err)
	}
	fmt.Printf("worker type %s removed\n", printable(c.Name))
	return nil
}
