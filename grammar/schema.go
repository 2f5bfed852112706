package grammar

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// SchemaError is a JSON Schema that FromSchema cannot turn into a grammar:
// a keyword it does not support, or a value it cannot take.
type SchemaError struct {
	Path    string // JSON pointer of the (sub)schema, "#/properties/age"
	Keyword string // the keyword at fault; empty for the schema itself
	Reason  string
}

func (e *SchemaError) Error() string {
	if e.Keyword == "" {
		return fmt.Sprintf("schema %s: %s", e.Path, e.Reason)
	}
	return fmt.Sprintf("schema %s: %q %s", e.Path, e.Keyword, e.Reason)
}

// maxRepeat bounds minLength, maxLength, minItems and maxItems: llama.cpp
// writes each repetition out as a rule.
const maxRepeat = 10000

// maxMagnitude is the largest integer the grammars write (16 digits).
const maxMagnitude = 1e16 - 1

// annotations change nothing in the documents a schema allows.
var annotations = map[string]bool{
	"$schema": true, "$id": true, "$comment": true, "title": true, "description": true, "default": true,
	"examples": true, "deprecated": true, "readOnly": true, "writeOnly": true, "$defs": true, "definitions": true,
}

// keywordTypes says which instance types a supported keyword constrains
// ("" for keywords of any type).
var keywordTypes = map[string]string{
	"type": "", "enum": "", "const": "", "anyOf": "", "oneOf": "", "$ref": "", "allOf": "",
	"properties": "object", "required": "object", "additionalProperties": "object",
	"items": "array", "prefixItems": "array", "minItems": "array", "maxItems": "array",
	"format": "string", "minLength": "string", "maxLength": "string", "pattern": "string",
	"minimum": "integer", "maximum": "integer", "exclusiveMinimum": "integer", "exclusiveMaximum": "integer",
}

var types = []string{"object", "array", "string", "number", "integer", "boolean", "null"}

// formats are the string formats FromSchema writes a primitive rule for
// (patternFormats has the others).
var formats = map[string]string{"date": "date-string", "time": "time-string", "date-time": "date-time-string", "uuid": "uuid"}

// FromSchema returns a grammar for the JSON documents schema allows: types
// object, array, string, number, integer, boolean and null; properties
// (written in the schema's order; those not in required may be left out)
// and additionalProperties; items and prefixItems; minItems and maxItems;
// enum and const; anyOf and oneOf (as anyOf: an answer may fit more than
// one); $ref to a JSON pointer in the schema ("#/$defs/name"); string
// formats date, time, date-time, uuid, email, hostname, ipv4, uri and
// url; pattern; minLength and maxLength; minimum, maximum and their
// exclusive forms for integers, and for numbers when they are whole. An object
// allows only its listed properties unless additionalProperties says
// otherwise; strict (OpenAI's strict mode) refuses additionalProperties
// other than false. Annotations (title, description, default, ...) are
// accepted; any other keyword is a *SchemaError.
func FromSchema(schema []byte, strict bool) (string, error) {
	var root any
	if err := json.Unmarshal(schema, &root); err != nil {
		return "", &SchemaError{Path: "#", Reason: fmt.Sprintf("is not JSON: %v", err)}
	}
	c := &converter{b: newBuilder(), root: root, strict: strict, refs: map[string]string{}}
	r, err := c.visit(schema, "", "#")
	if err != nil {
		return "", err
	}
	c.b.rules[Root] = r
	return c.b.String(), nil
}

type converter struct {
	b      *builder
	root   any // the whole schema, for $ref
	strict bool
	refs   map[string]string // $ref → its rule
}

// schemaObj is a schema object's keywords, raw.
type schemaObj map[string]json.RawMessage

// child names a rule below name.
func child(name, part string) string {
	if name == "" {
		return part
	}
	return name + "-" + part
}

// ruleName is the rule of the schema called name: the whole schema is
// "document" (root refers to it).
func ruleName(name string) string {
	if name == "" {
		return "document"
	}
	return name
}

