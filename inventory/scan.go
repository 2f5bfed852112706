package inventory

import (
	"strconv"
	"strings"
)

// BurntSushi/toml keeps no public positions for keys, and for arrays of
// tables it could not tell the hives apart anyway, so the file is scanned
// once more here for where each table and key sits. The scan runs only on
// text the TOML parser has accepted, which lets it stay small.

type lineKind uint8

const (
	lineBlank   lineKind = iota
	lineComment          // a line holding only a comment
	lineContent          // a key, a header, or part of a value spanning lines
)

// block is one table of the file: where its header is and where each of its
// keys is, by the key's first segment. Lines are 1-based; 0 means absent.
type block struct {
	header int
	keys   map[string]int
}

func (b *block) key(k string, line int) {
	if b.keys == nil {
		b.keys = map[string]int{}
	}
	if _, ok := b.keys[k]; !ok {
		b.keys[k] = line
	}
}

// line is where key k is, else the table's header.
func (b *block) line(k string) int {
	if n, ok := b.keys[k]; ok {
		return n
	}
	return b.header
}

type layout struct {
	kinds   []lineKind // one per line of the text split on "\n"
	headers []int      // every table header, in order
	top     block
	queen   block
	hives   []block // one per [[hive]] header, in order
}

// hive is the layout of the i-th hive. Hives written as an inline array
// (hive = [{...}]) have no blocks of their own and point at the hive key.
func (l *layout) hive(i int) *block {
	if i < len(l.hives) {
		return &l.hives[i]
	}
	return &block{header: l.top.line("hive")}
}

func scan(text string) *layout {
	lines := strings.Split(text, "\n")
	l := &layout{kinds: make([]lineKind, len(lines))}
	var (
		st      valueState
		cur     = &l.top
		discard block
	)
	for i, raw := range lines {
		n := i + 1
		s := strings.TrimSuffix(raw, "\r")
		if st.multiline != "" || st.depth > 0 {
			l.kinds[i] = lineContent
			st.feed(s)
			continue
		}
		t := strings.TrimLeft(s, " \t")
		switch {
		case t == "":
			l.kinds[i] = lineBlank
			continue
		case t[0] == '#':
			l.kinds[i] = lineComment
			continue
		}
		l.kinds[i] = lineContent
		if t[0] == '[' {
			l.headers = append(l.headers, n)
			array := strings.HasPrefix(t, "[[")
			path, _ := parseKey(strings.TrimLeft(t, "["))
			if len(path) == 0 {
				cur = &discard
				continue
			}
			switch {
			case array && len(path) == 1 && path[0] == "hive":
				l.hives = append(l.hives, block{header: n})
				cur = &l.hives[len(l.hives)-1]
			case !array && len(path) == 1 && path[0] == "queen":
				l.queen.header = n
				cur = &l.queen
			default:
				// A table below a hive or the queen, or one rbee does not
				// know: errors about it point at this header.
				switch {
				case path[0] == "hive" && len(l.hives) > 0 && len(path) > 1:
					l.hives[len(l.hives)-1].key(path[1], n)
				case path[0] == "queen" && len(path) > 1:
					l.queen.key(path[1], n)
				default:
					l.top.key(path[0], n)
				}
				discard = block{}
				cur = &discard
			}
			continue
		}
		path, rest := parseKey(t)
		if len(path) > 0 {
			cur.key(path[0], n)
		}
		rest = strings.TrimLeft(rest, " \t")
		st.feed(strings.TrimPrefix(rest, "="))
	}
	return l
}

// valueState follows a value across lines: an open multi-line string or
// open brackets mean the next line continues it.
type valueState struct {
	multiline string // `"""` or `'''` while inside one
	depth     int    // open [ and {
}

func (st *valueState) feed(s string) {
	for i := 0; i < len(s); {
		if st.multiline != "" {
			if st.multiline == `"""` && s[i] == '\\' {
				i += 2
				continue
			}
			if strings.HasPrefix(s[i:], st.multiline) {
				q := s[i]
				i += 3
				// Up to two quotes may close the content right before the
				// delimiter: """a""""" is a"".
				for k := 0; k < 2 && i < len(s) && s[i] == q; k++ {
					i++
				}
				st.multiline = ""
				continue
			}
			i++
			continue
		}
		switch c := s[i]; c {
		case '#':
			return
		case '"', '\'':
			if strings.HasPrefix(s[i:], strings.Repeat(string(c), 3)) {
				st.multiline = s[i : i+3]
				i += 3
				continue
			}
			i++
			for i < len(s) && s[i] != c {
				if c == '"' && s[i] == '\\' {
					i++
				}
				i++
			}
			i++
		case '[', '{':
			st.depth++
			i++
		case ']', '}':
			st.depth--
			i++
		default:
			i++
		}
	}
}

// parseKey reads a dotted key (bare, "basic" or 'literal' segments) from
// the start of s and returns its segments and what follows it.
func parseKey(s string) (path []string, rest string) {
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			return path, s
		}
		var seg string
		switch s[0] {
		case '"':
			end := 1
			for end < len(s) && s[end] != '"' {
				if s[end] == '\\' {
					end++
				}
				end++
			}
			if end >= len(s) {
				return path, ""
			}
			seg = s[1:end]
			if u, err := strconv.Unquote(s[:end+1]); err == nil {
				seg = u
			}
			s = s[end+1:]
		case '\'':
			end := strings.IndexByte(s[1:], '\'')
			if end < 0 {
				return path, ""
			}
			seg = s[1 : end+1]
			s = s[end+2:]
		default:
			end := 0
			for end < len(s) && isBareKeyChar(s[end]) {
				end++
			}
			if end == 0 {
				return path, s
			}
			seg, s = s[:end], s[end:]
		}
		path = append(path, seg)
		s = strings.TrimLeft(s, " \t")
		if !strings.HasPrefix(s, ".") {
			return path, s
		}
		s = s[1:]
	}
}

func isBareKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}
