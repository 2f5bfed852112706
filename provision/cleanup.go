package provision

import (
	"context"
	"fmt"
	"path"
	"strings"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/remote"
)

// removeOldAgentsScript removes the version directories under $2 other
// than $1 from which no process of the user runs (/proc/PID/exe; a
// deleted binary reads "PATH (deleted)", which still matches), and
// prints each one removed. One line: remote commands refuse newlines.
const removeOldAgentsScript = `keep=$1; base=$2; cd "$base" 2>/dev/null || exit 0; ` +
	`for d in */; do d=${d%/}; [ "$d" = "$keep" ] && continue; [ -d "$d" ] || continue; used=; ` +
	`for e in /proc/[0-9]*/exe; do t=$(readlink "$e" 2>/dev/null) || continue; ` +
	`case "$t" in "$base/$d/"*) used=1; break;; esac; done; ` +
	`[ -n "$used" ] && continue; rm -rf -- "$base/$d" && printf '%s\n' "$d"; done; exit 0`

// RemoveOldAgents removes the agent versions under ~/.rbee/hive/ on the
// host other than this build's, once no process runs from them: a worker
// adopted across an upgrade keeps its version until it exits, and a later
// Up removes it then. A failure only leaves files for the next Up, so it
// is narrated, not returned.
func RemoveOldAgents(ctx context.Context, c *remote.Conn, l Layout, narrate func(action, msg string)) []string {
	base := path.Dir(path.Dir(l.AgentPath(rbee.Version)))
	out, err := c.Run(ctx, []string{"sh", "-c", removeOldAgentsScript, "sh", rbee.Version, base}, nil)
	if err != nil {
		if narrate != nil {
			narrate("agent_cleanup", fmt.Sprintf("could not remove old agent versions in %s: %v", base, err))
		}
		return nil
	}
	removed := strings.Fields(string(out))
	if len(removed) > 0 && narrate != nil {
		narrate("agent_cleanup", fmt.Sprintf("removed old agent versions no process uses: %s", strings.Join(removed, ", ")))
	}
	return removed
}