// visit adds the rules for the schema at path and returns the rule that
// matches it.
func (c *converter) visit(raw json.RawMessage, name, path string) (string, error) {
	raw = bytes.TrimSpace(raw)
	switch string(raw) {
	case "true":
		return c.b.add(ruleName(name), c.b.primitive("value")), nil
	case "false":
		return "", &SchemaError{Path: path, Reason: "is false: no document fits it"}
	}
	var s schemaObj
	if err := json.Unmarshal(raw, &s); err != nil || s == nil {
		return "", &SchemaError{Path: path, Reason: "must be a JSON object or a boolean"}
	}
	var kws []string
	for k := range s {
		if annotations[k] {
			continue
		}
		if _, ok := keywordTypes[k]; !ok {
			return "", &SchemaError{Path: path, Keyword: k, Reason: "is not supported"}
		}
		kws = append(kws, k)
	}
	slices.Sort(kws)
	alone := func(k string) error {
		for _, o := range kws {
			if o != k {
				return &SchemaError{Path: path, Keyword: o, Reason: fmt.Sprintf("beside %q is not supported", k)}
			}
		}
		return nil
	}
	switch {
	case s["allOf"] != nil:
		if err := alone("allOf"); err != nil {
			return "", err
		}
		merged, err := c.allOf(s["allOf"], path)
		if err != nil {
			return "", err
		}
		return c.visit(merged, name, path)
	case s["$ref"] != nil:
		if err := alone("$ref"); err != nil {
			return "", err
		}
		return c.ref(s["$ref"], name, path)
	case s["anyOf"] != nil || s["oneOf"] != nil:
		k := "anyOf"
		if s[k] == nil {
			k = "oneOf"
		}
		if err := alone(k); err != nil {
			return "", err
		}
		var alts []json.RawMessage
		if err := json.Unmarshal(s[k], &alts); err != nil || len(alts) == 0 {
			return "", &SchemaError{Path: path, Keyword: k, Reason: "must be a non-empty array of schemas"}
		}
		rules := make([]string, len(alts))
		for i, a := range alts {
			r, err := c.visit(a, child(name, "alt"+strconv.Itoa(i)), fmt.Sprintf("%s/%s/%d", path, k, i))
			if err != nil {
				return "", err
			}
			rules[i] = r
		}
		return c.b.add(ruleName(name), strings.Join(rules, " | ")), nil
	case s["const"] != nil || s["enum"] != nil:
		for _, k := range kws {
			if k != "const" && k != "enum" && k != "type" {
				return "", &SchemaError{Path: path, Keyword: k, Reason: "beside enum or const is not supported"}
			}
		}
	}
	switch {
	case s["const"] != nil:
		lit, err := jsonLiteral(s["const"])
		if err != nil {
			return "", &SchemaError{Path: path, Keyword: "const", Reason: err.Error()}
		}
		return c.b.add(ruleName(name), lit+" "+c.b.primitive("space")), nil
	case s["enum"] != nil:
		var vals []json.RawMessage
		if err := json.Unmarshal(s["enum"], &vals); err != nil || len(vals) == 0 {
			return "", &SchemaError{Path: path, Keyword: "enum", Reason: "must be a non-empty array"}
		}
		lits := make([]string, len(vals))
		for i, v := range vals {
			lit, err := jsonLiteral(v)
			if err != nil {
				return "", &SchemaError{Path: path, Keyword: "enum", Reason: err.Error()}
			}
			lits[i] = lit
		}
		return c.b.add(ruleName(name), "( "+strings.Join(lits, " | ")+" ) "+c.b.primitive("space")), nil
	}
	ts, err := c.types(s, kws, path)
	if err != nil {
		return "", err
	}
	if len(ts) == 1 {
		return c.typed(s, ts[0], name, path)
	}
	rules := make([]string, len(ts))
	for i, t := range ts {
		r, err := c.typed(s, t, child(name, t), path)
		if err != nil {
			return "", err
		}
		rules[i] = r
	}
	return c.b.add(ruleName(name), strings.Join(rules, " | ")), nil
}

