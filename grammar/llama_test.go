package grammar_test

import (
	"context"
	"errors"
	"testing"

	"github.com/rbee-dev/rbee/grammar"
	"github.com/rbee-dev/rbee/internal/testenv"
	"github.com/rbee-dev/rbee/internal/testmodel"
	"github.com/rbee-dev/rbee/llm"
)

// TestLlamaParses: llama.cpp's grammar parser takes what FromSchema and
// JSONObject write (CheckGrammar builds llama.cpp's grammar sampler on a
// model's vocabulary), and refuses a broken grammar.
func TestLlamaParses(t *testing.T) {
	dir, err := testenv.EngineDir()
	if err != nil {
		t.Fatal(err)
	}
	eng, err := llm.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	path, err := testenv.WriteModel(t.TempDir(), "alphabet.gguf", testmodel.Alphabet())
	if err != nil {
		t.Fatal(err)
	}
	m, err := eng.LoadModel(context.Background(), path, llm.ModelOptions{Device: "cpu", CtxSize: 64, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	schemas := []string{
		`{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"boolean"},"c":{"type":"null"}},"required":["b"]}`,
		`{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"}}}`,
		`{"type":"object","additionalProperties":{"type":"integer"}}`,
		`{"type":"array","items":{"enum":["a",1,null,{"k":[true]},"q\"\\\n"]},"minItems":1,"maxItems":2}`,
		`{"type":"array","prefixItems":[{"type":"string","maxLength":2},{"const":"x"}]}`,
		`{"type":"string","minLength":2,"maxLength":3}`,
		`{"type":["number","null","string","boolean","array","object","integer"]}`,
		`{"anyOf":[{"type":"integer","minimum":10,"exclusiveMaximum":12},{"const":"no"}]}`,
		`{"oneOf":[{"type":"integer","minimum":-99999},{"type":"integer","maximum":-3}]}`,
		`{"type":"string","format":"date-time"}`,
		`{"type":"object","properties":{"d":{"type":"string","format":"date"},"t":{"type":"string","format":"time"},"u":{"type":"string","format":"uuid"}}}`,
		`{"$defs":{"node":{"type":"object","properties":{"v":{"type":"integer"},"kids":{"type":"array","items":{"$ref":"#/$defs/node"}}},"required":["v"]}},"$ref":"#/$defs/node"}`,
		`{"type":"object","properties":{"root":{"type":"string"},"space":{"type":"string"},"a b/c~d":{"type":"string"},"é":{}},"required":["root"]}`,
		`{"type":"object","properties":{"code":{"type":"string","pattern":"^[A-Z]{3}-\\d{2}(?i:x)?$"},"q":{"type":"string","pattern":"[\\\\\"^\\]-]é."}}}`,
		`{"type":"object","properties":{"e":{"type":"string","format":"email"},"h":{"type":"string","format":"hostname"},"i":{"type":"string","format":"ipv4"},"u":{"type":"string","format":"uri"}}}`,
		`{"type":"object","properties":{"p":{"type":"number","minimum":0,"maximum":1},"lat":{"type":"number","exclusiveMinimum":-90,"exclusiveMaximum":90},"n":{"type":"number","exclusiveMaximum":-3}}}`,
		`{"type":"string","pattern":"^(a|b?c)+(x*y){2,}(z?){1,3}$"}`,
		`true`,
		`{}`,
	}
	for _, s := range schemas {
		g, err := grammar.FromSchema([]byte(s), false)
		if err != nil {
			t.Errorf("%s: %v", s, err)
			continue
		}
		if err := m.CheckGrammar(g); err != nil {
			t.Errorf("%s: llama.cpp refuses its grammar: %v\n%s", s, err, g)
		}
	}
	if err := m.CheckGrammar(grammar.JSONObject()); err != nil {
		t.Errorf("JSON mode: %v", err)
	}
	for _, bad := range []string{`root ::= undefined`, `root ::= "a`, `start ::= "a"`, `root ::= root "a" | "b"`, "root ::= \"a\x00\""} {
		if err := m.CheckGrammar(bad); !errors.Is(err, llm.ErrGrammar) {
			t.Errorf("%q: got %v, want ErrGrammar", bad, err)
		}
	}
}
