package doctor

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/bundle"
	"github.com/rbee-dev/rbee/internal/proc"
)

// hiveScript reads what an installed hive left in ~/.rbee, and changes
// nothing: each engine bundle's manifest and entries, with the SHA-256 of
// its files (checked against the manifest here, by bundle.Check), whether
// the agent of the pid file runs, and the tail of its log. It is a
// constant, like probeScript, and runs after it.
const hiveScript = `
rb="$HOME/.rbee"
for d in "$rb"/engines/*/; do
	[ -f "${d}rbee-bundle.json" ] || continue
	echo "engine=${d%/}"
	head -c 1048576 "${d}rbee-bundle.json" | sed 's/^/engine_manifest=/'
	echo
	for f in "$d"*; do
		[ -e "$f" ] || [ -L "$f" ] || continue
		st=$(stat -c '%f %s' "$f" 2>/dev/null) || continue
		sum=
		if [ -f "$f" ] && [ ! -L "$f" ]; then sum=$(sha256sum <"$f" 2>/dev/null | cut -c 1-64); fi
		lnk=
		if [ -L "$f" ]; then lnk=$(readlink "$f"); fi
		printf 'engine_entry=%s %s %s\t%s\n' "$st" "${sum:--}" "${f##*/}" "$lnk"
	done
done
if [ -r "$rb/run/hive.pid" ]; then
	pid=$(head -c 20 "$rb/run/hive.pid" | tr -cd 0-9)
	if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = rbee-hive ]; then echo "agent_pid=$pid"; fi
fi
if [ -r "$rb/logs/hive.log" ]; then tail -n 100 "$rb/logs/hive.log" | cut -c 1-1000 | sed 's/^/agent_log=/'; echo agent_log_read=yes; fi
`

// engineFinding is one installed engine bundle and what its check found.
type engineFinding struct {
	dir string
	m   *bundle.Manifest // as its manifest says, even when its files do not match; nil when unreadable
	err error            // the check's verdict; nil = every file matches
}

// parseEngines reads hiveScript's engine lines and checks each bundle.
func parseEngines(out []byte) []engineFinding {
	type listing struct {
		dir      string
		manifest strings.Builder
		entries  []bundle.Entry
	}
	var ls []*listing
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		if k == "engine" {
			ls = append(ls, &listing{dir: v})
			continue
		}
		if len(ls) == 0 {
			continue
		}
		l := ls[len(ls)-1]
		switch k {
		case "engine_manifest":
			l.manifest.WriteString(v + "\n")
		case "engine_entry":
			if e, ok := parseEntry(v); ok {
				l.entries = append(l.entries, e)
			}
		}
	}
	var out2 []engineFinding
	for _, l := range ls {
		data := []byte(l.manifest.String())
		f := engineFinding{dir: l.dir}
		_, f.err = bundle.Check(l.dir, data, l.entries)
		var m bundle.Manifest
		if json.Unmarshal(data, &m) == nil {
			f.m = &m
		}
		out2 = append(out2, f)
	}
	return out2
}

// parseEntry reads "MODE-HEX SIZE SHA256|- NAME\tLINK".
func parseEntry(v string) (bundle.Entry, bool) {
	head, link, _ := strings.Cut(v, "\t")
	parts := strings.SplitN(head, " ", 4)
	if len(parts) != 4 {
		return bundle.Entry{}, false
	}
	raw, err1 := strconv.ParseUint(parts[0], 16, 32)
	size, err2 := strconv.ParseInt(parts[1], 10, 64)
	if err1 != nil || err2 != nil {
		return bundle.Entry{}, false
	}
	e := bundle.Entry{Name: parts[3], Mode: unixMode(uint32(raw)), Size: size, Link: link}
	if parts[2] != "-" {
		e.SHA256 = parts[2]
	}
	return e, true
}

// unixMode turns a raw st_mode (stat %f) into an fs.FileMode.
func unixMode(raw uint32) fs.FileMode {
	m := fs.FileMode(raw & 0o777)
	switch raw & 0o170000 {
	case 0o100000: // regular
	case 0o120000:
		m |= fs.ModeSymlink
	case 0o040000:
		m |= fs.ModeDir
	default:
		m |= fs.ModeIrregular
	}
	return m
}

