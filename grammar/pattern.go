package grammar

import (
	"fmt"
	"regexp/syntax"
	"strings"
	"unicode"
	"unicode/utf8"
)

// patternFormats are string formats written as patterns: each matches a
// subset of the format's strings that every validator accepts (ASCII
// hostnames, http(s) URIs without escapes or queries, dot-atom e-mail
// addresses).
var patternFormats = map[string]string{
	"email":    `^[A-Za-z0-9_+-]{1,20}(\.[A-Za-z0-9_+-]{1,20}){0,2}@` + hostLabels + `$`,
	"hostname": `^` + hostLabels + `$`,
	"ipv4":     `^` + octet + `(\.` + octet + `){3}$`,
	"uri":      `^https?://` + hostLabels + `(/[A-Za-z0-9._~-]{1,20}){0,8}$`,
	"url":      `^https?://` + hostLabels + `(/[A-Za-z0-9._~-]{1,20}){0,8}$`,
}

const (
	hostLabel = `[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?`
	// hostLabels end in a top-level domain of letters, as validators of
	// e-mail addresses want it.
	hostLabels = hostLabel + `(\.` + hostLabel + `){0,2}\.[a-z]{2,10}`
	octet      = `(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])`
)

// pattern adds the rules of a JSON string whose content matches the
// regular expression re (ECMA-262 as JSON Schema's pattern, in the part
// RE2 shares with it) and returns the rule. The match is a search, as
// JSON Schema's: without ^ and $ any text may come before and after.
// The grammar writes a subset of the matching strings: "." and negated
// classes give printable ASCII, and no class gives control characters,
// so every answer still matches.
func (c *converter) pattern(re, name, path string) (string, error) {
	tree, err := syntax.Parse(re, syntax.Perl)
	if err != nil {
		return "", &SchemaError{Path: path, Keyword: "pattern", Reason: fmt.Sprintf("%q does not parse: %v", re, err)}
	}
	subs := []*syntax.Regexp{tree}
	if tree.Op == syntax.OpConcat {
		subs = tree.Sub
	}
	start, end := false, false
	if len(subs) > 0 && (subs[0].Op == syntax.OpBeginText || subs[0].Op == syntax.OpBeginLine) {
		start, subs = true, subs[1:]
	}
	if n := len(subs); n > 0 && (subs[n-1].Op == syntax.OpEndText || subs[n-1].Op == syntax.OpEndLine) {
		end, subs = true, subs[:n-1]
	}
	pc := patternConv{b: c.b, path: path}
	var parts []string
	if !start {
		parts = append(parts, c.b.primitive("char")+"*")
	}
	for _, s := range subs {
		g, err := pc.conv(s)
		if err != nil {
			return "", err
		}
		if g != "" {
			parts = append(parts, g)
		}
	}
	if !end {
		parts = append(parts, c.b.primitive("char")+"*")
	}
	c.b.primitive("space")
	return c.b.add(ruleName(name), `"\"" `+strings.Join(parts, " ")+` "\"" space`), nil
}

// patternConv writes a parsed regular expression as a GBNF expression of
// JSON string content.
type patternConv struct {
	b    *builder
	path string
}

func (pc *patternConv) refuse(format string, args ...any) error {
	return &SchemaError{Path: pc.path, Keyword: "pattern", Reason: fmt.Sprintf(format, args...)}
}

// conv returns the expression for re; "" matches the empty string.
func (pc *patternConv) conv(re *syntax.Regexp) (string, error) {
	switch re.Op {
	case syntax.OpEmptyMatch:
		return "", nil
	case syntax.OpLiteral:
		var parts []string
		for _, r := range re.Rune {
			if re.Flags&syntax.FoldCase != 0 {
				if f := foldClass(r); f != "" {
					parts = append(parts, f)
					continue
				}
			}
			parts = append(parts, literal(jsonChar(r)))
		}
		return strings.Join(parts, " "), nil
	case syntax.OpCharClass:
		return pc.class(re.Rune)
	case syntax.OpAnyCharNotNL, syntax.OpAnyChar:
		return pc.class([]rune{0, unicode.MaxRune})
	case syntax.OpCapture:
		return pc.conv(re.Sub[0])
	case syntax.OpConcat:
		var parts []string
		for _, s := range re.Sub {
			g, err := pc.conv(s)
			if err != nil {
				return "", err
			}
			if g != "" {
				parts = append(parts, g)
			}
		}
		if len(parts) == 0 {
			return "", nil
		}
		return "( " + strings.Join(parts, " ") + " )", nil
	case syntax.OpAlternate:
		var alts []string
		empty := false
		for _, s := range re.Sub {
			g, err := pc.conv(s)
			if err != nil {
				return "", err
			}
			if g == "" {
				empty = true
				continue
			}
			alts = append(alts, g)
		}
		if len(alts) == 0 {
			return "", nil
		}
		out := "( " + strings.Join(alts, " | ") + " )"
		if empty {
			out += "?"
		}
		return out, nil
	case syntax.OpStar, syntax.OpPlus, syntax.OpQuest:
		if re.Op != syntax.OpQuest && canEmpty(re.Sub[0]) {
			return "", pc.refuse("repeats without bound a part that can match nothing (%s), which llama.cpp's grammar cannot take: write the part so that it matches at least one character", re.Sub[0])
		}
		g, err := pc.conv(re.Sub[0])
		if err != nil || g == "" {
			return "", err
		}
		return "( " + g + " )" + map[syntax.Op]string{syntax.OpStar: "*", syntax.OpPlus: "+", syntax.OpQuest: "?"}[re.Op], nil
	case syntax.OpRepeat:
		g, err := pc.conv(re.Sub[0])
		if err != nil || g == "" {
			return "", err
		}
		if re.Min > maxRepeat || re.Max > maxRepeat {
			return "", pc.refuse("repeats more than %d times, the most supported", maxRepeat)
		}
		if re.Max < 0 && canEmpty(re.Sub[0]) {
			return "", pc.refuse("repeats without bound a part that can match nothing (%s), which llama.cpp's grammar cannot take: write the part so that it matches at least one character", re.Sub[0])
		}
		return repeat(g, re.Min, re.Max, ""), nil
	case syntax.OpBeginLine, syntax.OpBeginText, syntax.OpEndLine, syntax.OpEndText:
		return "", pc.refuse("has ^ or $ inside it: only a leading ^ and a trailing $ are supported")
	case syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		return "", pc.refuse(`has \b or \B, which is not supported`)
	}
	return "", pc.refuse("uses %v, which is not supported", re.Op)
}

