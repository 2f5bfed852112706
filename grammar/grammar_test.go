package grammar

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// toRegexp turns a grammar without recursion into a Go regexp of the
// whole text, so tests can say which documents it allows.
func toRegexp(t *testing.T, g string) *regexp.Regexp {
	t.Helper()
	rules := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(g), "\n") {
		name, body, ok := strings.Cut(line, " ::= ")
		if !ok {
			t.Fatalf("not a rule: %q", line)
		}
		rules[name] = body
	}
	var conv func(name string, depth int) string
	conv = func(name string, depth int) string {
		if depth > 40 {
			t.Fatalf("rule %s recurses", name)
		}
		body, ok := rules[name]
		if !ok {
			t.Fatalf("undefined rule %s", name)
		}
		var out strings.Builder
		for i := 0; i < len(body); {
			c := body[i]
			switch {
			case c == ' ':
				i++
			case c == '"':
				j := i + 1
				var lit strings.Builder
				for body[j] != '"' {
					if body[j] == '\\' {
						j++
						switch body[j] {
						case 'n':
							lit.WriteByte('\n')
						case 't':
							lit.WriteByte('\t')
						case 'r':
							lit.WriteByte('\r')
						default:
							lit.WriteByte(body[j])
						}
					} else {
						lit.WriteByte(body[j])
					}
					j++
				}
				out.WriteString("(?:" + regexp.QuoteMeta(lit.String()) + ")")
				i = j + 1
			case c == '[':
				j := i + 1
				for body[j] != ']' {
					if body[j] == '\\' {
						j++
					}
					j++
				}
				out.WriteString(body[i : j+1])
				i = j + 1
			case c == '(':
				out.WriteString("(?:")
				i++
			case strings.IndexByte(")|?*+", c) >= 0:
				out.WriteByte(c)
				i++
			case c == '{':
				j := strings.IndexByte(body[i:], '}')
				out.WriteString(body[i : i+j+1])
				i += j + 1
			default:
				j := i
				for j < len(body) && (body[j] == '-' || ('a' <= body[j] && body[j] <= 'z') || ('A' <= body[j] && body[j] <= 'Z') || ('0' <= body[j] && body[j] <= '9')) {
					j++
				}
				out.WriteString("(?:" + conv(body[i:j], depth+1) + ")")
				i = j
			}
		}
		return out.String()
	}
	return regexp.MustCompile(`\A(?:` + conv(Root, 0) + `)\z`)
}

func TestIntRange(t *testing.T) {
	t.Parallel()
	for _, r := range [][2]int64{{0, 0}, {0, 9}, {1, 9}, {-40, 1234}, {6, 8}, {-999, -10}, {17, 3021}, {-5, 5}, {100, 100}, {99, 1001}, {-1, 0}} {
		t.Run(fmt.Sprint(r), func(t *testing.T) {
			re := regexp.MustCompile(`\A(?:` + strings.NewReplacer(`"`, "", " ", "", "(", "(?:").Replace(intRange(r[0], r[1])) + `)\z`)
			for n := int64(-5000); n <= 5000; n++ {
				in := r[0] <= n && n <= r[1]
				if got := re.MatchString(fmt.Sprint(n)); got != in {
					t.Fatalf("%d: match %t, want %t (%s)", n, got, in, intRange(r[0], r[1]))
				}
			}
			for _, s := range []string{"-0", "01", "00", "", "-"} {
				if re.MatchString(s) {
					t.Errorf("%q matches", s)
				}
			}
		})
	}
}

