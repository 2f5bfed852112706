package modelfile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	parser "github.com/gpustack/gguf-parser-go"

	"github.com/rbee-dev/rbee/internal/testmodel"
)

// Test models written once for the whole package.
var (
	alphabetPath string
	smallPath    string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "modelfile-test-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	alphabetPath = filepath.Join(dir, "alphabet.gguf")
	smallPath = filepath.Join(dir, "random-3m.gguf")
	if err := testmodel.Alphabet().WriteFile(alphabetPath); err != nil {
		panic(err)
	}
	if err := testmodel.Random(testmodel.Small).WriteFile(smallPath); err != nil {
		panic(err)
	}
	return m.Run()
}

// kvPerTok is the documented formula for a model whose K and V heads have
// the same size: 2 (K and V) * layers * n_embd_k_gqa * 2 bytes (F16).
func kvPerTok(s testmodel.Spec) uint64 {
	embdKGQA := s.Embd / s.Heads * s.HeadsKV
	return uint64(2 * s.Layers * embdKGQA * 2)
}

func TestInspect(t *testing.T) {
	tests := []struct {
		name string
		path func() string
		spec testmodel.Spec
	}{
		{"alphabet", func() string { return alphabetPath }, testmodel.AlphabetSpec},
		{"small", func() string { return smallPath }, testmodel.Small},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.path()
			got, err := Inspect(t.Context(), path, Options{Hash: true})
			if err != nil {
				t.Fatalf("Inspect: %v", err)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(data)
			s := tt.spec
			// testmodel's Params counts every tensor element, norms included,
			// which is what the header's tensor list adds up to.
			params := uint64(s.Params())
			want := Info{
				Path:          path,
				Size:          int64(len(data)),
				SHA256:        hex.EncodeToString(sum[:]),
				Arch:          "llama",
				Name:          s.Name,
				Quant:         "F32",
				Params:        params,
				CtxTrain:      s.CtxTrain,
				Layers:        s.Layers,
				Embd:          s.Embd,
				HeadsKV:       s.HeadsKV,
				WeightsBytes:  4 * params, // all F32
				KVBytesPerTok: kvPerTok(s),
			}
			if got != want {
				t.Errorf("Inspect:\n got %+v\nwant %+v", got, want)
			}
			if got.WeightsBytes > uint64(got.Size) {
				t.Errorf("WeightsBytes %d larger than the file (%d)", got.WeightsBytes, got.Size)
			}
		})
	}
}