// canEmpty reports whether re matches the empty string.
func canEmpty(re *syntax.Regexp) bool {
	switch re.Op {
	case syntax.OpEmptyMatch, syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText, syntax.OpEndText,
		syntax.OpWordBoundary, syntax.OpNoWordBoundary, syntax.OpStar, syntax.OpQuest:
		return true
	case syntax.OpLiteral:
		return len(re.Rune) == 0
	case syntax.OpCapture, syntax.OpPlus:
		return canEmpty(re.Sub[0])
	case syntax.OpRepeat:
		return re.Min == 0 || canEmpty(re.Sub[0])
	case syntax.OpConcat:
		for _, s := range re.Sub {
			if !canEmpty(s) {
				return false
			}
		}
		return true
	case syntax.OpAlternate:
		for _, s := range re.Sub {
			if canEmpty(s) {
				return true
			}
		}
	}
	return false
}

// class writes a character class (pairs of inclusive rune ranges) as JSON
// string content: printable characters as they are, '"' and '\' escaped;
// control characters are left out, and so is everything above ASCII in a
// class that reaches the last code point ("." or a negated class): the
// model writes ASCII there.
func (pc *patternConv) class(ranges []rune) (string, error) {
	negated := len(ranges) > 0 && ranges[len(ranges)-1] == unicode.MaxRune
	var sb strings.Builder
	quote, backslash := false, false
	for i := 0; i+1 < len(ranges); i += 2 {
		lo, hi := ranges[i], ranges[i+1]
		if negated {
			hi = min(hi, 0x7E)
		}
		if lo > hi {
			continue
		}
		for _, cut := range [][2]rune{{'"', '"'}, {'\\', '\\'}} {
			if lo <= cut[0] && cut[0] <= hi {
				if cut[0] == '"' {
					quote = true
				} else {
					backslash = true
				}
			}
		}
		for _, part := range splitRange(lo, hi) {
			sb.WriteString(classChar(part[0]))
			if part[1] != part[0] {
				sb.WriteString("-" + classChar(part[1]))
			}
		}
	}
	var alts []string
	if sb.Len() > 0 {
		alts = append(alts, "["+sb.String()+"]")
	}
	if quote {
		alts = append(alts, literal(`\"`))
	}
	if backslash {
		alts = append(alts, literal(`\\`))
	}
	switch len(alts) {
	case 0:
		return "", pc.refuse("has a class of control characters only, which a JSON string holds only as escapes: not supported")
	case 1:
		return alts[0], nil
	}
	return "( " + strings.Join(alts, " | ") + " )", nil
}

// splitRange returns [lo, hi] without the characters a class never
// writes: control characters, DEL, '"', '\' and surrogates.
func splitRange(lo, hi rune) [][2]rune {
	out := [][2]rune{{lo, hi}}
	for _, cut := range [][2]rune{{0, 0x1F}, {0x7F, 0x9F}, {'"', '"'}, {'\\', '\\'}, {0xD800, 0xDFFF}} {
		var next [][2]rune
		for _, r := range out {
			if r[1] < cut[0] || r[0] > cut[1] {
				next = append(next, r)
				continue
			}
			if r[0] < cut[0] {
				next = append(next, [2]rune{r[0], cut[0] - 1})
			}
			if r[1] > cut[1] {
				next = append(next, [2]rune{cut[1] + 1, r[1]})
			}
		}
		out = next
	}
	return out
}

// classChar writes r inside a GBNF class: letters and digits as they are,
// other ASCII as \xHH (llama.cpp escapes nothing else there), the rest
// as UTF-8.
func classChar(r rune) string {
	switch {
	case r < 0x80 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'):
		return string(r)
	case r < 0x80:
		return fmt.Sprintf(`\x%02X`, r)
	}
	return string(r)
}

// jsonChar is r as it appears in a JSON string.
func jsonChar(r rune) string {
	switch r {
	case '"':
		return `\"`
	case '\\':
		return `\\`
	case '\n':
		return `\n`
	case '\r':
		return `\r`
	case '\t':
		return `\t`
	}
	if r < 0x20 || r == 0x7F || !utf8.ValidRune(r) {
		return fmt.Sprintf(`\u%04x`, r)
	}
	return string(r)
}

// foldClass is the class of r and its other cases, "" when it has none.
func foldClass(r rune) string {
	var sb strings.Builder
	n := 0
	for f := r; ; {
		sb.WriteString(classChar(f))
		n++
		if f = unicode.SimpleFold(f); f == r {
			break
		}
	}
	if n == 1 {
		return ""
	}
	return "[" + sb.String() + "]"
}
