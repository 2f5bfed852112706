package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/queen"
	"github.com/rbee-dev/rbee/sse"
)

type inferCmd struct {
	Hive        string   `help:"Run on this hive (default: the local machine)."`
	Model       string   `required:"" help:"GGUF file on this machine, https://…/file.gguf, or hf:ORG/REPO[/FILE.gguf] (downloaded by the hive)."`
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
	queenConfig `embed:""`

	Prompt string `arg:"" help:"The prompt."`
}

// Validate runs before anything is started (kong calls it).
func (c *inferCmd) Validate() error {
	switch {
	case c.Chat && c.Raw:
		return errors.New("--chat and --raw contradict each other; pick one")
	case c.MaxTokens < 0:
		return errors.New("--max-tokens must not be negative")
	case c.Temperature != nil && (*c.Temperature < 0 || *c.Temperature > 2):
		return fmt.Errorf("--temperature %g is out of range; use 0 to 2", *c.Temperature)
	case strings.TrimSpace(c.Prompt) == "":
		return errors.New("the prompt is empty")
	case c.Seed != nil && (*c.Seed < 0 || *c.Seed > 1<<32-1):
		return fmt.Errorf("--seed %d is out of range; use 0 to 4294967295", *c.Seed)
	case c.JSON && c.Quiet:
		return errors.New("--json and --quiet contradict each other: --json prints every event")
	}
	return nil
}

// printer shows events the way the person asked for.
type printer struct {
	json    bool
	quiet   bool
	upLines bool // rbee up: hive lines and errors on stdout, one per host
	bars    *progress
	out     *bufio.Writer
	tokens  int
}

func (p *printer) event(ev rbee.Event) {
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
		if p.upLines && ev.Action == "hive_up" {
			fmt.Fprintf(p.out, "%s: %s\n", strings.TrimPrefix(ev.Actor, "hive "), ev.Message)
			p.out.Flush()
			return
		}
		if !p.quiet {
			fmt.Fprintf(os.Stderr, "[%s] %s\n", ev.Actor, ev.Message)
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
				ev.Actor, d.PromptTokens, d.CompletionTokens, d.TokensPerSecond, warm, d.Worker, d.Hive, d.Device, d.FinishReason)
		}
	case rbee.EventError:
		if p.upLines && strings.HasPrefix(ev.Actor, "hive ") {
			fmt.Fprintf(p.out, "%s: FAILED: %s\n", strings.TrimPrefix(ev.Actor, "hive "), ev.Message)
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
		if err := checkModelFile(abs); err != nil {
			return err
		}
		model = abs
	}
	if c.Ephemeral && flagGiven("--queen") {
		return exitf(rbee.ExitUsage, "", "--ephemeral runs its own queen; it contradicts --queen %s", g.Queen)
	}
	p := &printer{json: c.JSON, quiet: c.Quiet, out: bufio.NewWriter(os.Stdout)}
	narrate := func(action, msg string) { p.event(rbee.Narrate("keeper", action, msg)) }

	addr := g.Queen
	if c.Ephemeral {
		cfg, err := c.build(g)
		if err != nil {
			return err
		}
		stop, a, err := startEphemeral(ctx, cfg, narrate)
		if err != nil {
			return err
		}
		defer stop()
		addr = a
	} else {
		h, started, err := ensureQueen(ctx, g, narrate)
		if err != nil {
			return err
		}
		if !started {
			narrate("queen_awake", fmt.Sprintf("queen is awake (pid %d)", h.PID))
		}
	}

	mode := "auto"
	if c.Chat {
		mode = "chat"
	} else if c.Raw {
		mode = "raw"
	}
	body, _ := json.Marshal(queen.JobRequest{
		Prompt: c.Prompt, Model: model, Hive: c.Hive, Device: c.Device, MaxTokens: c.MaxTokens,
		Temperature: c.Temperature, Seed: c.Seed, Mode: mode, Explain: c.Explain, WorkerType: c.WorkerType,
	})
	return followJob(ctx, addr, "/v1/jobs", body, p, true)
}

// followJob posts body to the queen and follows the event stream it
// answers with, printing events with p. needDone: the stream must end with
// a done event.
func followJob(ctx context.Context, addr, path string, body []byte, p *printer, needDone bool) error {
	req, err := http.NewRequestWithContext(ctx, "POST", "http://"+addr+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return exitf(rbee.ExitQueen, "", "submit job: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !sse.IsStream(resp) {
		return apiError(resp)
	}
	var failed *rbee.Event
	done := false
	err = sse.Relay(sse.NewReader(resp.Body), func(ev rbee.Event) error {
		p.event(ev)
		switch ev.Type {
		case rbee.EventError:
			e := ev
			failed = &e
		case rbee.EventDone:
			done = true
		}
		return nil
	})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if failed != nil {
		msg, hint, _ := strings.Cut(failed.Message, "\nhint: ")
		return exitf(rbee.ExitCodeFor(failed.Code), hint, "%s", msg)
	}
	if err != nil {
		return exitf(rbee.ExitQueen, "", "the queen's event stream broke off: %v", err)
	}
	if needDone && !done {
		return exitf(rbee.ExitError, "", "the job ended without a result")
	}
	return nil
}

// apiError turns a queen error answer into an exit error.
func apiError(resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 32<<10))
	var e struct {
		Error rbee.Error `json:"error"`
	}
	if json.Unmarshal(raw, &e) == nil && e.Error.Message != "" {
		return exitf(rbee.ExitCodeFor(e.Error.Code), e.Error.Hint, "%s", e.Error.Message)
	}
	return exitf(rbee.ExitQueen, "", "queen: status %d: %s", resp.StatusCode, strings.TrimSpace(string(raw)))
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

// checkModelFile refuses a missing file or one that is not GGUF.
func checkModelFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return exitf(rbee.ExitNotFound, "give the path of a .gguf file (make models writes test models to .rbee-dev/models)", "model file %s does not exist", path)
		}
		return exitf(rbee.ExitNotFound, "", "model file: %v", err)
	}
	defer f.Close()
	var magic [4]byte
	st, _ := f.Stat()
	if st != nil && st.IsDir() {
		return exitf(rbee.ExitNotFound, "", "model path %s is a directory; give a .gguf file", path)
	}
	if _, err := io.ReadFull(f, magic[:]); err != nil || string(magic[:]) != "GGUF" {
		return exitf(rbee.ExitNotFound, "rbee runs GGUF models (llama.cpp's format)", "%s is not a GGUF file", path)
	}
	return nil
}

// startEphemeral runs a queen in this process on a free loopback port. stop
// shuts it down in cascade: the hive agent it started, and its workers.
func startEphemeral(ctx context.Context, cfg queen.Config, narrate func(action, msg string)) (stop func(), addr string, err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", exitf(rbee.ExitQueen, "", "ephemeral queen: %v", err)
	}
	cfg.Log = slog.New(slog.DiscardHandler)
	q, err := queen.New(ctx, cfg)
	if err != nil {
		ln.Close()
		return nil, "", exitf(rbee.ExitQueen, "", "ephemeral queen: %v", err)
	}
	narrate("queen_ephemeral", "running an ephemeral queen in this process")
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	go func() { served <- serveQueen(sctx, q, ln, "") }()
	return func() {
		start := time.Now()
		cancel()
		<-served
		narrate("queen_stopped", fmt.Sprintf("ephemeral queen stopped with everything it started (%d ms)", time.Since(start).Milliseconds()))
	}, ln.Addr().String(), nil
}