// TestSchemaDocuments: each grammar allows the documents that fit its
// schema, and not the others.
func TestSchemaDocuments(t *testing.T) {
	t.Parallel()
	tests := []struct {
		schema   string
		strict   bool
		fit, not []string
	}{
		{`{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"boolean"},"c":{"type":"null"}},"required":["b"]}`, false,
			[]string{`{"b":true}`, `{"a":-12,"b":false}`, `{"b":true,"c":null}`, `{"a":0,"b":true,"c":null}`, "{ \"a\" : 1 ,\n  \"b\": true }"},
			[]string{`{}`, `{"a":1}`, `{"b":true,}`, `{,"b":true}`, `{"b":true,"d":1}`, `{"a":01,"b":true}`, `{"b":true,"a":1}`}},
		{`{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"}}}`, false,
			[]string{`{}`, `{"a":1}`, `{"b":2}`, `{"a":1,"b":2}`},
			[]string{`{,}`, `{"a":1,}`, `{,"b":2}`, `{"a":1"b":2}`}},
		{`{"type":"object"}`, true, []string{`{}`, `{ }`}, []string{`{"a":1}`}},
		{`{"type":"object","additionalProperties":{"type":"integer"}}`, false,
			[]string{`{}`, `{"x":1,"y":2}`}, []string{`{"x":"1"}`}},
		{`{"type":"array","items":{"enum":["a",1,null,{"k":[true]}]},"minItems":1,"maxItems":2}`, false,
			[]string{`["a"]`, `[1,null]`, `[{"k":[true]}]`, `[ "a" , "a" ]`},
			[]string{`[]`, `["a",1,null]`, `["b"]`, `[1,]`}},
		{`{"type":"array","prefixItems":[{"type":"string","maxLength":2},{"const":"x"}]}`, false,
			[]string{`["ab","x"]`, `["","x"]`, `["\n\u00e9","x"]`}, []string{`["abc","x"]`, `["a"]`, `["a","x","x"]`}},
		{`{"type":"string","minLength":2,"maxLength":3}`, false, []string{`"ab"`, `"a\"c"`, `"é€😀"`}, []string{`"a"`, `"abcd"`, `"a` + "\n" + `"`}},
		{`{"type":["number","null"]}`, false, []string{`1`, `-0.5`, `1e10`, `12.5E-3`, `null`}, []string{`.5`, `1.`, `+1`, `"1"`, `01`}},
		{`{"anyOf":[{"type":"integer","minimum":10,"exclusiveMaximum":12},{"const":"no"}]}`, false, []string{`10`, `11`, `"no"`}, []string{`9`, `12`, `"yes"`}},
		{`{"type":"integer","minimum":100}`, false, []string{`100`, `5555555555555555`}, []string{`99`, `-100`, `55555555555555555`}},
		{`{"type":"integer","maximum":-3}`, false, []string{`-3`, `-1000`}, []string{`-2`, `0`, `3`}},
		{`{"type":"string","format":"date"}`, false,
			[]string{`"2024-02-29"`, `"2000-02-29"`, `"2023-12-31"`, `"2023-04-30"`, `"0000-02-29"`},
			[]string{`"2023-02-29"`, `"1900-02-29"`, `"2023-04-31"`, `"2023-13-01"`, `"2023-00-10"`, `"2023-01-00"`, `"2023-02-30"`}},
		{`{"type":"string","format":"date-time"}`, false, []string{`"2024-01-02T03:04:05Z"`, `"2024-01-02T23:59:59.123+05:30"`},
			[]string{`"2024-01-02 03:04:05Z"`, `"2024-01-02T24:00:00Z"`, `"2024-01-02T03:04:05"`}},
		{`{"type":"string","format":"uuid"}`, false, []string{`"123e4567-e89b-12d3-a456-426614174000"`}, []string{`"123e4567e89b12d3a456426614174000"`}},
		{`{"type":"string","pattern":"^[A-Z]{3}-[0-9]{2}$"}`, false, []string{`"ABC-12"`}, []string{`"AB-12"`, `"abc-12"`, `"ABC-123"`, `"xABC-12"`}},
		{`{"type":"string","pattern":"ab"}`, false, []string{`"ab"`, `"xxab yy"`, `"\"ab\\"`}, []string{`"a b"`, `"xy"`}},
		{`{"type":"string","pattern":"^[a\"\\\\]+$"}`, false, []string{`"a"`, `"a\"\\"`, `"\"\""`}, []string{`"b"`, `""`, `"a\n"`}},
		{`{"type":"string","pattern":"(?i)^abc$"}`, false, []string{`"abc"`, `"AbC"`}, []string{`"abd"`}},
		{`{"type":"string","pattern":"^(foo|bar)?baz\\.$"}`, false, []string{`"baz."`, `"foobaz."`, `"barbaz."`}, []string{`"fobaz."`, `"baz"`, `"bazx"`}},
		{`{"type":"string","pattern":"^[^0-9]{2}\\d$"}`, false, []string{`"ab1"`, `"- 9"`}, []string{`"1b1"`, `"abc"`, `"ab"`}},
		{`{"type":"string","pattern":"^é.$"}`, false, []string{`"éa"`}, []string{`"ea"`, `"é"`}},
		{`{"type":"string","format":"email"}`, false, []string{`"a.b@example.com"`, `"x+y_z@mail.example.org"`},
			[]string{`"a@b"`, `"a..b@x.com"`, `"@x.com"`, `"a@-x.com"`, `"a b@x.com"`}},
		{`{"type":"string","format":"email","pattern":"^[a-z]+@x\\.org$"}`, false, []string{`"ab@x.org"`}, []string{`"a.b@example.com"`}},
		{`{"type":"string","format":"email","pattern":"^(?!\\.)[a-z.]+@x\\.org$"}`, false, []string{`"a.b@example.com"`}, []string{`"a@b.c1"`}},
		{`{"type":"string","format":"ipv4"}`, false, []string{`"192.168.0.1"`, `"0.0.0.0"`, `"255.255.255.255"`}, []string{`"256.1.1.1"`, `"01.1.1.1"`, `"1.1.1"`}},
		{`{"type":"string","format":"uri"}`, false, []string{`"https://example.com/a/b"`, `"http://x.org"`}, []string{`"example.com"`, `"ftp://x.org"`}},
		{`{"type":"number","minimum":0,"maximum":1}`, false, []string{`0`, `1`, `0.5`, `0.25`}, []string{`1.5`, `-0.1`, `2`, `1e0`, `-0`}},
		{`{"type":"number","exclusiveMinimum":0,"maximum":100}`, false, []string{`0.5`, `100`, `99.99`, `1`}, []string{`0`, `-1`, `100.5`, `0.0`}},
		{`{"minimum":-90,"maximum":90}`, false, []string{`-90`, `-89.5`, `45.25`, `90`, `0`, `-0.5`}, []string{`-90.5`, `90.1`, `-91`}},
		{`{"type":"number","exclusiveMaximum":-3}`, false, []string{`-4`, `-3.5`, `-1000000.125`}, []string{`-3`, `-2.5`, `0`}},
		{`{"$defs":{"Pet":{"type":"object","properties":{"kind":{"enum":["cat","dog"]}},"required":["kind"]}},"type":"object",
			"properties":{"pet":{"allOf":[{"$ref":"#/$defs/Pet"}],"description":"Pydantic's wrapping"}},"required":["pet"]}`, false,
			[]string{`{"pet":{"kind":"cat"}}`}, []string{`{"pet":{"kind":"cow"}}`, `{"pet":{}}`}},
		{`{"$defs":{"A":{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}},
			"allOf":[{"$ref":"#/$defs/A"},{"type":"object","properties":{"b":{"type":"boolean"},"a":{"type":"integer"}},"required":["b"]}]}`, false,
			[]string{`{"a":1,"b":true}`}, []string{`{"a":1}`, `{"b":true}`, `{"b":true,"a":1}`}},
		{`{"$defs":{"p":{"type":"object","properties":{"x":{"type":"integer","minimum":0,"maximum":3}},"required":["x"]}},
			"type":"object","properties":{"from":{"$ref":"#/$defs/p"},"to":{"$ref":"#/$defs/p"}},"required":["from","to"]}`, false,
			[]string{`{"from":{"x":0},"to":{"x":3}}`}, []string{`{"from":{"x":4},"to":{"x":3}}`}},
	}
	for _, tt := range tests {
		t.Run(tt.schema, func(t *testing.T) {
			t.Parallel()
			g, err := FromSchema([]byte(tt.schema), tt.strict)
			if err != nil {
				t.Fatal(err)
			}
			re := toRegexp(t, g)
			for _, doc := range tt.fit {
				if !re.MatchString(doc) {
					t.Errorf("%s does not match; grammar:\n%s", doc, g)
				}
			}
			for _, doc := range tt.not {
				if re.MatchString(doc) {
					t.Errorf("%s matches; grammar:\n%s", doc, g)
				}
			}
		})
	}
}

