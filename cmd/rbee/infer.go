package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/queen"
	"github.com/rbee-dev/rbee/queenapi"
)

type inferCmd struct {
	Hive        string   `predictor:"hive" help:"Run on this hive (default: the local machine)."`
	Model       string   `required:"" predictor:"model" help:"GGUF file on this machine, https://…/file.gguf, hf:ORG/REPO[/FILE.gguf] (downloaded by the hive), or a name: an alias (rbee model pull --alias) or a deployment."`
	Device      string   `help:"Pin the device (gpu0, gpu1, cpu)."`
	MaxTokens   int      `name:"max-tokens" help:"Stop after this many tokens (0 = until the model stops)."`
	Temperature *float64 `help:"Sampling temperature, 0 (greedy) to 2 (default: the worker's, 1)."`
	Seed        *int64   `help:"Sampling seed, for reproducible output."`
	Chat        bool     `help:"Use the model's chat template (default when the model has one)."`
	Raw         bool     `help:"Send the prompt as is, no chat template."`
	JSON        bool     `help:"Print every event as one JSON line on stdout."`
	Explain     bool     `help:"List every scheduling candidate and why it lost."`
	Ephemeral   bool     `env:"RBEE_EPHEMERAL" help:"Run a queen inside this process and stop everything it started at the end."`
	Quiet       bool     `short:"q" help:"No narration on stderr."`
	WorkerType  string   `name:"worker-type" help:"Run on an external engine declared with rbee worker add-type (default: rbee-worker)."`
	Split       []string `sep:"," predictor:"hive" help:"Spread the model over these hives (two or more, comma-separated) with llama.cpp's RPC backend, carried inside SSH; the main worker goes to the one with the most room. Without it rbee splits only a model no single device holds."`
	queenConfig `embed:""`

	Prompt string `arg:"" help:"The prompt."`
}

func (c *inferCmd) Help() string {
	return `Tokens go to stdout, the narration to stderr. The queen is started when
none answers (on ` + envNote("RBEE_QUEEN", queenapi.DefaultAddr) + `).

Examples:
  rbee infer --model ./model.gguf "Why is the sky blue?"
  rbee infer --hive gpu-box --model hf:ORG/REPO:Q8_0 --temperature 0 --json "hi"
  rbee infer --split gpu-box,server --explain --model ./big.gguf "hi"`
}

// envNote is a setting's value for help texts, saying where it comes from.
func envNote(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v + ", from $" + name
	}
	return def + ", $" + name + " to change"
}

// Validate runs before anything is started (kong calls it).
func (c *inferCmd) Validate() error {
	switch {
	case c.Chat && c.Raw:
		return errors.New("--chat and --raw contradict each other; pick one")
	case c.MaxTokens < 0:
		return errors.New("--max-tokens must not be negative")
	case c.Temperature != nil && !(*c.Temperature >= 0 && *c.Temperature <= 2): // NaN too
		return fmt.Errorf("--temperature %g is out of range; use 0 to 2", *c.Temperature)
	case strings.TrimSpace(c.Prompt) == "":
		return errors.New("the prompt is empty")
	case c.Seed != nil && (*c.Seed < 0 || *c.Seed > 1<<32-1):
		return fmt.Errorf("--seed %d is out of range; use 0 to 4294967295", *c.Seed)
	case c.JSON && c.Quiet:
		return errors.New("--json and --quiet contradict each other: --json prints every event")
	case len(c.Split) > 0 && c.Hive != "":
		return errors.New("--split and --hive contradict each other: --split names every hive")
	case len(c.Split) > 0 && c.Device != "":
		return errors.New("--split and --device contradict each other: the split picks each hive's roomiest device")
	case len(c.Split) > 0 && c.WorkerType != "":
		return errors.New("--split works with rbee-worker only, not --worker-type")
	case len(c.Split) == 1:
		return fmt.Errorf("--split %s: name at least two hives, comma-separated", c.Split[0])
	}
	seen := map[string]bool{}
	for _, h := range c.Split {
		if h == "" {
			return fmt.Errorf("--split %q: an empty hive name", strings.Join(c.Split, ","))
		}
		if seen[h] {
			return fmt.Errorf("--split: hive %s is named twice", h)
		}
		seen[h] = true
	}
	return nil
}