// types returns the instance types s allows: its type keyword, else the
// one its keywords constrain, else any. A keyword that constrains none of
// them is refused: it would be ignored.
func (c *converter) types(s schemaObj, kws []string, path string) ([]string, error) {
	var ts []string
	if t := s["type"]; t != nil {
		var one string
		if err := json.Unmarshal(t, &one); err == nil {
			ts = []string{one}
		} else if err := json.Unmarshal(t, &ts); err != nil || len(ts) == 0 {
			return nil, &SchemaError{Path: path, Keyword: "type", Reason: "must be a type name or a non-empty array of them"}
		}
		for _, t := range ts {
			if !slices.Contains(types, t) {
				return nil, &SchemaError{Path: path, Keyword: "type", Reason: fmt.Sprintf("%q is not a JSON Schema type (%s)", t, strings.Join(types, ", "))}
			}
		}
	} else {
		for _, k := range kws {
			t := keywordTypes[k]
			if t == "integer" {
				t = "number" // minimum alone allows 1.5
			}
			if t != "" && !slices.Contains(ts, t) {
				ts = append(ts, t)
			}
		}
		switch len(ts) {
		case 0:
			return []string{""}, nil
		case 1:
		default:
			return nil, &SchemaError{Path: path, Keyword: "type", Reason: fmt.Sprintf("is missing and the keywords are for %s; name the type", strings.Join(ts, " and "))}
		}
	}
	for _, k := range kws {
		t := keywordTypes[k]
		if t == "" || slices.Contains(ts, t) || (t == "integer" && slices.Contains(ts, "number")) {
			continue
		}
		return nil, &SchemaError{Path: path, Keyword: k, Reason: fmt.Sprintf("applies to %s values, and the type is %s", t, strings.Join(ts, ", "))}
	}
	return ts, nil
}

// typed adds the rules for s as an instance of type t ("" for any).
func (c *converter) typed(s schemaObj, t, name, path string) (string, error) {
	switch t {
	case "":
		return c.b.add(ruleName(name), c.b.primitive("value")), nil
	case "object":
		return c.object(s, name, path)
	case "array":
		return c.array(s, name, path)
	case "string":
		return c.str(s, name, path)
	case "integer":
		return c.integer(s, name, path)
	case "number":
		return c.number(s, name, path)
	}
	return c.b.add(ruleName(name), c.b.primitive(t)), nil
}