// TestSchemaRefused: what the converter cannot honour is a *SchemaError
// naming the keyword and where it is.
func TestSchemaRefused(t *testing.T) {
	t.Parallel()
	tests := []struct {
		schema  string
		strict  bool
		path    string
		keyword string
	}{
		{`{"type":"object","properties":{"a":{"type":"integer","multipleOf":2}}}`, false, "#/properties/a", "multipleOf"},
		{`{"type":"string","pattern":"\\bword\\b"}`, false, "#", "pattern"},
		{`{"type":"string","pattern":"^(?=a)b$"}`, false, "#", "pattern"},
		{`{"type":"string","pattern":"a^b"}`, false, "#", "pattern"},
		{`{"type":"string","pattern":"^(a|)+$"}`, false, "#", "pattern"},
		{`{"type":"string","pattern":"^(\\w*\\s*)*$"}`, false, "#", "pattern"},
		{`{"type":"string","pattern":"^(b?){2,}$"}`, false, "#", "pattern"},
		{`{"type":"string","pattern":"^[\u0000-\u001f]$"}`, false, "#", "pattern"},
		{`{"type":"string","pattern":"^a+$","maxLength":3}`, false, "#", "maxLength"},
		{`{"anyOf":[{"type":"string"},{"type":"string","pattern":7}]}`, false, "#/anyOf/1", "pattern"},
		{`{"type":"string","format":"ipv6"}`, false, "#", "format"},

		{`{"type":"number","maximum":0.5}`, false, "#", "maximum"},
		{`{"type":"number","minimum":2,"exclusiveMaximum":2}`, false, "#", "minimum"},
		{`{"allOf":[{"type":"string"},{"maxLength":3}]}`, false, "#/allOf/0", "allOf"},
		{`{"allOf":[{"type":"object","properties":{"a":{"type":"string"}}},{"properties":{"a":{"type":"integer"}}}]}`, false, "#/allOf/1", "allOf"},
		{`{"allOf":[{"type":"object","additionalProperties":false},{"properties":{"a":{}}}]}`, false, "#/allOf/0", "allOf"},
		{`{"allOf":[{"type":"object"}],"type":"object"}`, false, "#", "type"},
		{`{"not":{"type":"string"}}`, false, "#", "not"},
		{`{"type":"array","uniqueItems":true}`, false, "#", "uniqueItems"},
		{`{"type":"object","minProperties":1}`, false, "#", "minProperties"},
		{`{"type":"object","patternProperties":{"^a":{}}}`, false, "#", "patternProperties"},
		{`{"type":"integer","minimum":5,"maximum":4}`, false, "#", "minimum"},
		{`{"type":"integer","minimum":1e20}`, false, "#", "minimum"},
		{`{"type":"string","maxLength":20000}`, false, "#", "maxLength"},
		{`{"type":"array","minItems":3,"maxItems":2}`, false, "#", "minItems"},
		{`{"type":"string","minLength":1.5}`, false, "#", "minLength"},
		{`{"type":"integer","minLength":1}`, false, "#", "minLength"},
		{`{"type":"thing"}`, false, "#", "type"},
		{`{"minLength":1,"minimum":2}`, false, "#", "type"},
		{`{"type":"object","properties":{"a":{}},"additionalProperties":true}`, false, "#", "additionalProperties"},
		{`{"type":"object","additionalProperties":{"type":"string"}}`, true, "#", "additionalProperties"},
		{`{"type":"object","properties":{"a":{}},"required":["b"]}`, false, "#", "required"},
		{`{"$ref":"#/$defs/missing"}`, false, "#", "$ref"},
		{`{"$ref":"other.json"}`, false, "#", "$ref"},
		{`{"$ref":"#/$defs/a","type":"object","$defs":{"a":{}}}`, false, "#", "type"},
		{`{"anyOf":[]}`, false, "#", "anyOf"},
		{`{"enum":["a"],"minLength":1}`, false, "#", "minLength"},
		{`{"$defs":{"a":{"if":{}}},"$ref":"#/$defs/a"}`, false, "#/$defs/a", "if"},
		{`false`, false, "#", ""},
		{`[1]`, false, "#", ""},
	}
	for _, tt := range tests {
		t.Run(tt.schema, func(t *testing.T) {
			t.Parallel()
			g, err := FromSchema([]byte(tt.schema), tt.strict)
			var se *SchemaError
			if !errors.As(err, &se) {
				t.Fatalf("got %v and grammar\n%s, want a SchemaError", err, g)
			}
			if se.Path != tt.path || se.Keyword != tt.keyword {
				t.Errorf("got path %q keyword %q (%v), want %q %q", se.Path, se.Keyword, err, tt.path, tt.keyword)
			}
		})
	}
}

