package llm

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/hybridgroup/yzma/pkg/llama"
)

// QuantTypes maps the names llama.cpp's quantize tool accepts to file types.
var QuantTypes = map[string]llama.Ftype{
	"F16":    llama.FtypeMostlyF16,
	"Q8_0":   llama.FtypeMostlyQ8_0,
	"Q4_0":   llama.FtypeMostlyQ4_0,
	"Q4_K_M": llama.FtypeMostlyQ4_K_M,
	"Q5_K_M": llama.FtypeMostlyQ5_K_M,
	"Q6_K":   llama.FtypeMostlyQ6_K,
}

// Quantize writes a quantized copy of the GGUF model in to out with
// llama.cpp's own quantizer. out appears only when quantizing succeeded.
func (e *Engine) Quantize(in, out, typ string) error {
	ft, ok := QuantTypes[strings.ToUpper(typ)]
	if !ok {
		return fmt.Errorf("quantize: unknown type %q", typ)
	}
	if err := CheckGGUF(in); err != nil {
		return fmt.Errorf("quantize: %w", err)
	}
	tmp := filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".tmp")
	defer os.Remove(tmp)
	p := llama.ModelQuantizeDefaultParams()
	p.Ftype = ft
	p.NThread = int32(runtime.NumCPU())
	if rc := llama.ModelQuantize(in, tmp, &p); rc != 0 {
		return fmt.Errorf("quantize %s to %s: llama.cpp returned %d", in, typ, rc)
	}
	if err := os.Rename(tmp, out); err != nil {
		return fmt.Errorf("quantize: %w", err)
	}
	return nil
}