func (c *converter) object(s schemaObj, name, path string) (string, error) {
	var required []string
	if r := s["required"]; r != nil {
		if err := json.Unmarshal(r, &required); err != nil {
			return "", &SchemaError{Path: path, Keyword: "required", Reason: "must be an array of property names"}
		}
	}
	var props []string
	var propSchemas map[string]json.RawMessage
	if p := s["properties"]; p != nil {
		var err error
		if props, err = objectKeys(p); err != nil {
			return "", &SchemaError{Path: path, Keyword: "properties", Reason: "must be an object of schemas"}
		}
		_ = json.Unmarshal(p, &propSchemas)
	}
	for _, r := range required {
		if !slices.Contains(props, r) {
			return "", &SchemaError{Path: path, Keyword: "required", Reason: fmt.Sprintf("names %q, which is not in properties", r)}
		}
	}
	extra := bytes.TrimSpace(s["additionalProperties"])
	closed := extra != nil && string(extra) == "false"
	open := extra != nil && !closed
	switch {
	case c.strict && open:
		return "", &SchemaError{Path: path, Keyword: "additionalProperties", Reason: "must be false in strict mode"}
	case open && len(props) > 0:
		return "", &SchemaError{Path: path, Keyword: "additionalProperties", Reason: "is supported only on an object without properties"}
	case open:
		val, err := c.visit(extra, child(name, "value"), path+"/additionalProperties")
		if err != nil {
			return "", err
		}
		kv := c.b.primitive("string") + ` ":" space ` + val
		return c.b.add(ruleName(name), `"{" space ( `+kv+` ( "," space `+kv+` )* )? "}" space`), nil
	case len(props) == 0 && !closed && !c.strict:
		return c.b.add(ruleName(name), c.b.primitive("object")), nil
	}
	c.b.primitive("space")
	kvs := make([]string, len(props))
	for i, p := range props {
		key, _ := json.Marshal(p)
		val, err := c.visit(propSchemas[p], child(name, p), path+"/properties/"+escapePointer(p))
		if err != nil {
			return "", err
		}
		kvs[i] = c.b.add(child(name, p)+"-kv", literal(string(key))+` space ":" space `+val)
	}
	// rest(i, after) matches the properties from i on; after says one was
	// written before them, so each needs its comma. An optional property's
	// two ways on get a rule each, so the rules grow linearly.
	memo := map[string]string{}
	var rest func(i int, after bool) string
	rest = func(i int, after bool) string {
		if i == len(props) {
			return ""
		}
		lead := kvs[i]
		if after {
			lead = `"," space ` + kvs[i]
		}
		with := strings.TrimSpace(lead + " " + rest(i+1, true))
		if slices.Contains(required, props[i]) {
			return with
		}
		key := fmt.Sprintf("%d-%t", i, after)
		if r, ok := memo[key]; ok {
			return r
		}
		// Left out, the rest matches what follows (empty when all of
		// it is optional), or nothing when it is the last.
		body := "( " + with + " )?"
		if without := rest(i+1, after); without != "" {
			body = "( " + with + " ) | " + without
		}
		suffix := "rest"
		if after {
			suffix = "more"
		}
		r := c.b.add(child(name, fmt.Sprintf("%s%d", suffix, i)), body)
		memo[key] = r
		return r
	}
	return c.b.add(ruleName(name), strings.TrimSpace(`"{" space `+rest(0, false))+` "}" space`), nil
}

func (c *converter) array(s schemaObj, name, path string) (string, error) {
	items := bytes.TrimSpace(s["items"])
	if p := s["prefixItems"]; p != nil || (len(items) > 0 && items[0] == '[') {
		k := "prefixItems"
		if p == nil {
			k, p = "items", items
		} else if items != nil && string(items) != "false" {
			return "", &SchemaError{Path: path, Keyword: "items", Reason: "beside prefixItems is supported only as false"}
		}
		for _, o := range []string{"minItems", "maxItems"} {
			if s[o] != nil {
				return "", &SchemaError{Path: path, Keyword: o, Reason: "beside " + k + " is not supported"}
			}
		}
		var tuple []json.RawMessage
		if err := json.Unmarshal(p, &tuple); err != nil {
			return "", &SchemaError{Path: path, Keyword: k, Reason: "must be an array of schemas"}
		}
		parts := make([]string, len(tuple))
		for i, it := range tuple {
			r, err := c.visit(it, child(name, strconv.Itoa(i)), fmt.Sprintf("%s/%s/%d", path, k, i))
			if err != nil {
				return "", err
			}
			parts[i] = r
		}
		body := `"[" space ` + strings.Join(parts, ` "," space `) + ` "]" space`
		return c.b.add(ruleName(name), strings.ReplaceAll(body, "space  ", "space ")), nil
	}
	item := c.b.primitive("value")
	if items != nil {
		var err error
		if item, err = c.visit(items, child(name, "item"), path+"/items"); err != nil {
			return "", err
		}
	}
	lo, hi, err := bounds(s, "minItems", "maxItems", path)
	if err != nil {
		return "", err
	}
	body := `"[" space ` + repeat(item, lo, hi, `"," space`) + ` "]" space`
	c.b.primitive("space")
	return c.b.add(ruleName(name), strings.ReplaceAll(body, "space  ", "space ")), nil
}

