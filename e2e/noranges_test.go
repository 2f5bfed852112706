package e2e

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/download/hubtest"
	"github.com/rbee-dev/rbee/internal/testmodel"
)

// TestPullWithoutByteRanges: from a server that ignores byte ranges, a
// model that fits is pulled and served, and one that fits nowhere is
// refused from its header with the download dropped after the header.
func TestPullWithoutByteRanges(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(longModel)
	if err != nil {
		t.Fatal(err)
	}
	var huge bytes.Buffer
	if _, err := testmodel.Huge().WriteTo(&huge); err != nil {
		t.Fatal(err)
	}
	hub := hubtest.New(t, map[string][]byte{"rbee/tiny/m-F32.gguf": data, "rbee/huge/huge-F32.gguf": huge.Bytes()})
	hub.Sparse("rbee/huge/huge-F32.gguf", 137_500_000_000)
	hub.NoRanges()
	e := newEnv(t, "HF_ENDPOINT="+hub.URL)

	if r := e.rbee("model", "pull", "hf:rbee/tiny/m-F32.gguf"); r.code != 0 || !strings.Contains(r.stderr, "checked from its header before downloading") {
		t.Fatalf("pull from a server without ranges: exit %d\n%s", r.code, r.stderr)
	}
	if r := e.rbee("infer", "--model", "hf:rbee/tiny/m-F32.gguf", "--temperature", "0", "--max-tokens", "3", "hi"); r.code != 0 {
		t.Fatalf("infer on the pulled model: exit %d\n%s", r.code, r.stderr)
	}
	r := e.rbee("infer", "--model", "hf:rbee/huge/huge-F32.gguf", "abc")
	if r.code != rbee.ExitNoRoom || !strings.Contains(r.stderr, "nothing was downloaded") {
		t.Errorf("huge model: exit %d, want %d refusing with the numbers:\n%s", r.code, rbee.ExitNoRoom, r.stderr)
	}
	if served := hub.BytesServed("rbee/huge/huge-F32.gguf"); served > 64<<20 {
		t.Errorf("served %d bytes of the huge model: more than its header's share", served)
	}
	e.stopQueen()
}
