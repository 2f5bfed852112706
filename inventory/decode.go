package inventory

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// The file is decoded into plain maps and checked key by key, rather than
// straight into the structs, so that every problem in it is reported at
// once and each with the line it is on.

var (
	nameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	deviceRE = regexp.MustCompile(`^(cpu|gpu(0|[1-9][0-9]{0,3}))$`)
)

var (
	topKeys   = []string{"queen", "hive"}
	queenKeys = []string{"addr", "keep_alive"}
	hiveKeys  = []string{"name", "host", "user", "port", "identity", "known_hosts", "devices", "keep_alive", "disabled"}
)

// parse decodes and checks text read from file. A problem inside a [[hive]]
// entry leaves that entry out of Hives and puts it in Bad; any other
// problem (TOML syntax, the top level, the [queen] table) fails the parse,
// and the error then lists every problem of the file. inv.problems holds
// every problem either way, for the strict Load.
func parse(file, text string) (*Inventory, error) {
	raw := map[string]any{}
	if _, err := toml.Decode(text, &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &ConfigError{File: file, Line: pe.Position.Line, Field: pe.LastKey, Msg: pe.Message}
		}
		return nil, &ConfigError{File: file, Msg: err.Error()}
	}
	l := scan(text)
	d := &decoder{file: file}
	inv := &Inventory{Path: file}
	var entries []Hive // every [[hive]] entry, good or bad, in file order

	for _, k := range sortedKeys(raw) {
		if !slices.Contains(topKeys, k) {
			d.unknown("", k, l.top.line(k), topKeys)
		}
	}
	if v, ok := raw["queen"]; ok {
		line := l.queen.header
		if line == 0 {
			line = l.top.line("queen")
		}
		if m, ok := v.(map[string]any); ok {
			inv.Queen = d.queen(m, &l.queen)
		} else {
			d.errorf(line, "", "queen", "want a table ([queen]), got %s", describe(v))
		}
	}
	if v, ok := raw["hive"]; ok {
		tables, ok := hiveTables(v)
		if !ok {
			d.errorf(l.top.line("hive"), "", "hive", "want hive tables ([[hive]]), got %s", describe(v))
		}
		seen := map[string]int{} // name -> line of its first hive
		for i, m := range tables {
			b := l.hive(i)
			d.entry = i + 1
			h, ok := d.hive(i, m, b)
			if ok {
				if first, dup := seen[h.Name]; dup {
					d.errorf(b.line("name"), hiveLabel(i, h.Name), "name", "duplicate; a hive by that name is already defined at line %d", first)
				} else {
					seen[h.Name] = b.line("name")
				}
			}
			d.entry = 0
			entries = append(entries, h)
		}
	}
	inv.problems = d.err()
	perEntry := map[int][]error{}
	for _, e := range d.errs { // sorted by line
		if e.entry == 0 {
			return nil, inv.problems
		}
		perEntry[e.entry-1] = append(perEntry[e.entry-1], e)
	}
	for i, h := range entries {
		if errs := perEntry[i]; len(errs) > 0 {
			inv.Bad = append(inv.Bad, BadHive{Hive: h, Label: hiveLabel(i, h.Name), Line: l.hive(i).header, Err: errors.Join(errs...), index: i})
			continue
		}
		inv.Hives = append(inv.Hives, h)
	}
	return inv, nil
}

// hiveTables accepts [[hive]] tables and the inline form hive = [{...}].
func hiveTables(v any) ([]map[string]any, bool) {
	switch v := v.(type) {
	case []map[string]any:
		return v, true
	case []any:
		out := make([]map[string]any, 0, len(v))
		for _, e := range v {
			m, ok := e.(map[string]any)
			if !ok {
				return nil, false
			}
			out = append(out, m)
		}
		return out, true
	}
	return nil, false
}

type decoder struct {
	file  string
	errs  []*ConfigError
	entry int // 1 + the index of the [[hive]] entry being decoded; 0 outside one
}

func (d *decoder) errorf(line int, table, field, format string, args ...any) {
	d.errs = append(d.errs, &ConfigError{File: d.file, Line: line, Table: table, Field: field, Msg: fmt.Sprintf(format, args...), entry: d.entry})
}

func (d *decoder) err() error {
	if len(d.errs) == 0 {
		return nil
	}
	slices.SortStableFunc(d.errs, func(a, b *ConfigError) int { return cmp.Compare(a.Line, b.Line) })
	errs := make([]error, len(d.errs))
	for i, e := range d.errs {
		errs[i] = e
	}
	return errors.Join(errs...)
}

func (d *decoder) unknown(table, key string, line int, known []string) {
	msg := "unknown key"
	if s := suggest(key, known); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	}
	d.errorf(line, table, key, "%s", msg)
}