// localEngines checks the bundles under home/engines on this machine, and
// extra (the one the queen gives the local hive, RBEE_ENGINE).
func localEngines(home, extra string) []engineFinding {
	dirs, _ := filepath.Glob(filepath.Join(home, "engines", "*", bundle.ManifestName))
	for i := range dirs {
		dirs[i] = filepath.Dir(dirs[i])
	}
	if extra != "" {
		dirs = append(dirs, extra)
	}
	var out []engineFinding
	for _, d := range dirs {
		f := engineFinding{dir: d}
		_, f.err = bundle.Validate(d)
		f.m, _ = bundle.Load(d)
		out = append(out, f)
	}
	return out
}

// evalEngines reports the engine bundles: a damaged one fails, with the
// command that puts a good copy in place.
func evalEngines(rep *Report, hive string, found []engineFinding) {
	var good, bad []string
	hint := ""
	for _, f := range found {
		fact := EngineFact{Dir: f.dir}
		if f.m != nil {
			fact.Variant, fact.Backends = bundle.Variant(f.m), f.m.Backends
		}
		if f.err != nil {
			fact.Problem = f.err.Error()
			bad = append(bad, fact.Problem)
			if hint == "" {
				hint = bundle.ReinstallHint(hive, f.m)
			}
		} else {
			good = append(good, fmt.Sprintf("%s (%s)", fact.Variant, strings.Join(fact.Backends, ", ")))
		}
		rep.Facts.Engines = append(rep.Facts.Engines, fact)
	}
	switch {
	case len(found) == 0:
		rep.add(checkEngines, OK, "", "no engine bundle installed yet")
	case len(bad) > 0:
		detail := strings.Join(bad, "; ")
		if len(good) > 0 {
			detail += "; intact: " + strings.Join(good, ", ")
		}
		rep.add(checkEngines, Fail, hint, "%s", detail)
	default:
		rep.add(checkEngines, OK, "", "%s: every file matches its manifest", strings.Join(good, ", "))
	}
}

// agentState is what is known of a hive's agent: the pid of one that
// runs (0: none), and the tail of its log.
type agentState struct {
	pid     int
	log     []string
	logRead bool
}

// localAgent reads the local hive's agent from home.
func localAgent(home string) agentState {
	h := rbee.Home(home)
	var st agentState
	if b, err := os.ReadFile(h.PIDFile("hive")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(comm)) == "rbee-hive" {
				st.pid = pid
			}
		}
	}
	if b, err := proc.Tail(h.Log("hive-localhost"), 100); err == nil {
		st.logRead = true
		st.log = strings.Split(strings.TrimSpace(string(b)), "\n")
	}
	return st
}

// evalAgent reports the agent: one that runs is ok (with the last warning
// of its log, if any); one whose last start failed fails with its own
// reason, the "rbee-hive: …" line it printed as it exited.
func evalAgent(rep *Report, hive string, st agentState) {
	fatal, fatalAt, upAt, warn := "", -1, -1, ""
	for i, line := range st.log {
		switch {
		case strings.HasPrefix(line, "rbee-hive: "):
			fatal, fatalAt = line, i
		case strings.Contains(line, `msg="hive agent up"`):
			upAt = i
		case strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR"):
			warn = line
		}
	}
	rep.Facts.AgentPID = st.pid
	switch {
	case st.pid > 0:
		rep.Facts.AgentError = warn
		if warn != "" {
			rep.add(checkAgent, OK, "", "rbee-hive runs (pid %d); the last warning in its log: %s", st.pid, warn)
		} else {
			rep.add(checkAgent, OK, "", "rbee-hive runs (pid %d)", st.pid)
		}
	case fatalAt > upAt:
		rep.Facts.AgentError = fatal
		rep.add(checkAgent, Fail, "fix what it says; the next rbee command on hive "+hive+" starts the agent again",
			"rbee-hive is not running: its last start failed: %s", fatal)
	case !st.logRead:
		rep.add(checkAgent, OK, "", "no agent has run here yet")
	default:
		rep.Facts.AgentError = warn
		rep.add(checkAgent, OK, "", "rbee-hive is not running (rbee starts it on the next job); it stopped without an error")
	}
}