func (c *converter) str(s schemaObj, name, path string) (string, error) {
	if f := s["format"]; f != nil {
		var format string
		if err := json.Unmarshal(f, &format); err != nil {
			return "", &SchemaError{Path: path, Keyword: "format", Reason: "must be a string"}
		}
		prim, ok := formats[format]
		re, isPattern := patternFormats[format]
		if !ok && !isPattern {
			return "", &SchemaError{Path: path, Keyword: "format", Reason: fmt.Sprintf("%q is not supported (date, time, date-time, uuid, email, hostname, ipv4, uri and url are)", format)}
		}
		for _, o := range []string{"minLength", "maxLength"} {
			if s[o] != nil {
				return "", &SchemaError{Path: path, Keyword: o, Reason: "beside format is not supported"}
			}
		}
		if p := s["pattern"]; p != nil {
			// Zod writes both (z.email(), z.uuid()): the pattern when
			// it converts (every answer fits it; the format's own rule
			// would not promise that), else the format's rule.
			var own string
			if json.Unmarshal(p, &own) == nil {
				if r, err := c.pattern(own, name, path); err == nil {
					return r, nil
				}
			}
		}
		if isPattern {
			return c.pattern(re, name, path)
		}
		return c.b.add(ruleName(name), c.b.primitive(prim)), nil
	}
	if p := s["pattern"]; p != nil {
		var re string
		if err := json.Unmarshal(p, &re); err != nil {
			return "", &SchemaError{Path: path, Keyword: "pattern", Reason: "must be a string"}
		}
		for _, o := range []string{"minLength", "maxLength"} {
			if s[o] != nil {
				return "", &SchemaError{Path: path, Keyword: o, Reason: "beside pattern is not supported (bound the length in the pattern)"}
			}
		}
		return c.pattern(re, name, path)
	}
	if s["minLength"] == nil && s["maxLength"] == nil {
		return c.b.add(ruleName(name), c.b.primitive("string")), nil
	}
	lo, hi, err := bounds(s, "minLength", "maxLength", path)
	if err != nil {
		return "", err
	}
	ch := c.b.primitive("char")
	c.b.primitive("space")
	body := `"\"" ` + repeat(ch, lo, hi, "") + ` "\"" space`
	return c.b.add(ruleName(name), strings.ReplaceAll(body, `"\""  "\""`, `"\"" "\""`)), nil
}

// bounds reads a pair of count keywords (minItems, maxItems); hi is -1
// when there is none.
func bounds(s schemaObj, loKey, hiKey, path string) (lo, hi int, err error) {
	read := func(k string, def int) (int, error) {
		if s[k] == nil {
			return def, nil
		}
		var n float64
		if err := json.Unmarshal(s[k], &n); err != nil || n < 0 || n != math.Trunc(n) {
			return 0, &SchemaError{Path: path, Keyword: k, Reason: "must be a non-negative integer"}
		}
		if n > maxRepeat {
			return 0, &SchemaError{Path: path, Keyword: k, Reason: fmt.Sprintf("%g is more than %d, the most supported", n, maxRepeat)}
		}
		return int(n), nil
	}
	if lo, err = read(loKey, 0); err != nil {
		return 0, 0, err
	}
	if hi, err = read(hiKey, -1); err != nil {
		return 0, 0, err
	}
	if hi >= 0 && lo > hi {
		return 0, 0, &SchemaError{Path: path, Keyword: loKey, Reason: fmt.Sprintf("%d is more than %s %d", lo, hiKey, hi)}
	}
	return lo, hi, nil
}

