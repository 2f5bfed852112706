package modelfile

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/rbee-dev/rbee/internal/gguf"
)

// tinyModel is a complete, valid GGUF file of a few hundred bytes: small
// enough for the fuzzer to mutate quickly, rich enough to reach every part of
// the header parser.
func tinyModel(t testing.TB) []byte {
	f := gguf.New()
	f.String("general.architecture", "llama")
	f.String("general.name", "tiny")
	f.Uint32("general.file_type", 0)
	f.Uint32("llama.context_length", 64)
	f.Uint32("llama.embedding_length", 4)
	f.Uint32("llama.block_count", 1)
	f.Uint32("llama.attention.head_count", 2)
	f.Int32s("llama.attention.head_count_kv", []int32{2})
	f.Strings("tokenizer.ggml.tokens", []string{"a", "b"})
	f.Tensor("token_embd.weight", []uint64{4, 2}, make([]float32, 8))
	f.Tensor("blk.0.attn_k.weight", []uint64{4, 4}, make([]float32, 16))
	var buf bytes.Buffer
	if _, err := f.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestTinyModel(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tiny.gguf")
	if err := os.WriteFile(path, tinyModel(t), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Inspect(t.Context(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Params != 24 || got.WeightsBytes != 96 || got.Layers != 1 || got.HeadsKV != 2 || got.Quant != "F32" {
		t.Errorf("Inspect = %+v, want 24 params, 96 bytes, 1 layer, 2 KV heads, F32", got)
	}
	// Per-layer head_count_kv array: 1 layer * 2 heads * (2+2) dims * 2 bytes.
	if got.KVBytesPerTok != 16 {
		t.Errorf("KVBytesPerTok = %d, want 16", got.KVBytesPerTok)
	}
}

// q8Model is a GGUF file whose weights are Q8_0 (ggml type 8: blocks of 32
// weights in 34 bytes) and whose header has no general.file_type, so Quant
// must come from the tensor types. internal/gguf writes F32 only, hence the
// hand encoding.
func q8Model() []byte {
	var b bytes.Buffer
	le := func(v any) { binary.Write(&b, binary.LittleEndian, v) }
	str := func(s string) { le(uint64(len(s))); b.WriteString(s) }
	b.WriteString("GGUF")
	le(uint32(3))
	le(uint64(2)) // tensors
	le(uint64(3)) // metadata
	str("general.architecture")
	le(uint32(8))
	str("llama")
	str("llama.embedding_length")
	le(uint32(4))
	le(uint32(32))
	str("llama.block_count")
	le(uint32(4))
	le(uint32(1))
	tensor := func(name string, dims []uint64, typ uint32, off uint64) {
		str(name)
		le(uint32(len(dims)))
		for _, d := range dims {
			le(d)
		}
		le(typ)
		le(off)
	}
	tensor("token_embd.weight", []uint64{32, 4}, 8, 0) // 4 blocks, 136 bytes
	tensor("blk.0.attn_norm.weight", []uint64{32}, 0, 160)
	for b.Len()%32 != 0 {
		b.WriteByte(0)
	}
	b.Write(make([]byte, 160+32*4))
	return b.Bytes()
}

func TestQuantFromTensors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q8.gguf")
	if err := os.WriteFile(path, q8Model(), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Inspect(t.Context(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Quant != "Q8_0" || got.Params != 160 || got.WeightsBytes != 136+128 {
		t.Errorf("Inspect = %+v, want Quant Q8_0, 160 params, 264 bytes", got)
	}
}

// panickyModel has an empty head_count array, which makes gguf-parser-go
// index past its end.
func panickyModel(t testing.TB) []byte {
	f := gguf.New()
	f.String("general.architecture", "llama")
	f.Int32s("llama.attention.head_count", []int32{})
	f.Tensor("token_embd.weight", []uint64{4}, make([]float32, 4))
	var buf bytes.Buffer
	if _, err := f.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// FuzzInspect feeds Inspect mutated GGUF files: it must never panic, and
// whatever it rejects must be ErrNotGGUF.
func FuzzInspect(f *testing.F) {
	valid := tinyModel(f)
	f.Add(valid)
	f.Add(valid[:len(valid)/2])
	f.Add(q8Model())
	f.Add(panickyModel(f))
	f.Add([]byte("GGUF\x03\x00\x00\x00"))
	f.Add([]byte{})
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "fuzz.gguf")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		info, err := Inspect(context.Background(), path, Options{})
		if err != nil {
			if !errors.Is(err, ErrNotGGUF) {
				t.Fatalf("rejected with %v, want an error wrapping ErrNotGGUF", err)
			}
			return
		}
		_ = info.Estimate(0)
		_ = info.Estimate(1 << 20)
	})
}