// TestNumberRanges: a number schema with whole bounds allows exactly the
// numbers within them, among the decimals it writes (no exponent, no
// trailing zero).
func TestNumberRanges(t *testing.T) {
	t.Parallel()
	for _, b := range []string{`"minimum":-3,"maximum":4`, `"exclusiveMinimum":-3,"exclusiveMaximum":4`, `"minimum":2`, `"exclusiveMaximum":-2`,
		`"minimum":0,"exclusiveMaximum":1`, `"exclusiveMinimum":-1,"maximum":0`, `"minimum":-7,"maximum":-5`} {
		t.Run(b, func(t *testing.T) {
			t.Parallel()
			var bounds map[string]float64
			if err := json.Unmarshal([]byte("{"+b+"}"), &bounds); err != nil {
				t.Fatal(err)
			}
			g, err := FromSchema([]byte(`{"type":"number",`+b+`}`), false)
			if err != nil {
				t.Fatal(err)
			}
			re := toRegexp(t, g)
			for n := -120; n <= 120; n++ {
				v := float64(n) / 8
				in := true
				if m, ok := bounds["minimum"]; ok && v < m {
					in = false
				}
				if m, ok := bounds["exclusiveMinimum"]; ok && v <= m {
					in = false
				}
				if m, ok := bounds["maximum"]; ok && v > m {
					in = false
				}
				if m, ok := bounds["exclusiveMaximum"]; ok && v >= m {
					in = false
				}
				doc := strconv.FormatFloat(v, 'f', -1, 64)
				if doc == "-0" {
					continue
				}
				if got := re.MatchString(doc); got != in {
					t.Errorf("%s: match %t, want %t", doc, got, in)
				}
			}
		})
	}
}

