package grammar

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Tool is a function a model may call: its name and the JSON Schema of
// its arguments (nil: an object with no properties); Strict is OpenAI's
// strict mode for them (see FromSchema).
type Tool struct {
	Name       string
	Parameters json.RawMessage
	Strict     bool
}

// CallKeys names the two members of a call object written as JSON:
// {"name": …, "arguments": …} in most chat formats, "parameters" in
// Llama 3's.
type CallKeys struct {
	Name, Arguments string
}

// ToolCalls returns a grammar whose rule "call" is one call of one of
// tools, a JSON object {keys.Name: "<name>", keys.Arguments: <arguments
// fitting the tool's schema>}, and whose root is root: a GBNF expression
// that may use the rules call, space and string (a JSON string), and
// literals written with Literal. A tool's schema that the grammar cannot
// take is a *SchemaError whose path starts with the tool's name.
func ToolCalls(tools []Tool, keys CallKeys, root string) (string, error) {
	if len(tools) == 0 {
		return "", fmt.Errorf("no tools to call")
	}
	b := newBuilder()
	b.rules["call"] = "# reserved" // before a schema's rules take the name
	sp := b.primitive("space")
	alts := make([]string, len(tools))
	for i, t := range tools {
		params := t.Parameters
		if len(params) == 0 || string(params) == "null" {
			params = json.RawMessage(`{"type":"object","properties":{}}`)
		}
		var doc any
		if err := json.Unmarshal(params, &doc); err != nil {
			return "", &SchemaError{Path: t.Name + "#", Reason: fmt.Sprintf("is not JSON: %v", err)}
		}
		c := &converter{b: b, root: doc, strict: t.Strict, refs: map[string]string{}}
		args, err := c.visit(params, "tool-"+t.Name+"-args", "#")
		if err != nil {
			var se *SchemaError
			if errors.As(err, &se) {
				se.Path = t.Name + se.Path
			}
			return "", err
		}
		body := fmt.Sprintf(`"{" %s %s %s ":" %s %s %s "," %s %s %s ":" %s %s "}" %s`,
			sp, Literal(`"`+keys.Name+`"`), sp, sp, Literal(jsonString(t.Name)), sp, sp, Literal(`"`+keys.Arguments+`"`), sp, sp, args, sp)
		alts[i] = b.add("tool-"+t.Name, body)
	}
	b.rules["call"] = strings.Join(alts, " | ")
	if strings.Contains(root, "string") {
		b.primitive("string")
	}
	b.rules[Root] = root
	return b.String(), nil
}

// Literal quotes s as a GBNF string literal.
func Literal(s string) string { return literal(s) }

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
