package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/doctor"
	"github.com/rbee-dev/rbee/inventory"
	"github.com/rbee-dev/rbee/queen"
	"github.com/rbee-dev/rbee/remote"
)

type doctorCmd struct {
	Hive             string `placeholder:"NAME|USER@HOST[:PORT]" predictor:"hive" help:"Check this hive or host over SSH (default, or localhost: this machine). Nothing is installed or written there."`
	JSON             bool   `help:"Print the report as JSON."`
	Identity         string `type:"path" help:"Private key to log in with."`
	AcceptNewHostKey bool   `name:"accept-new-host-key" help:"Trust and record the host key of a host never seen before (like OpenSSH accept-new)."`
}

func (c *doctorCmd) Help() string {
	return `Examples:
  rbee doctor                        check this machine
  rbee doctor --hive gpu-box         check an inventory hive over SSH
  rbee doctor --hive al@10.0.0.5 --json`
}

func (c *doctorCmd) Run(ctx context.Context, g *globals) error {
	opt := doctor.Options{Version: rbee.Version, Needs: doctor.NeedsOf(agentFiles(g)...),
		Hive: queen.LocalHive, Home: g.Home, Engine: os.Getenv("RBEE_ENGINE")}
	// "localhost" is this machine's hive, as everywhere in rbee.
	if c.Hive != "" && c.Hive != queen.LocalHive {
		opt.Hive, opt.Home, opt.Engine = "", "", ""
		inv, err := inventory.Load(inventory.PathFor(g.Home))
		if err != nil {
			// A broken inventory does not stop a check of USER@HOST.
			fmt.Fprintf(os.Stderr, "rbee: %v\n", err)
			inv = nil
		}
		if inv != nil {
			if _, ok := inv.Hive(c.Hive); ok {
				opt.Hive = c.Hive // hints name it
			}
		}
		t, knownHosts, err := doctor.TargetFor(c.Hive, inv)
		switch {
		case errors.Is(err, doctor.ErrNoHive):
			fmt.Fprintf(os.Stderr, "rbee: %v\n", err)
		case err != nil:
			return exitf(rbee.ExitUsage, "", "doctor: %v", err)
		}
		if c.Identity != "" {
			t.IdentityFiles = append([]string{c.Identity}, t.IdentityFiles...)
		}
		if kh := os.Getenv("RBEE_KNOWN_HOSTS"); kh != "" && knownHosts == "" {
			knownHosts = kh
		}
		opt.Target = &t
		opt.Config = remote.Config{KnownHosts: knownHosts, SSHConfig: os.Getenv("RBEE_SSH_CONFIG"),
			UseAgent: true, AcceptNewHostKey: c.AcceptNewHostKey}
	}
	rep, err := doctor.Run(ctx, opt)
	if err != nil {
		return err
	}
	if c.JSON {
		err = rep.WriteJSON(os.Stdout)
	} else {
		err = rep.WriteText(os.Stdout)
	}
	if err != nil {
		return err
	}
	if !rep.Failed() {
		return nil
	}
	if ch, _ := rep.Check("reach"); ch.Verdict == doctor.Fail {
		return exitf(rbee.ExitHive, "", "doctor: %s cannot be reached (see above)", rep.Target)
	}
	return exitf(rbee.ExitError, "", "doctor: %s fails checks (see above)", rep.Target)
}

// agentFiles are the local files whose glibc needs a host must meet: the
// agent that would be uploaded and the engine bundles this rbee holds.
func agentFiles(g *globals) []string {
	var files []string
	if bin := os.Getenv("RBEE_HIVE_BIN"); bin != "" {
		files = append(files, bin)
	} else if exe, err := os.Executable(); err == nil {
		files = append(files, filepath.Join(filepath.Dir(exe), "rbee-hive"))
	}
	if eng := os.Getenv("RBEE_ENGINE"); eng != "" {
		files = append(files, eng)
	}
	dirs, _ := filepath.Glob(filepath.Join(g.Home, "engines", "*"))
	return append(files, dirs...)
}