// printer shows events the way the person asked for.
type printer struct {
	json    bool
	quiet   bool
	upLines bool // rbee up: hive lines and errors on stdout, one per host
	// collect, when set, is given every event before it is printed (hive
	// add of several hosts keeps what it reports from each).
	collect interface{ event(rbee.Event) }
	bars    *progress
	out     *bufio.Writer
	tokens  int
}

func (p *printer) event(ev rbee.Event) {
	if p.collect != nil {
		p.collect.event(ev)
	}
	if p.json {
		b, _ := json.Marshal(ev)
		p.out.Write(b)
		p.out.WriteByte('\n')
		p.out.Flush()
		return
	}
	switch ev.Type {
	case rbee.EventToken:
		p.out.WriteString(ev.Text)
		p.out.Flush()
		p.tokens++
	case rbee.EventProgress:
		if !p.quiet {
			if p.bars == nil {
				p.bars = newProgress()
			}
			p.bars.event(ev)
		}
	case rbee.EventNarration:
		if p.bars != nil {
			p.bars.close() // a step after a download: the bar is done
			p.bars = nil
		}
		if ev.Action == queenapi.EventInstallPlan {
			var plan queenapi.InstallPlan
			if err := json.Unmarshal(ev.Data, &plan); err == nil {
				writePlan(p.out, "", &plan)
				p.out.Flush()
				return
			}
		}
		if p.upLines && ev.Action == "hive_up" {
			fmt.Fprintf(p.out, "%s: %s\n", printable(strings.TrimPrefix(ev.Actor, "hive ")), printable(ev.Message))
			p.out.Flush()
			return
		}
		if !p.quiet {
			fmt.Fprintf(os.Stderr, "[%s] %s\n", printable(ev.Actor), printable(ev.Message))
		}
	case rbee.EventDone:
		if p.bars != nil {
			p.bars.close()
			p.bars = nil
		}
		if p.tokens > 0 {
			p.out.WriteByte('\n')
			p.out.Flush()
		}
		if !p.quiet && ev.Done != nil {
			d := ev.Done
			warm := "new worker"
			if d.Warm {
				warm = "warm worker"
			}
			fmt.Fprintf(os.Stderr, "[%s] done: %d prompt + %d generated tokens, %.1f tokens/s, %s %s on %s/%s (%s)\n",
				printable(ev.Actor), d.PromptTokens, d.CompletionTokens, d.TokensPerSecond, warm, printable(d.Worker), printable(d.Hive), printable(d.Device), printable(d.FinishReason))
		}
	case rbee.EventError:
		if p.upLines && strings.HasPrefix(ev.Actor, "hive ") {
			fmt.Fprintf(p.out, "%s: FAILED: %s\n", printable(strings.TrimPrefix(ev.Actor, "hive ")), printableText(ev.Message))
			p.out.Flush()
		}
	case rbee.EventJob:
	default: // a type this keeper does not know: ignored
	}
}

func (c *inferCmd) Run(ctx context.Context, g *globals) error {
	// Everything local is checked before any process is started.
	model := c.Model
	if _, rerr := download.ParseRef(c.Model); rerr != nil {
		if !errors.Is(rerr, download.ErrNotRef) {
			return exitf(rbee.ExitUsage, "", "model %s: %v", c.Model, rerr)
		}
		abs, err := filepath.Abs(c.Model)
		if err != nil {
			return exitf(rbee.ExitUsage, "", "model path: %v", err)
		}
		if _, serr := os.Stat(abs); serr == nil || !isModelName(c.Model) {
			if err := checkModelFile(abs); err != nil {
				return err
			}
			model = abs
		} // else a name the fleet's catalogs know (an alias, a deployment): the queen finds it
	}
	if c.Ephemeral && flagGiven("--queen") {
		return exitf(rbee.ExitUsage, "", "--ephemeral runs its own queen; it contradicts --queen %s", g.Queen)
	}
	p := &printer{json: c.JSON, quiet: c.Quiet, out: bufio.NewWriter(os.Stdout)}
	narrate := p.keeper

	var qc *queenapi.Client
	if c.Ephemeral {
		cfg, err := c.build(g)
		if err != nil {
			return err
		}
		stop, client, err := startEphemeral(ctx, cfg, narrate)
		if err != nil {
			return err
		}
		defer stop()
		qc = client
	} else {
		client, h, started, err := ensureQueen(ctx, g, narrate)
		if err != nil {
			return err
		}
		if !started {
			narrate("queen_awake", fmt.Sprintf("queen is awake (pid %d)", h.PID))
		}
		qc = client
	}

	mode := "auto"
	if c.Chat {
		mode = "chat"
	} else if c.Raw {
		mode = "raw"
	}
	s, err := qc.Job(ctx, queenapi.JobRequest{
		Prompt: c.Prompt, Model: model, Hive: c.Hive, Device: c.Device, MaxTokens: c.MaxTokens,
		Temperature: c.Temperature, Seed: c.Seed, Mode: mode, Explain: c.Explain, WorkerType: c.WorkerType, Split: c.Split,
	})
	return follow(ctx, g, s, err, p, true)
}