func (c *converter) integer(s schemaObj, name, path string) (string, error) {
	lo, hi := -maxMagnitude, maxMagnitude
	bound := func(k string) (float64, bool, error) {
		if s[k] == nil {
			return 0, false, nil
		}
		var v float64
		if err := json.Unmarshal(s[k], &v); err != nil {
			return 0, false, &SchemaError{Path: path, Keyword: k, Reason: "must be a number"}
		}
		if math.Abs(v) > maxMagnitude {
			return 0, false, &SchemaError{Path: path, Keyword: k, Reason: fmt.Sprintf("%g is beyond ±%d, the largest integers supported", v, int64(maxMagnitude))}
		}
		return v, true, nil
	}
	for _, b := range []struct {
		key string
		set func(float64)
	}{
		{"minimum", func(v float64) { lo = max(lo, math.Ceil(v)) }},
		{"exclusiveMinimum", func(v float64) { lo = max(lo, math.Floor(v)+1) }},
		{"maximum", func(v float64) { hi = min(hi, math.Floor(v)) }},
		{"exclusiveMaximum", func(v float64) { hi = min(hi, math.Ceil(v)-1) }},
	} {
		v, ok, err := bound(b.key)
		if err != nil {
			return "", err
		}
		if ok {
			b.set(v)
		}
	}
	if lo == -maxMagnitude && hi == maxMagnitude {
		return c.b.add(ruleName(name), c.b.primitive("integer")), nil
	}
	if lo > hi {
		return "", &SchemaError{Path: path, Keyword: "minimum", Reason: fmt.Sprintf("no integer lies between the bounds (%d to %d)", int64(lo), int64(hi))}
	}
	return c.b.add(ruleName(name), "( "+intRange(int64(lo), int64(hi))+" ) "+c.b.primitive("space")), nil
}

// number adds the rule of a number within bounds that are whole numbers:
// the integers in range, and the decimals between them, written without
// an exponent and with a last digit other than 0, so that a decimal is
// never a bound itself (an exclusive bound holds).
func (c *converter) number(s schemaObj, name, path string) (string, error) {
	type bound struct {
		v         float64
		set, excl bool
	}
	var lo, hi bound
	for _, k := range []string{"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"} {
		if s[k] == nil {
			continue
		}
		var v float64
		if err := json.Unmarshal(s[k], &v); err != nil {
			return "", &SchemaError{Path: path, Keyword: k, Reason: "must be a number"}
		}
		if v != math.Trunc(v) || math.Abs(v) > maxMagnitude {
			return "", &SchemaError{Path: path, Keyword: k, Reason: fmt.Sprintf("%g is not supported for a number: a bound must be a whole number within ±%d", v, int64(maxMagnitude))}
		}
		excl := strings.HasPrefix(k, "exclusive")
		if strings.HasSuffix(k, "inimum") {
			if !lo.set || v > lo.v || (v == lo.v && excl) {
				lo = bound{v, true, excl}
			}
		} else if !hi.set || v < hi.v || (v == hi.v && excl) {
			hi = bound{v, true, excl}
		}
	}
	if !lo.set && !hi.set {
		return c.b.add(ruleName(name), c.b.primitive("number")), nil
	}
	l, h := int64(-maxMagnitude), int64(maxMagnitude)
	if lo.set {
		l = int64(lo.v)
	}
	if hi.set {
		h = int64(hi.v)
	}
	const frac = `"." [0-9]{0,15} [1-9]`
	var alts []string
	il, ih := l, h
	if lo.excl {
		il++
	}
	if hi.excl {
		ih--
	}
	if il <= ih {
		alts = append(alts, intRange(il, ih))
	}
	if a, b := max(l, 0), h-1; a <= b { // k.f with k ≥ 0: above k, below k+1
		alts = append(alts, "( "+natRange(a, b)+" ) "+frac)
	}
	a := int64(0)
	if h < 0 {
		a = -h
	}
	if b := min(-l-1, int64(maxMagnitude)); a <= b { // -k.f: below -k, above -(k+1)
		alts = append(alts, `"-" ( `+natRange(a, b)+" ) "+frac)
	}
	if len(alts) == 0 {
		return "", &SchemaError{Path: path, Keyword: "minimum", Reason: "no number lies between the bounds"}
	}
	return c.b.add(ruleName(name), "( "+strings.Join(alts, " | ")+" ) "+c.b.primitive("space")), nil
}

// intRange matches the decimal integers from lo to hi.
func intRange(lo, hi int64) string {
	var alts []string
	if lo < 0 {
		alts = append(alts, `"-" ( `+natRange(max(1, -hi), -lo)+" )")
	}
	if hi >= 0 {
		alts = append(alts, natRange(max(lo, 0), hi))
	}
	return strings.Join(alts, " | ")
}