func TestInspectNoHash(t *testing.T) {
	got, err := Inspect(t.Context(), smallPath, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got.SHA256 != "" {
		t.Errorf("SHA256 = %q without Options.Hash, want empty", got.SHA256)
	}
}

// TestInspectQuantized reads llama-quantize's output for testmodel.Bench
// when $RBEE_TEST_MODELS holds it.
func TestInspectQuantized(t *testing.T) {
	tests := []struct {
		file  string
		quant string
		// bytes per parameter: the type's block size, a little more for the F32 norms
		minBPP, maxBPP float64
	}{
		{"random-75m-f32.gguf", "F32", 4, 4},
		{"random-75m-q8_0.gguf", "Q8_0", 34.0 / 32, 1.1},
		{"random-75m-q4_k_m.gguf", "Q4_K_M", 144.0 / 256, 0.8},
	}
	for _, tt := range tests {
		t.Run(tt.quant, func(t *testing.T) {
			dir := os.Getenv("RBEE_TEST_MODELS")
			path := filepath.Join(dir, tt.file)
			if _, err := os.Stat(path); dir == "" || err != nil {
				t.Skipf("no $RBEE_TEST_MODELS/%s", tt.file)
			}
			got, err := Inspect(t.Context(), path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v", got)
			s := testmodel.Bench
			if got.Quant != tt.quant {
				t.Errorf("Quant = %q, want %q", got.Quant, tt.quant)
			}
			if got.Arch != "llama" || got.Name != s.Name {
				t.Errorf("Arch, Name = %q, %q, want llama, %q", got.Arch, got.Name, s.Name)
			}
			if got.Params != uint64(s.Params()) {
				t.Errorf("Params = %d, want %d", got.Params, s.Params())
			}
			if bpp := float64(got.WeightsBytes) / float64(got.Params); bpp < tt.minBPP || bpp > tt.maxBPP {
				t.Errorf("WeightsBytes = %d, %.4f bytes per parameter, want %.4f to %.4f", got.WeightsBytes, bpp, tt.minBPP, tt.maxBPP)
			}
			if got.KVBytesPerTok != kvPerTok(s) {
				t.Errorf("KVBytesPerTok = %d, want %d", got.KVBytesPerTok, kvPerTok(s))
			}
		})
	}
}

func TestEstimate(t *testing.T) {
	info, err := Inspect(t.Context(), smallPath, Options{})
	if err != nil {
		t.Fatal(err)
	}
	prev := uint64(0)
	for _, n := range []int{1, 16, 512, 2048, 4096, 1 << 20} {
		got := info.Estimate(n)
		want := info.WeightsBytes + uint64(n)*info.KVBytesPerTok + 64<<20 // 5% of 13 MB is under the floor
		if got != want {
			t.Errorf("Estimate(%d) = %d, want %d", n, got, want)
		}
		if got <= prev {
			t.Errorf("Estimate(%d) = %d, not above the estimate for a smaller context (%d)", n, got, prev)
		}
		prev = got
	}
	if got, want := info.Estimate(0), info.Estimate(info.CtxTrain); got != want {
		t.Errorf("Estimate(0) = %d, want Estimate(CtxTrain) = %d", got, want)
	}

	big := Info{WeightsBytes: 4 << 30, KVBytesPerTok: 1 << 17, CtxTrain: 8192}
	if got, want := big.Estimate(4096), uint64(4<<30+4096<<17+(4<<30)/100*5); got != want {
		t.Errorf("Estimate of a 4 GiB model = %d, want %d (5%% overhead)", got, want)
	}
	huge := Info{WeightsBytes: 1 << 62, KVBytesPerTok: 1 << 62}
	if got := huge.Estimate(1 << 30); got != ^uint64(0) {
		t.Errorf("Estimate overflowing uint64 = %d, want saturated %d", got, ^uint64(0))
	}
}

// TestEstimateVsLLaMACpp logs gguf-parser-go's own llama.cpp estimate next to
// ours, for reading with -v; the rules differ on purpose.
func TestEstimateVsLLaMACpp(t *testing.T) {
	info, err := Inspect(t.Context(), smallPath, Options{})
	if err != nil {
		t.Fatal(err)
	}
	gf, err := parser.ParseGGUFFile(smallPath)
	if err != nil {
		t.Fatal(err)
	}
	const ctxTokens = 2048
	e := gf.EstimateLLaMACppRun(parser.WithLLaMACppContextSize(ctxTokens))
	var w, kv, comp uint64
	for _, d := range e.Devices {
		w += uint64(d.Weight.Sum())
		kv += uint64(d.KVCache.Sum())
		comp += uint64(d.Computation.Sum())
	}
	t.Logf("rbee: weights %d + kv %d + overhead => %d", info.WeightsBytes, uint64(ctxTokens)*info.KVBytesPerTok, info.Estimate(ctxTokens))
	t.Logf("gguf-parser llama.cpp estimate: weights %d, kv %d, compute %d (devices %d)", w, kv, comp, len(e.Devices))
	if kv != 0 && kv != uint64(ctxTokens)*info.KVBytesPerTok {
		t.Errorf("KV cache: gguf-parser says %d, we say %d", kv, uint64(ctxTokens)*info.KVBytesPerTok)
	}
}

func TestHash(t *testing.T) {
	data, err := os.ReadFile(alphabetPath)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	got, err := Hash(t.Context(), alphabetPath)
	if err != nil {
		t.Fatal(err)
	}
	if want := hex.EncodeToString(sum[:]); got != want {
		t.Errorf("Hash = %s, want %s", got, want)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Hash(ctx, smallPath); !errors.Is(err, context.Canceled) {
		t.Errorf("Hash with a cancelled context: got %v, want context.Canceled", err)
	}
	if _, err := Inspect(ctx, smallPath, Options{Hash: true}); !errors.Is(err, context.Canceled) {
		t.Errorf("Inspect with a cancelled context: got %v, want context.Canceled", err)
	}
	if _, err := Hash(t.Context(), filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Hash of a missing file: got %v, want fs.ErrNotExist", err)
	}
}

func TestInspectBadInput(t *testing.T) {
	dir := t.TempDir()
	real, err := os.ReadFile(alphabetPath)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	withVersion := func(v uint32) []byte {
		b := append([]byte(nil), real...)
		binary.LittleEndian.PutUint32(b[4:8], v)
		return b
	}
	// A metadata key of 100 kB that the parser quotes in its error.
	longKey := []byte("GGUF\x03\x00\x00\x00")
	longKey = binary.LittleEndian.AppendUint64(longKey, 0)
	longKey = binary.LittleEndian.AppendUint64(longKey, 1)
	longKey = binary.LittleEndian.AppendUint64(longKey, 100_000)
	longKey = append(longKey, bytes.Repeat([]byte("k"), 100_000)...)
	longKey = binary.LittleEndian.AppendUint32(longKey, 8)     // a string
	longKey = binary.LittleEndian.AppendUint64(longKey, 1<<40) // longer than the file
	longKey = append(longKey, make([]byte, 64)...)
	tests := []struct {
		name    string
		path    string
		want    error
		mention string // a part of the message saying what was found
	}{
		{"missing", filepath.Join(dir, "missing.gguf"), fs.ErrNotExist, "missing.gguf"},
		{"directory", dir, ErrNotGGUF, "directory"},
		{"empty", write("empty.gguf", nil), ErrNotGGUF, "empty file"},
		{"short", write("short.gguf", []byte("GG")), ErrNotGGUF, "only 2 bytes"},
		{"text", write("page.gguf", []byte("<!DOCTYPE html><html>404 Not Found</html>\n")), ErrNotGGUF, `text "<!DOCTYPE html><`},
		{"binary", write("bin.gguf", []byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}), ErrNotGGUF, `magic "\x7fELF"`},
		{"zip", write("model.pt", []byte("PK\x03\x04\x14\x00\x00\x00\x08\x00")), ErrNotGGUF, "zip"},
		{"ggml", write("old.bin", []byte("tjgg\x03\x00\x00\x00\x00\x00")), ErrNotGGUF, "pre-GGUF"},
		{"truncated header", write("trunc.gguf", real[:100]), ErrNotGGUF, "truncated or malformed header"},
		{"truncated data", write("trunc-data.gguf", real[:len(real)-1000]), ErrNotGGUF, "tensor data"},
		{"version 1", write("v1.gguf", withVersion(1)), ErrNotGGUF, "version 1"},
		{"version 4", write("v4.gguf", withVersion(4)), ErrNotGGUF, "version 4"},
		{"big endian", write("be.gguf", withVersion(3<<24)), ErrNotGGUF, "big-endian"},
		{"parser panics", write("panic.gguf", panickyModel(t)), ErrNotGGUF, "malformed header"},
		{"long key", write("long.gguf", longKey), ErrNotGGUF, "kkk..."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Inspect(t.Context(), tt.path, Options{Hash: true})
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want an error wrapping %v", err, tt.want)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.path) {
				t.Errorf("error %q does not name the path %s", msg, tt.path)
			}
			if !strings.Contains(msg, tt.mention) {
				t.Errorf("error %q does not mention %q", msg, tt.mention)
			}
			if len(msg) > 1000 {
				t.Errorf("error is %d bytes long, want a bounded message", len(msg))
			}
			if strings.Contains(msg, "failed to") {
				t.Errorf("error %q says \"failed to\"", msg)
			}
			t.Log(msg)
		})
	}
}

func BenchmarkInspect(b *testing.B) {
	ctx := b.Context()
	for b.Loop() {
		if _, err := Inspect(ctx, smallPath, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHash(b *testing.B) {
	st, err := os.Stat(smallPath)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(st.Size())
	ctx := b.Context()
	for b.Loop() {
		if _, err := Hash(ctx, smallPath); err != nil {
			b.Fatal(err)
		}
	}
}
