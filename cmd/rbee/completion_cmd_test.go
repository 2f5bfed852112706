package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
	"github.com/willabides/kongplete"
)

// completionCLI is the CLI as main builds it, with the doctor and
// completion commands added where main does not have them yet.
type completionCLI struct {
	cli
	Doctor     doctorCmd     `cmd:""`
	Completion completionCmd `cmd:""`
}

// TestCompletionHelper is not a test: it is rbee answering the shell, run
// by the script TestCompletionBash writes (Go's helper-process pattern).
func TestCompletionHelper(t *testing.T) {
	if os.Getenv("RBEE_COMPLETION_HELPER") != "1" {
		t.Skip("helper process for TestCompletionBash")
	}
	var model any = &completionCLI{}
	if _, ok := reflect.TypeOf(cli{}).FieldByName("Completion"); ok {
		model = &cli{}
	}
	parser, err := kong.New(model, kong.Name("rbee"), kong.Vars{"queen_addr": "127.0.0.1:1", "home": t.TempDir(), "version": "test"})
	if err != nil {
		t.Fatal(err)
	}
	kongplete.Complete(parser, append(completionOptions(), kongplete.WithExitFunc(os.Exit))...)
	os.Exit(3) // Complete exits when COMP_LINE is set
}

// TestCompletionBash sources `rbee completion bash` in a real bash, takes
// the command it registered with `complete -C`, and runs it the way bash
// does on TAB (COMP_LINE, COMP_POINT; arguments: command, word, previous
// word).
func TestCompletionBash(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	dir := t.TempDir()
	inv := filepath.Join(dir, "inventory.toml")
	err = os.WriteFile(inv, []byte("[[hive]]\nname = \"gpu-box\"\nhost = \"10.0.0.5\"\n\n[[hive]]\nname = \"gpu-rack\"\nhost = \"10.0.0.6\"\n"), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	// The rbee the script registers: this test binary as the helper.
	bin := filepath.Join(dir, "rbee bin") // a space, to prove the quoting
	helper := "#!/bin/sh\nRBEE_COMPLETION_HELPER=1 exec '" + os.Args[0] + "' -test.run='^TestCompletionHelper$' \"$@\"\n"
	if err := os.WriteFile(bin, []byte(helper), 0o755); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "rbee.bash")
	if err := os.WriteFile(script, []byte(completionScript("bash", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	const driver = `set -e
source "$1"
spec=$(complete -p rbee)
eval "words=($spec)"
for ((i = 0; i < ${#words[@]}; i++)); do
	if [ "${words[i]}" = -C ]; then cmd=${words[i+1]}; fi
done
export COMP_LINE=$2 COMP_POINT=${#2}
read -ra parts <<< "$2"
cur=${parts[-1]}
prev=${parts[-2]}
if [ "${2: -1}" = " " ]; then prev=$cur; cur=; fi
"$cmd" rbee "$cur" "$prev"
`
	tests := []struct {
		line string
		want []string
		not  []string
	}{
		{line: "rbee doctor --hive gpu-", want: []string{"gpu-box", "gpu-rack"}, not: []string{"localhost"}},
		{line: "rbee doctor --hive ", want: []string{"localhost", "gpu-box", "gpu-rack"}},
		{line: "rbee doc", want: []string{"doctor"}},
		{line: "rbee doctor --j", want: []string{"--json"}},
		{line: "rbee completion ", want: []string{"bash", "fish", "zsh"}},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			cmd := exec.Command(bash, "--norc", "--noprofile", "-c", driver, "driver", script, tt.line)
			cmd.Env = append(os.Environ(), "RBEE_INVENTORY="+inv)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("bash: %v\n%s", err, out)
			}
			got := strings.Fields(string(out))
			t.Logf("%q: %q", tt.line, got)
			for _, w := range tt.want {
				if !slices.Contains(got, w) {
					t.Errorf("completing %q: got %q, want %s among them", tt.line, got, w)
				}
			}
			for _, w := range tt.not {
				if slices.Contains(got, w) {
					t.Errorf("completing %q: got %q, want no %s", tt.line, got, w)
				}
			}
		})
	}
}

func TestCompletionScripts(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		s := completionScript(shell, "/opt/it's/rbee")
		if !strings.Contains(s, `'/opt/it'\''s/rbee'`) {
			t.Errorf("%s: got %q, want the quoted path in it", shell, s)
		}
	}
}