func (d *decoder) queen(m map[string]any, b *block) Queen {
	var q Queen
	for _, k := range sortedKeys(m) {
		line := b.line(k)
		switch k {
		case "addr":
			if s, ok := d.str(m, k, line, "queen"); ok {
				if msg := checkAddr(s); msg != "" {
					d.errorf(line, "queen", k, "%s", msg)
				}
				q.Addr = s
			}
		case "keep_alive":
			q.KeepAlive, _ = d.duration(m, k, line, "queen")
		default:
			d.unknown("queen", k, line, queenKeys)
		}
	}
	return q
}

// hive decodes the i-th hive; ok reports whether it has a valid name, which
// the duplicate check needs.
func (d *decoder) hive(i int, m map[string]any, b *block) (h Hive, ok bool) {
	if v, isStr := m["name"].(string); isStr {
		h.Name = v
	}
	table := hiveLabel(i, h.Name)
	for _, k := range sortedKeys(m) {
		line := b.line(k)
		switch k {
		case "name":
			if s, isStr := d.str(m, k, line, table); isStr {
				if msg := checkName(s); msg != "" {
					d.errorf(line, table, k, "%s", msg)
				} else {
					ok = true
				}
			}
		case "host":
			if s, isStr := d.str(m, k, line, table); isStr {
				if msg := checkHost(s); msg != "" {
					d.errorf(line, table, k, "%s", msg)
				}
				h.Host = s
			}
		case "user":
			if s, isStr := d.str(m, k, line, table); isStr {
				if msg := checkUser(s); msg != "" {
					d.errorf(line, table, k, "%s", msg)
				}
				h.User = s
			}
		case "port":
			n, isInt := m[k].(int64)
			if !isInt {
				d.errorf(line, table, k, "want an integer, got %s", describe(m[k]))
				break
			}
			if msg := checkPort(n); msg != "" {
				d.errorf(line, table, k, "%s", msg)
				break
			}
			h.Port = int(n)
		case "identity":
			h.Identity, _ = d.str(m, k, line, table)
		case "known_hosts":
			h.KnownHosts, _ = d.str(m, k, line, table)
		case "devices":
			h.Devices = d.devices(m[k], line, table)
		case "keep_alive":
			h.KeepAlive, _ = d.duration(m, k, line, table)
		case "disabled":
			v, isBool := m[k].(bool)
			if !isBool {
				d.errorf(line, table, k, "want true or false, got %s", describe(m[k]))
			}
			h.Disabled = v
		default:
			d.unknown(table, k, line, hiveKeys)
		}
	}
	if _, has := m["name"]; !has {
		d.errorf(b.header, table, "name", "missing; every hive needs a name (lowercase letters, digits and dashes)")
	}
	if _, has := m["host"]; !has {
		d.errorf(b.header, table, "host", "missing; set it to a hostname, an IP address or a ~/.ssh/config alias")
	}
	return h, ok
}

func (d *decoder) str(m map[string]any, k string, line int, table string) (string, bool) {
	s, ok := m[k].(string)
	if !ok {
		d.errorf(line, table, k, "want a string, got %s", describe(m[k]))
	}
	return s, ok
}

func (d *decoder) duration(m map[string]any, k string, line int, table string) (string, bool) {
	s, ok := d.str(m, k, line, table)
	if !ok {
		return "", false
	}
	if msg := checkDuration(s); msg != "" {
		d.errorf(line, table, k, "%s", msg)
		return s, false
	}
	return s, true
}

func (d *decoder) devices(v any, line int, table string) []string {
	list, ok := v.([]any)
	if !ok {
		d.errorf(line, table, "devices", "want a list of device names such as [\"gpu0\", \"cpu\"], got %s", describe(v))
		return nil
	}
	out := make([]string, 0, len(list))
	for _, e := range list {
		s, ok := e.(string)
		if !ok {
			d.errorf(line, table, "devices", "want device names as strings, got %s", describe(e))
			continue
		}
		out = append(out, s)
	}
	if msg := checkDevices(out); msg != "" {
		d.errorf(line, table, "devices", "%s", msg)
	}
	return out
}

// hiveLabel names a hive in messages: by its name when it has a usable one,
// else by its place in the file.
func hiveLabel(i int, name string) string {
	if name != "" && len(name) <= 80 {
		return fmt.Sprintf("hive %q", name)
	}
	return fmt.Sprintf("hive #%d", i+1)
}

// validate checks a hive given to Add the same way Load checks the file.
func validate(h Hive) error {
	d := &decoder{}
	table := hiveLabel(0, h.Name)
	if msg := checkName(h.Name); msg != "" {
		d.errorf(0, table, "name", "%s", msg)
	}
	if msg := checkHost(h.Host); msg != "" {
		d.errorf(0, table, "host", "%s", msg)
	}
	if msg := checkUser(h.User); h.User != "" && msg != "" {
		d.errorf(0, table, "user", "%s", msg)
	}
	if msg := checkPort(int64(h.Port)); h.Port != 0 && msg != "" {
		d.errorf(0, table, "port", "%s", msg)
	}
	if msg := checkDevices(h.Devices); msg != "" {
		d.errorf(0, table, "devices", "%s", msg)
	}
	if msg := checkDuration(h.KeepAlive); h.KeepAlive != "" && msg != "" {
		d.errorf(0, table, "keep_alive", "%s", msg)
	}
	return d.err()
}

