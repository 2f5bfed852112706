package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/posener/complete"
	"github.com/willabides/kongplete"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/inventory"
	"github.com/rbee-dev/rbee/queen"
	"github.com/rbee-dev/rbee/queenapi"
)

type completionCmd struct {
	Shell string `arg:"" enum:"bash,zsh,fish" help:"Shell to complete in: bash, zsh or fish."`
}

func (c *completionCmd) Help() string {
	return `The script calls rbee itself to complete commands, flags, hive names and
model names. Load it from your shell's startup file.

Examples:
  echo 'source <(rbee completion bash)' >> ~/.bashrc
  echo 'source <(rbee completion zsh)' >> ~/.zshrc
  rbee completion fish > ~/.config/fish/completions/rbee.fish`
}

// completionScripts register rbee with each shell: the shell runs rbee with
// COMP_LINE (and COMP_POINT) set, and kongplete answers one candidate a
// line. ${bin} is this executable's absolute path, quoted.
var completionScripts = map[string]string{
	"bash": "complete -o default -C ${bin} rbee\n",
	"zsh":  "autoload -U +X bashcompinit && bashcompinit\ncomplete -o default -C ${bin} rbee\n",
	"fish": `function __complete_rbee
    set -lx COMP_LINE (commandline -cp)
    test -z (commandline -ct)
    and set COMP_LINE "$COMP_LINE "
    ${bin}
end
complete -f -c rbee -a "(__complete_rbee)"
`,
}

func (c *completionCmd) Run(ctx context.Context, g *globals) error {
	bin, err := os.Executable()
	if err == nil {
		bin, err = filepath.Abs(bin)
	}
	if err != nil {
		return fmt.Errorf("completion: find this executable: %w", err)
	}
	fmt.Print(completionScript(c.Shell, bin))
	return nil
}

func completionScript(shell, bin string) string {
	// Single quotes work in all three shells (fish reads \' inside them
	// too, but a path with a quote is refused by no one; keep it simple).
	quoted := "'" + strings.ReplaceAll(bin, "'", `'\''`) + "'"
	return strings.ReplaceAll(completionScripts[shell], "${bin}", quoted)
}

// predictModels lists the names of the models in this machine's hive
// catalog (aliases, references, ids), asked of a running queen within half
// a second; with no queen it completes none. GGUF files complete too.
var predictModels = func() []string {
	home := os.Getenv("RBEE_HOME")
	if home == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return nil
		}
		home = filepath.Join(h, ".rbee")
	}
	c := queenapi.Unix(rbee.Home(home).QueenSocket())
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	ms, err := c.Models(ctx, "")
	if err != nil {
		return nil
	}
	var names []string
	for _, m := range ms.Models {
		for _, n := range []string{m.Alias, m.Ref, m.ID} {
			if n != "" && !filepath.IsAbs(n) && !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	return names
}

// completionOptions are the predictors the `predictor:"…"` tags name. Call
//
//	kongplete.Complete(parser, completionOptions()...)
//
// in main after kong.New and before Parse: when the shell asks (COMP_LINE
// set) it prints the candidates and exits.
func completionOptions() []kongplete.Option {
	return []kongplete.Option{
		kongplete.WithPredictor("hive", complete.PredictFunc(func(complete.Args) []string { return hiveNames() })),
		kongplete.WithPredictor("model", complete.PredictOr(complete.PredictFunc(func(complete.Args) []string { return predictModels() }),
			complete.PredictFiles("*.gguf"))),
		kongplete.WithPredictor("file", complete.PredictFiles("*")),
	}
}

// hiveNames are this machine's hive and the inventory's, whatever state
// the inventory is in: completion must never fail loudly.
func hiveNames() []string {
	names := []string{queen.LocalHive}
	inv, err := inventory.Load(inventory.PathFor(os.Getenv("RBEE_HOME")))
	if err != nil || inv == nil {
		return names
	}
	for _, h := range inv.Hives {
		if !slices.Contains(names, h.Name) {
			names = append(names, h.Name)
		}
	}
	return names
}