// flagGiven reports whether the flag was on the command line (not from the
// environment or a default).
func flagGiven(name string) bool {
	for _, a := range os.Args[1:] {
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}

// checkModelFile refuses a missing file, anything but a regular file (a
// FIFO or a device would block the open or the read), or a file that is not
// GGUF. It looks before it opens: Stat never blocks.
func checkModelFile(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return exitf(rbee.ExitNotFound, "give the path of a .gguf file (make models writes test models to .rbee-dev/models)", "model file %s does not exist", printable(path))
		}
		return exitf(rbee.ExitNotFound, "", "model file: %w", err)
	}
	switch {
	case st.IsDir():
		return exitf(rbee.ExitNotFound, "", "model path %s is a directory; give a .gguf file", printable(path))
	case !st.Mode().IsRegular():
		return exitf(rbee.ExitNotFound, "give the path of a .gguf file on disk", "model path %s is %s, not a regular file", printable(path), fileKind(st.Mode()))
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0) // replaced meanwhile by a FIFO: no hang
	if err != nil {
		return exitf(rbee.ExitNotFound, "", "model file: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return exitf(rbee.ExitNotFound, "give the path of a .gguf file on disk", "model path %s is not a regular file", printable(path))
	}
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil || string(magic[:]) != "GGUF" {
		return exitf(rbee.ExitNotFound, "rbee runs GGUF models (llama.cpp's format)", "%s is not a GGUF file", printable(path))
	}
	return nil
}

// fileKind names a non-regular file's type for people.
func fileKind(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	}
	return "not a plain file"
}

// startEphemeral runs a queen in this process on a private control socket
// (no TCP port). stop shuts it down in cascade: the hive agent it started,
// and its workers.
func startEphemeral(ctx context.Context, cfg queen.Config, narrate func(action, msg string)) (stop func(), c *queenapi.Client, err error) {
	sock := filepath.Join(cfg.Home.RunDir(), fmt.Sprintf("queen-ephemeral-%d.sock", os.Getpid()))
	if err := cfg.Home.Make(); err != nil {
		return nil, nil, exitf(rbee.ExitQueen, "", "ephemeral queen: %v", err)
	}
	ln, err := queen.ListenControl(sock)
	if err != nil {
		return nil, nil, exitf(rbee.ExitQueen, "", "ephemeral queen: %v", err)
	}
	cfg.Log = slog.New(slog.DiscardHandler)
	q, err := queen.New(ctx, cfg)
	if err != nil {
		ln.Close()
		return nil, nil, exitf(rbee.ExitQueen, "", "ephemeral queen: %v", err)
	}
	narrate("queen_ephemeral", "running an ephemeral queen in this process")
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	go func() { served <- serveQueen(sctx, q, ln, nil, nil) }()
	return func() {
		start := time.Now()
		cancel()
		<-served
		os.Remove(sock)
		narrate("queen_stopped", fmt.Sprintf("ephemeral queen stopped with everything it started (%d ms)", time.Since(start).Milliseconds()))
	}, queenapi.Unix(sock), nil
}

// keeper narrates a step of the keeper itself.
func (p *printer) keeper(action, msg string) { p.event(rbee.Narrate("keeper", action, msg)) }

func quietNarrate(string, string) {}

// printJSON prints v as one JSON line: the API's own field names.
func printJSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Println(string(b))
	return err
}

// isModelName says whether --model looks like a name a catalog gives
// (rbee model pull --alias, a deployment) rather than a path.
func isModelName(s string) bool {
	return catalog.ValidAlias(s) == nil && !strings.HasSuffix(s, ".gguf")
}
