package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/alecthomas/kong"
	"github.com/willabides/kongplete"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/queen"
	"github.com/rbee-dev/rbee/queenapi"
)

// globals are the flags every command takes.
type globals struct {
	Queen string `default:"${queen_addr}" env:"RBEE_QUEEN" help:"The queen's TCP address (host:port): health and the OpenAI API; with --token-file, a queen on another machine."`
	Home  string `default:"${home}" env:"RBEE_HOME" type:"path" help:"rbee's state directory."`
	// TokenFile holds the queen's bearer token (mode 0600): required to
	// serve beyond loopback, sent with every request when set.
	TokenFile string `name:"token-file" env:"RBEE_TOKEN_FILE" type:"path" help:"File holding the queen's bearer token (mode 0600); needed to serve on a non-loopback address, and to reach a queen on another machine."`

	token string // read from TokenFile
}

type cli struct {
	globals
	Infer  inferCmd  `cmd:"" help:"Run a prompt on the fleet (the local machine by default)."`
	Hive   hiveCmd   `cmd:"" help:"Manage hives: the hosts rbee runs models on."`
	Model  modelCmd  `cmd:"" help:"Manage models on hives: pull, ls, rm."`
	Worker workerCmd `cmd:"" help:"Manage engine bundles and worker binaries on hives."`
	Up     upCmd     `cmd:"" help:"Connect every hive in the inventory and start its agent."`
	Queen  queenCmd  `cmd:"" help:"Manage the queen (the orchestrator daemon)."`
	Doctor doctorCmd `cmd:"" help:"Check this machine or a host before rbee touches it."`
	Ps     psCmd     `cmd:"" help:"List every worker across the fleet."`
	Top    topCmd    `cmd:"" help:"A live view of the fleet: hives, devices, workers, door queues."`

	Completion completionCmd `cmd:"" help:"Print a shell completion script: bash, zsh or fish."`
	Version    versionCmd    `cmd:"" help:"Print the version."`
}

// exitError carries an exit code to main.
type exitError struct {
	code int
	err  error
	hint string
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitf(code int, hint, format string, args ...any) error {
	return &exitError{code: code, err: fmt.Errorf(format, args...), hint: hint}
}

func main() {
	home, _ := os.UserHomeDir()
	var c cli
	parser, err := kong.New(&c,
		kong.Name("rbee"),
		kong.Description("rbee turns the machines you own into one LLM inference fleet."),
		kong.UsageOnError(),
		// Help shows the defaults in effect: the environment's when set.
		kong.Vars{"queen_addr": envOr("RBEE_QUEEN", queenapi.DefaultAddr), "home": envOr("RBEE_HOME", filepath.Join(home, ".rbee")), "version": rbee.Version},
	)
	if err != nil {
		panic(err) // a bug in the command definitions
	}
	// Answers the shell's completion requests (COMP_LINE set) and exits.
	kongplete.Complete(parser, completionOptions()...)
	kctx, err := parser.Parse(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "rbee: %v\n", err)
		os.Exit(rbee.ExitUsage)
	}
	// The first Ctrl-C cancels the context (the job, down to the worker);
	// a second one exits at once.
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		cancel()
		<-sigs
		fmt.Fprintln(os.Stderr, "rbee: interrupted twice, exiting now")
		os.Exit(rbee.ExitInterrupted)
	}()
	if c.TokenFile != "" {
		tok, err := queen.ReadToken(c.TokenFile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "rbee: %v\n", err)
			os.Exit(rbee.ExitUsage)
		}
		c.token = tok
	}
	kctx.BindTo(ctx, (*context.Context)(nil))
	err = kctx.Run(&c.globals)
	cancel()
	os.Exit(report(ctx, err))
}

// report prints err the one way rbee reports errors and returns the exit code.
func report(ctx context.Context, err error) int {
	if err == nil {
		return rbee.ExitOK
	}
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "rbee: interrupted")
		return rbee.ExitInterrupted
	}
	fmt.Fprintf(os.Stderr, "rbee: %v\n", err)
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.hint != "" {
			fmt.Fprintf(os.Stderr, "hint: %s\n", ee.hint)
		}
		return ee.code
	}
	return rbee.ExitError
}

type versionCmd struct{}

func (versionCmd) Run() error {
	fmt.Printf("rbee %s (protocol %d)\n", rbee.Version, rbee.ProtocolVersion)
	return nil
}