// natRange matches the natural numbers from a to b, by number of digits.
func natRange(a, b int64) string {
	var alts []string
	for n := len(strconv.FormatInt(a, 10)); n <= len(strconv.FormatInt(b, 10)); n++ {
		from, to := int64(math.Pow10(n-1)), int64(math.Pow10(n))-1
		if n == 1 {
			from = 0
		}
		alts = append(alts, digitRange(strconv.FormatInt(max(a, from), 10), strconv.FormatInt(min(b, to), 10)))
	}
	return strings.Join(alts, " | ")
}

// digitRange matches the digit strings from x to y, both of one length.
func digitRange(x, y string) string {
	if x == y {
		return `"` + x + `"`
	}
	i := 0
	for x[i] == y[i] {
		i++
	}
	prefix, x, y := x[:i], x[i:], y[i:]
	n := len(x) - 1
	lowFull := strings.Trim(x[1:], "0") == "" // x0 000…: the whole x0 decade
	highFull := strings.Trim(y[1:], "9") == ""
	from, to := x[0], y[0]
	var alts []string
	if !lowFull {
		alts = append(alts, fmt.Sprintf(`"%c" ( %s )`, x[0], digitRange(x[1:], strings.Repeat("9", n))))
		from++
	}
	if !highFull {
		to--
	}
	if from <= to {
		alts = append(alts, strings.TrimSpace(digitClass(from, to)+" "+anyDigits(n)))
	}
	if !highFull {
		alts = append(alts, fmt.Sprintf(`"%c" ( %s )`, y[0], digitRange(strings.Repeat("0", n), y[1:])))
	}
	body := strings.Join(alts, " | ")
	if prefix == "" {
		return body
	}
	return fmt.Sprintf(`"%s" ( %s )`, prefix, body)
}

func digitClass(from, to byte) string {
	if from == to {
		return fmt.Sprintf(`"%c"`, from)
	}
	return fmt.Sprintf("[%c-%c]", from, to)
}

func anyDigits(n int) string {
	switch n {
	case 0:
		return ""
	case 1:
		return "[0-9]"
	}
	return fmt.Sprintf("[0-9]{%d}", n)
}

// ref adds the rule of the schema a $ref points to ("#", "#/$defs/x"):
// one rule per target, so a schema may refer to itself.
func (c *converter) ref(raw json.RawMessage, name, path string) (string, error) {
	var ref string
	if err := json.Unmarshal(raw, &ref); err != nil {
		return "", &SchemaError{Path: path, Keyword: "$ref", Reason: "must be a string"}
	}
	if r, ok := c.refs[ref]; ok {
		return r, nil
	}
	b, err := c.resolve(raw, path)
	if err != nil {
		return "", err
	}
	parts := strings.Split(ref, "/")[1:]
	refName := "ref"
	if len(parts) > 0 {
		refName = parts[len(parts)-1]
	}
	r := c.b.reserve(refName)
	c.refs[ref] = r
	body, err := c.visit(b, refName+"-def", ref)
	if err != nil {
		return "", err
	}
	c.b.rules[r] = body
	return r, nil
}

