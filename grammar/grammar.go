package grammar

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Root is the name of the rule a grammar starts from.
const Root = "root"

// primitive is a rule every grammar may share, with the rules it uses.
type primitive struct {
	body string
	deps []string
}

// space allows what a model trained on pretty-printed JSON writes between
// tokens, bounded so that white space alone cannot run to max_tokens.
const space = `| " " | "\n"{1,2} [ \t]{0,20}`

var primitives = map[string]primitive{
	"space":   {space, nil},
	"value":   {"object | array | string | number | boolean | null", []string{"object", "array", "string", "number", "boolean", "null"}},
	"object":  {`"{" space ( string ":" space value ( "," space string ":" space value )* )? "}" space`, []string{"space", "string", "value"}},
	"array":   {`"[" space ( value ( "," space value )* )? "]" space`, []string{"space", "value"}},
	"string":  {`"\"" char* "\"" space`, []string{"space", "char"}},
	"char":    {`[^"\\\x7F\x00-\x1F] | [\\] ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )`, nil},
	"number":  {`"-"? integral ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )? space`, []string{"space", "integral"}},
	"integer": {`"-"? integral space`, []string{"space", "integral"}},
	// integral bounds an integer to 16 digits, what a float64 holds exactly.
	"integral": {`"0" | [1-9] [0-9]{0,15}`, nil},
	"boolean":  {`( "true" | "false" ) space`, []string{"space"}},
	"null":     {`"null" space`, []string{"space"}},
	"uuid": {`"\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} "\"" space`,
		[]string{"space"}},
	// date is a calendar date: a month's days, 29 February in leap
	// years only (every fourth year, not centuries unless a 400th).
	"date": {`[0-9]{4} "-" ( ( "01" | "03" | "05" | "07" | "08" | "10" | "12" ) "-" day31 | ( "04" | "06" | "09" | "11" ) "-" day30 | "02-" day28 ) | leap-year "-02-29"`,
		[]string{"day31", "day30", "day28", "leap-year"}},
	"day28":            {`"0" [1-9] | "1" [0-9] | "2" [0-8]`, nil},
	"day30":            {`day28 | "29" | "30"`, []string{"day28"}},
	"day31":            {`day30 | "31"`, []string{"day30"}},
	"leap-year":        {`[0-9] [0-9] ( "0" [48] | [2468] [048] | [13579] [26] ) | ( "0" [048] | [2468] [048] | [13579] [26] ) "00"`, nil},
	"time":             {`( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,6} )? ( "Z" | [+-] ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )`, nil},
	"date-time":        {`date "T" time`, []string{"date", "time"}},
	"date-string":      {`"\"" date "\"" space`, []string{"date", "space"}},
	"time-string":      {`"\"" time "\"" space`, []string{"time", "space"}},
	"date-time-string": {`"\"" date-time "\"" space`, []string{"date-time", "space"}},
}

// JSONObject returns the grammar of any JSON object: OpenAI's JSON mode
// (response_format {"type":"json_object"}).
func JSONObject() string {
	b := newBuilder()
	b.rules[Root] = b.primitive("object")
	return b.String()
}

// builder collects the rules of one grammar.
type builder struct {
	rules map[string]string
}

func newBuilder() *builder { return &builder{rules: map[string]string{}} }

var badRuleChars = regexp.MustCompile(`[^a-zA-Z0-9-]+`)

// add adds a rule under name, or a free variant of it when name holds
// another rule, and returns the name used.
func (b *builder) add(name, body string) string {
	name = strings.Trim(badRuleChars.ReplaceAllString(name, "-"), "-")
	if name == "" {
		name = "r"
	}
	if _, reserved := primitives[name]; reserved || name == Root {
		name += "-"
	}
	try := name
	for i := 0; ; i++ {
		old, taken := b.rules[try]
		if !taken || old == body {
			b.rules[try] = body
			return try
		}
		try = name + strconv.Itoa(i)
	}
}

// reserve takes a free name for a rule whose body comes later (a $ref,
// which may refer to itself).
func (b *builder) reserve(name string) string {
	return b.add(name, fmt.Sprintf("# reserved %d", len(b.rules)))
}

// primitive adds a shared rule and those it uses, and returns its name.
func (b *builder) primitive(name string) string {
	p := primitives[name]
	if _, ok := b.rules[name]; ok {
		return name
	}
	b.rules[name] = p.body
	for _, d := range p.deps {
		b.primitive(d)
	}
	return name
}

// String writes the grammar: root first, then the rules by name.
func (b *builder) String() string {
	names := make([]string, 0, len(b.rules))
	for n := range b.rules {
		if n != Root {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s ::= %s\n", Root, b.rules[Root])
	for _, n := range names {
		fmt.Fprintf(&sb, "%s ::= %s\n", n, b.rules[n])
	}
	return sb.String()
}

// literal quotes s as a GBNF string literal.
func literal(s string) string {
	var sb strings.Builder
	sb.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			sb.WriteByte('\\')
			sb.WriteRune(r)
		case r == '\n':
			sb.WriteString(`\n`)
		case r == '\r':
			sb.WriteString(`\r`)
		case r == '\t':
			sb.WriteString(`\t`)
		case r < 0x20 || r == 0x7F:
			fmt.Fprintf(&sb, `\x%02X`, r)
		default:
			sb.WriteRune(r)
		}
	}
	sb.WriteByte('"')
	return sb.String()
}

// repeat writes item between lo and hi times (hi < 0: no bound), with
// sep between the items when sep is not empty.
func repeat(item string, lo, hi int, sep string) string {
	switch {
	case hi == 0:
		return ""
	case lo == 0 && hi == 1:
		return "( " + item + " )?"
	}
	if sep == "" {
		switch {
		case lo == 0 && hi < 0:
			return "( " + item + " )*"
		case lo == 1 && hi < 0:
			return "( " + item + " )+"
		case hi < 0:
			return fmt.Sprintf("( %s ){%d,}", item, lo)
		case lo == hi:
			return fmt.Sprintf("( %s ){%d}", item, lo)
		}
		return fmt.Sprintf("( %s ){%d,%d}", item, lo, hi)
	}
	restMax := hi - 1
	if hi < 0 {
		restMax = -1
	}
	out := item
	if r := repeat(sep+" "+item, max(lo-1, 0), restMax, ""); r != "" {
		out += " " + r
	}
	if lo == 0 {
		return "( " + out + " )?"
	}
	return out
}