// Shell metacharacters and spaces get their own message: a name or host
// carrying them is refused here, long before any remote command.
const shellMeta = " \t\n\r$`;&|<>()'\"\\*?[]{}!#~^=,"

func metaChar(s string) (rune, bool) {
	if i := strings.IndexAny(s, shellMeta); i >= 0 {
		return rune(s[i]), true
	}
	return 0, false
}

func checkName(s string) string {
	switch {
	case s == "":
		return "missing; every hive needs a name (lowercase letters, digits and dashes)"
	case s == "localhost":
		return `"localhost" is this machine's own hive; give the SSH host another name`
	case nameRE.MatchString(s):
		return ""
	}
	if r, ok := metaChar(s); ok {
		return fmt.Sprintf("%q contains %q; shell metacharacters and spaces are not allowed (use lowercase letters, digits and dashes)", s, r)
	}
	return fmt.Sprintf("%q is not a valid name: use 1-63 lowercase letters, digits and dashes, starting with a letter or digit", s)
}

func checkHost(s string) string {
	if s == "" {
		return "missing; set it to a hostname, an IP address or a ~/.ssh/config alias"
	}
	if i := strings.IndexByte(s, '@'); i >= 0 {
		return fmt.Sprintf("%q contains '@'; put the user in user = %q and the host alone in host", s, s[:i])
	}
	bare := s
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		bare = s[1 : len(s)-1] // [::1]
	}
	if r, ok := metaChar(bare); ok {
		return fmt.Sprintf("%q contains %q; shell metacharacters and spaces are not allowed in a host", s, r)
	}
	if strings.HasPrefix(bare, "-") {
		return fmt.Sprintf("%q starts with '-', which ssh would read as an option", s)
	}
	for _, r := range bare {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(".-_:%", r)) {
			return fmt.Sprintf("%q contains %q; use a hostname, an IP address or a ~/.ssh/config alias", s, r)
		}
	}
	if h, p, ok := strings.Cut(bare, ":"); ok && !strings.Contains(p, ":") {
		if _, err := strconv.Atoi(p); err == nil {
			return fmt.Sprintf("%q looks like host:port; put the port in port = %s and set host = %q", s, p, h)
		}
	}
	if len(s) > 253 {
		return fmt.Sprintf("%d characters is too long for a host (at most 253)", len(s))
	}
	return ""
}

func checkUser(s string) string {
	if s == "" {
		return "empty; leave user out to take it from ~/.ssh/config or the local user"
	}
	if r, ok := metaChar(s); ok {
		return fmt.Sprintf("%q contains %q; shell metacharacters and spaces are not allowed in a user name", s, r)
	}
	if strings.HasPrefix(s, "-") {
		return fmt.Sprintf("%q starts with '-', which ssh would read as an option", s)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-", r)) {
			return fmt.Sprintf("%q contains %q; use letters, digits, '.', '_' and '-'", s, r)
		}
	}
	return ""
}

func checkAddr(s string) string {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Sprintf("%q is not host:port (for example \"127.0.0.1:7833\")", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Sprintf("%q: port %q is not a number in 1-65535", s, port)
	}
	return ""
}

func checkPort(n int64) string {
	if n < 1 || n > 65535 {
		return fmt.Sprintf("%d is out of range (1-65535)", n)
	}
	return ""
}

func checkDuration(s string) string {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Sprintf("%q is not a duration (write it like \"90s\", \"10m\" or \"1h30m\")", s)
	}
	if d < 0 {
		return fmt.Sprintf("%q is negative", s)
	}
	return ""
}

func checkDevices(devs []string) string {
	seen := map[string]bool{}
	for _, s := range devs {
		if !deviceRE.MatchString(s) {
			return fmt.Sprintf("%q is not a device; use \"cpu\" or \"gpuN\" (gpu0, gpu1, ...)", s)
		}
		if seen[s] {
			return fmt.Sprintf("%q is listed twice", s)
		}
		seen[s] = true
	}
	return ""
}

// describe says what a decoded TOML value is, for type errors.
func describe(v any) string {
	switch v := v.(type) {
	case string:
		if len(v) > 40 {
			v = v[:37] + "..."
		}
		return fmt.Sprintf("string %q", v)
	case int64:
		return fmt.Sprintf("integer %d", v)
	case float64:
		return fmt.Sprintf("float %v", v)
	case bool:
		return fmt.Sprintf("boolean %v", v)
	case time.Time:
		return "a date/time"
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("%T", v)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// suggest returns the known key closest to a misspelt one, if any is close.
func suggest(key string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		if d := editDistance(key, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
