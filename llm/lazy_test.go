package llm

import (
	"context"
	"testing"

	"github.com/rbee-dev/rbee/internal/testenv"
	"github.com/rbee-dev/rbee/internal/testmodel"
)

// TestLazyGrammar: a grammar with a trigger word leaves the text free
// until the word ends it, then applies from there: the alphabet model,
// which continues "abc" with "defgh…z", is cut to "jk" after "ghi"; a
// word that never comes leaves the whole answer free, its end of stream
// included.
func TestLazyGrammar(t *testing.T) {
	dir, err := testenv.EngineDir()
	if err != nil {
		t.Fatal(err)
	}
	eng, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	path, err := testenv.WriteModel(t.TempDir(), "alphabet.gguf", testmodel.Alphabet())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m, err := eng.LoadModel(ctx, path, ModelOptions{Device: "cpu", CtxSize: 128, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, tt := range []struct {
		name, grammar, trigger, want, finish string
	}{
		{"triggered", `root ::= "jk"`, "ghi", "defghijk", FinishStop},
		{"never triggered", `root ::= "jk"`, "QQ", "defghijklmnopqrstuvwxyz", FinishStop},
		{"not lazy", `root ::= [a-z] "x"`, "", "dx", FinishStop},
	} {
		t.Run(tt.name, func(t *testing.T) {
			prompt, err := m.Tokenize("abc", true, 0)
			if err != nil {
				t.Fatal(err)
			}
			slot, err := m.Acquire(ctx, prompt)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Release(slot)
			var got string
			res, err := slot.Generate(ctx, prompt, SampleParams{MaxTokens: 40, Grammar: tt.grammar, GrammarTrigger: tt.trigger, NoCache: true},
				func(p Piece) error { got += p.Text; return nil })
			if err != nil || got != tt.want || res.FinishReason != tt.finish {
				t.Errorf("got %q (%s, %v), want %q (%s)", got, res.FinishReason, err, tt.want, tt.finish)
			}
		})
	}
}
