package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/internal/testmodel"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/download/hubtest"
	"github.com/rbee-dev/rbee/hiveapi"
)

// TestModelsFromTheHub runs the download path against a local server that
// behaves like the Hugging Face hub: the hive downloads (cut once at 40%
// and resumed), verifies, registers; the job runs; a second job downloads
// nothing; model ls and rm see it.
func TestModelsFromTheHub(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(longModel)
	if err != nil {
		t.Fatal(err)
	}
	hub := hubtest.New(t, map[string][]byte{"rbee/tiny/random-3m-Q8_0.gguf": data, "rbee/tiny/README.md": []byte("hi")})
	hub.CutOnce("rbee/tiny/random-3m-Q8_0.gguf", 40)
	e := newEnv(t, "HF_ENDPOINT="+hub.URL)

	r := e.rbee("infer", "--model", "hf:rbee/tiny/random-3m-Q8_0.gguf", "--temperature", "0", "--max-tokens", "4", "hello")
	if r.code != 0 {
		t.Fatalf("infer from the hub: exit %d\n%s", r.code, r.stderr)
	}
	inOrder(t, r.stderr, "checked from its header before downloading", "] downloading", "downloaded; its sha256 matches the source's", "starting a worker", "done:")
	cut := hub.CutOffset("rbee/tiny/random-3m-Q8_0.gguf", 40)
	resumed := false
	for _, rg := range hub.Ranges("rbee/tiny/random-3m-Q8_0.gguf") {
		resumed = resumed || strings.HasPrefix(rg, "bytes="+itoa(cut)+"-")
	}
	if !resumed {
		t.Errorf("no request resumed at the cut (%d): %v", cut, hub.Ranges("rbee/tiny/random-3m-Q8_0.gguf"))
	}
	gets := hub.BodyGETs("rbee/tiny/random-3m-Q8_0.gguf")

	r = e.rbee("infer", "--model", "hf:rbee/tiny/random-3m-Q8_0.gguf", "--temperature", "0", "--max-tokens", "4", "hello")
	if r.code != 0 || strings.Contains(r.stderr, "] downloading") {
		t.Fatalf("second infer should not download: exit %d\n%s", r.code, r.stderr)
	}
	if n := hub.BodyGETs("rbee/tiny/random-3m-Q8_0.gguf"); n != gets {
		t.Errorf("body GETs went from %d to %d on the second job", gets, n)
	}

	// hf:ORG/REPO picks the file; pull is idempotent.
	r = e.rbee("model", "pull", "hf:rbee/tiny", "--alias", "tiny")
	if r.code != 0 || !strings.Contains(r.stderr, "resolved to random-3m-Q8_0.gguf") {
		t.Fatalf("model pull hf:rbee/tiny: exit %d\n%s", r.code, r.stderr)
	}
	var ms []hiveapi.Model
	r = e.rbee("model", "ls", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &ms); err != nil || len(ms) != 1 || ms[0].Quant != "Q8_0" && ms[0].Quant != "F32" {
		t.Fatalf("model ls: %v %q", err, r.stdout)
	}
	if r := e.rbee("model", "rm", ms[0].ID); r.code == 0 || !strings.Contains(r.stderr, "\nhint: it unloads after the keep-alive") {
		t.Errorf("model rm of a model a worker holds should be refused, with the hive's hint: exit %d\n%s", r.code, r.stderr)
	}

	t.Run("fits no device: refused before the download", func(t *testing.T) {
		var buf bytes.Buffer
		if _, err := testmodel.Huge().WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		hub.Add("rbee/huge/huge-F32.gguf", buf.Bytes())
		hub.Sparse("rbee/huge/huge-F32.gguf", 137_500_000_000) // what its header describes
		r := e.rbee("infer", "--model", "hf:rbee/huge/huge-F32.gguf", "abc")
		if r.code != rbee.ExitNoRoom || !strings.Contains(r.stderr, "nothing was downloaded") {
			t.Errorf("exit %d, want %d refusing with the numbers:\n%s", r.code, rbee.ExitNoRoom, r.stderr)
		}
		if served := hub.BytesServed("rbee/huge/huge-F32.gguf"); served > 4<<20 {
			t.Errorf("served %d bytes: more than the header", served)
		}
		var ms []hiveapi.Model
		json.Unmarshal([]byte(e.rbee("model", "ls", "--json").stdout), &ms)
		for _, m := range ms {
			if strings.Contains(m.Ref, "huge") {
				t.Errorf("the refused model is in the catalog: %+v", m)
			}
		}
	})
	t.Run("not found", func(t *testing.T) {
		r := e.rbee("model", "pull", "hf:rbee/tiny/nope.gguf")
		if r.code != rbee.ExitNotFound || !strings.Contains(r.stderr, "nope.gguf") {
			t.Errorf("exit %d, want %d naming the file:\n%s", r.code, rbee.ExitNotFound, r.stderr)
		}
	})
	t.Run("gated", func(t *testing.T) {
		hub.Add("rbee/gated/m.gguf", data)
		hub.Gate("rbee/gated", "secret-token")
		r := e.rbee("model", "pull", "hf:rbee/gated/m.gguf")
		if r.code != rbee.ExitNotFound || !strings.Contains(r.stderr, "HF_TOKEN") {
			t.Errorf("exit %d, want %d saying to set HF_TOKEN:\n%s", r.code, rbee.ExitNotFound, r.stderr)
		}
	})
	e.stopQueen()
}

func itoa(n int64) string { return strings.TrimSpace(strings.Replace(jsonNum(n), "\n", "", -1)) }

func jsonNum(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}