// TestPatterns: a pattern's grammar allows the JSON strings whose content
// the pattern matches (Go's regexp says which), among every string of up
// to four characters of a small alphabet.
func TestPatterns(t *testing.T) {
	t.Parallel()
	const alphabet = "aB1-. \""
	var all []string
	var grow func(s string)
	grow = func(s string) {
		all = append(all, s)
		if len(s) == 4 {
			return
		}
		for _, c := range alphabet {
			grow(s + string(c))
		}
	}
	grow("")
	for _, p := range []string{`^a+$`, `^[a-z]*\d?$`, `a.`, `^(a|B1)+-?$`, `^[^a]{1,3}$`, `^.\.$`, `^[\\"]{2}`, `1$`, `^(?i)ab$`, `^a{2,}$`, `^(|a)b?$`} {
		t.Run(p, func(t *testing.T) {
			t.Parallel()
			schema, _ := json.Marshal(map[string]string{"type": "string", "pattern": p})
			g, err := FromSchema(schema, false)
			if err != nil {
				t.Fatal(err)
			}
			re, want := toRegexp(t, g), regexp.MustCompile(p)
			for _, s := range all {
				doc, _ := json.Marshal(s)
				if got := re.MatchString(string(doc)); got != want.MatchString(s) {
					t.Fatalf("%s: grammar match %t, pattern %t; grammar:\n%s", doc, got, !got, g)
				}
			}
		})
	}
}

func TestAnnotationsAccepted(t *testing.T) {
	t.Parallel()
	s := `{"$schema":"https://json-schema.org/draft/2020-12/schema","title":"T","description":"d","type":"object",
		"properties":{"a":{"type":"string","description":"x","default":"y","examples":["z"]}},"required":["a"],"additionalProperties":false}`
	if _, err := FromSchema([]byte(s), true); err != nil {
		t.Fatal(err)
	}
}