// allOf returns the one schema a list of schemas that must all hold
// amounts to: the schema itself when there is one (Pydantic's wrapping of
// a $ref with a description), else objects merged (their properties, each
// named once or the same everywhere, and their required names). Anything
// else would need a grammar for an intersection: refused.
func (c *converter) allOf(raw json.RawMessage, path string) (json.RawMessage, error) {
	var subs []json.RawMessage
	if err := json.Unmarshal(raw, &subs); err != nil || len(subs) == 0 {
		return nil, &SchemaError{Path: path, Keyword: "allOf", Reason: "must be a non-empty array of schemas"}
	}
	if len(subs) == 1 {
		return subs[0], nil
	}
	refuse := func(i int, why string) error {
		return &SchemaError{Path: fmt.Sprintf("%s/allOf/%d", path, i), Keyword: "allOf", Reason: why}
	}
	props := map[string]json.RawMessage{}
	var order, required []string
	for i, sub := range subs {
		var so schemaObj
		if err := json.Unmarshal(sub, &so); err != nil || so == nil {
			return nil, refuse(i, "is supported for object schemas only")
		}
		if ref := so["$ref"]; ref != nil && len(so) == 1 {
			target, err := c.resolve(ref, path)
			if err != nil {
				return nil, err
			}
			so = nil
			if err := json.Unmarshal(target, &so); err != nil || so == nil {
				return nil, refuse(i, "is supported for object schemas only")
			}
		}
		for k, v := range so {
			switch {
			case annotations[k]:
			case k == "type" && compactJSON(v) == `"object"`:
			case k == "required":
				var req []string
				if err := json.Unmarshal(v, &req); err != nil {
					return nil, refuse(i, "required must be an array of property names")
				}
				for _, r := range req {
					if !slices.Contains(required, r) {
						required = append(required, r)
					}
				}
			case k == "properties":
				keys, err := objectKeys(v)
				if err != nil {
					return nil, refuse(i, "properties must be an object of schemas")
				}
				var ps map[string]json.RawMessage
				_ = json.Unmarshal(v, &ps)
				for _, key := range keys {
					if old, ok := props[key]; ok {
						if compactJSON(old) != compactJSON(ps[key]) {
							return nil, refuse(i, fmt.Sprintf("gives property %q another schema than an earlier one: not supported", key))
						}
						continue
					}
					props[key] = ps[key]
					order = append(order, key)
				}
			default:
				return nil, refuse(i, fmt.Sprintf("with %q: allOf of several schemas is supported for objects of properties and required only", k))
			}
		}
	}
	var b bytes.Buffer
	b.WriteString(`{"type":"object","properties":{`)
	for i, key := range order {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(key)
		b.Write(k)
		b.WriteByte(':')
		b.Write(props[key])
	}
	b.WriteString("}")
	if len(required) > 0 {
		r, _ := json.Marshal(required)
		b.WriteString(`,"required":`)
		b.Write(r)
	}
	b.WriteString("}")
	return b.Bytes(), nil
}

// compactJSON is raw without insignificant white space.
func compactJSON(raw json.RawMessage) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}

// resolve returns the schema a $ref points to within the schema ("#",
// "#/$defs/x").
func (c *converter) resolve(raw json.RawMessage, path string) (json.RawMessage, error) {
	var ref string
	if err := json.Unmarshal(raw, &ref); err != nil {
		return nil, &SchemaError{Path: path, Keyword: "$ref", Reason: "must be a string"}
	}
	if ref != "#" && !strings.HasPrefix(ref, "#/") {
		return nil, &SchemaError{Path: path, Keyword: "$ref", Reason: fmt.Sprintf("%q is not supported: only references within the schema (#/$defs/name) are", ref)}
	}
	target := c.root
	for _, p := range strings.Split(ref, "/")[1:] {
		p = strings.ReplaceAll(strings.ReplaceAll(p, "~1", "/"), "~0", "~")
		var ok bool
		switch t := target.(type) {
		case map[string]any:
			target, ok = t[p]
		case []any:
			i, err := strconv.Atoi(p)
			if ok = err == nil && i >= 0 && i < len(t); ok {
				target = t[i]
			}
		}
		if !ok {
			return nil, &SchemaError{Path: path, Keyword: "$ref", Reason: fmt.Sprintf("%q points to nothing in the schema", ref)}
		}
	}
	b, err := json.Marshal(target)
	if err != nil {
		return nil, &SchemaError{Path: path, Keyword: "$ref", Reason: err.Error()}
	}
	return b, nil
}

// jsonLiteral returns a GBNF literal of the JSON value raw, compacted.
func jsonLiteral(raw json.RawMessage) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return "", fmt.Errorf("is not JSON: %w", err)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	return literal(strings.TrimSuffix(buf.String(), "\n")), nil
}

// objectKeys returns the keys of the JSON object raw in their order.
func objectKeys(raw json.RawMessage) ([]string, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("not an object")
	}
	var keys []string
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		keys = append(keys, t.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil, err
		}
	}
	return keys, nil
}

func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}
