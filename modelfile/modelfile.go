package modelfile

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/bits"
	"os"
	"strings"
	"unicode/utf8"

	gguf "github.com/gpustack/gguf-parser-go"
)

// ErrNotGGUF is wrapped by every error about a file that is readable but is
// not a GGUF model llama.cpp could load: wrong magic, unsupported version,
// truncated or malformed header.
var ErrNotGGUF = errors.New("not a GGUF file")

// Info is what the header of a GGUF file says about the model in it.
//
// KVBytesPerTok is the F16 KV cache one context token costs:
//
//	sum over layers of n_head_kv * (key_length + value_length) * 2 bytes
//
// with key_length and value_length defaulting to n_embd / n_head. For the
// usual model (equal K and V head sizes, one n_head_kv for every layer) that
// is 2 * layers * n_embd_k_gqa * 2 bytes, n_embd_k_gqa = n_head_kv * key_length.
// Sliding windows, MLA and recurrent state are not modelled.
type Info struct {
	Path          string
	Size          int64  // bytes on disk
	SHA256        string // hex; filled by Inspect only when Options.Hash
	Arch          string // general.architecture, e.g. "llama"; empty when absent
	Name          string // general.name
	Quant         string // file type as llama-quantize names it: "F32", "F16", "Q8_0", "Q4_K_M", ...; empty when unknown
	Params        uint64 // elements of all tensors
	CtxTrain      int
	Layers        int
	Embd          int
	HeadsKV       int
	WeightsBytes  uint64 // bytes of all tensors
	KVBytesPerTok uint64 // F16 K+V cache bytes per context token, see above
}

// Options tune Inspect.
type Options struct {
	// Hash reads the whole file to fill Info.SHA256; without it only the
	// header is read.
	Hash bool
}

// kvCacheBytes is the size of one cached K or V element: llama.cpp's default
// cache type is F16.
const kvCacheBytes = 2

// Compute-buffer overhead of Estimate: the larger of a floor and a fraction of
// the weights. llama.cpp's compute buffers for a single sequence are tens of
// MiB for small models and grow roughly with model width; 5% of the weights
// covers that with room to spare without pretending to model the graph.
const (
	overheadFloor   = 64 << 20
	overheadPercent = 5
)

// Estimate returns the bytes a worker needs to run the model with a context
// of ctxTokens (ctxTokens <= 0 means CtxTrain, as llama.cpp's -c 0 does):
//
//	WeightsBytes + ctxTokens*KVBytesPerTok + max(64 MiB, 5% of WeightsBytes)
//
// It is a simple upper-bound rule for placement, not a model of llama.cpp's
// allocator; the sum saturates at the largest uint64 instead of wrapping.
func (i Info) Estimate(ctxTokens int) uint64 {
	if ctxTokens <= 0 {
		ctxTokens = i.CtxTrain
	}
	ctx := uint64(max(ctxTokens, 0))
	overhead := max(uint64(overheadFloor), i.WeightsBytes/100*overheadPercent)
	return satAdd(satAdd(i.WeightsBytes, satMul(ctx, i.KVBytesPerTok)), overhead)
}

// Inspect reads the header of the GGUF file at path and, when opt.Hash is
// set, hashes the whole file. ctx bounds the hashing; the header read is
// short and not interrupted once started.
//
// A missing file yields an error wrapping fs.ErrNotExist; a file that is not
// a loadable GGUF (a directory, empty, text, truncated, another format or
// version) yields one wrapping ErrNotGGUF that says what was found.
//
// A path named as the first shard of a split model ("-00001-of-00003.gguf")
// is read with its sibling shards, as llama.cpp loads it: the header fields
// describe the whole model, while Size and SHA256 are of this file only.
func Inspect(ctx context.Context, path string, opt Options) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, fmt.Errorf("inspect %s: %w", path, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return Info{}, fmt.Errorf("inspect model: %w", err) // *fs.PathError names the path
	}
	if st.IsDir() {
		return Info{}, fmt.Errorf("inspect %s: %w: found a directory", path, ErrNotGGUF)
	}
	if err := sniff(path); err != nil {
		return Info{}, fmt.Errorf("inspect %s: %w", path, err)
	}
	info, err := parse(path)
	if err != nil {
		return Info{}, fmt.Errorf("inspect %s: %w", path, err)
	}
	info.Size = st.Size()
	if opt.Hash {
		if info.SHA256, err = Hash(ctx, path); err != nil {
			return Info{}, err
		}
	}
	return info, nil
}

// sniff checks the magic and version itself so that the common wrong-file
// cases get a message that says what the file is instead of a parser error.
func sniff(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var head [16]byte
	n, err := io.ReadFull(f, head[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read header: %w", err)
	}
	b := head[:n]
	if n < 8 || !bytes.Equal(b[:4], []byte("GGUF")) {
		return fmt.Errorf("%w: found %s", ErrNotGGUF, describe(b))
	}
	switch v := binary.LittleEndian.Uint32(b[4:8]); {
	case v == 2 || v == 3:
		return nil
	case bits.ReverseBytes32(v) >= 1 && bits.ReverseBytes32(v) <= 3:
		return fmt.Errorf("%w: found a big-endian GGUF (version %d), which llama.cpp does not load here",
			ErrNotGGUF, bits.ReverseBytes32(v))
	default:
		return fmt.Errorf("%w: found GGUF version %d, want 2 or 3", ErrNotGGUF, v)
	}
}

// describe names what the first bytes of a non-GGUF file look like.
func describe(b []byte) string {
	switch {
	case len(b) == 0:
		return "an empty file"
	case len(b) == 1:
		return "only 1 byte"
	case len(b) < 4:
		return fmt.Sprintf("only %d bytes", len(b))
	case bytes.HasPrefix(b, []byte("GGUF")):
		return fmt.Sprintf("a GGUF magic but only %d bytes", len(b))
	case bytes.HasPrefix(b, []byte("lmgg")), bytes.HasPrefix(b, []byte("fmgg")), bytes.HasPrefix(b, []byte("tjgg")):
		return fmt.Sprintf("the pre-GGUF llama.cpp format %q", reverse(b[:4]))
	case bytes.HasPrefix(b, []byte("PK\x03\x04")):
		return "a zip archive (a PyTorch checkpoint?)"
	case len(b) > 8 && b[8] == '{' && binary.LittleEndian.Uint64(b[:8]) < 1<<30:
		return "a safetensors file"
	case isText(b):
		return fmt.Sprintf("text %q", b)
	default:
		return fmt.Sprintf("magic %q", b[:4])
	}
}

func reverse(b []byte) string {
	r := make([]byte, len(b))
	for i := range b {
		r[len(b)-1-i] = b[i]
	}
	return string(r)
}

// isText reports whether b looks like the start of a text file (an HTML
// error page saved as a model is the usual case); the cut may split a rune.
func isText(b []byte) bool {
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r == utf8.RuneError && len(b) >= utf8.UTFMax {
			return false
		}
		if r < 0x20 && !strings.ContainsRune("\t\n\r", r) {
			return false
		}
		b = b[size:]
	}
	return true
}

// parse reads the header with gguf-parser-go. The parser panics on some
// malformed input (overflowing tensor sizes, mistyped metadata read through
// its typed accessors), so every call into it runs under recover.
func parse(path string) (info Info, err error) {
	defer func() {
		if r := recover(); r != nil {
			info, err = Info{}, fmt.Errorf("%w: malformed header: %s", ErrNotGGUF, clip(fmt.Sprint(r)))
		}
	}()
	gf, err := gguf.ParseGGUFFile(path, gguf.SkipLargeMetadata())
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return Info{}, fmt.Errorf("parse header: %w", err) // an I/O problem, not the content
		}
		return Info{}, fmt.Errorf("%w: truncated or malformed header: %w", ErrNotGGUF, clipped{err})
	}
	md := gf.Metadata()
	ga := gf.Architecture()

	info = Info{
		Path:         path,
		Name:         md.Name,
		Quant:        quantName(gf, md.FileType),
		Params:       uint64(gf.ModelParameters),
		CtxTrain:     toInt(ga.MaximumContextLength),
		Layers:       toInt(ga.BlockCount),
		Embd:         toInt(ga.EmbeddingLength),
		HeadsKV:      toInt(ga.AttentionHeadCountKV),
		WeightsBytes: gf.TensorInfos.Bytes(),
	}
	if v, ok := gf.Header.MetadataKV.Get("general.architecture"); ok && v.ValueType == gguf.GGUFMetadataValueTypeString {
		info.Arch = v.ValueString()
	}
	info.KVBytesPerTok = KVBytesPerToken(ga)
	return info, nil
}

// kvBytesPerToken computes Info.KVBytesPerTok. A per-layer n_head_kv array
// (hybrid models give their recurrent layers 0) is summed layer by layer.
// KVBytesPerToken is the F16 K+V cache a context token costs for a model
// of this architecture: the sum over layers of head_count_kv × (key_length
// + value_length) × 2 bytes. Header-only readers (fit before fetch) use it
// too.
func KVBytesPerToken(ga gguf.GGUFArchitecture) uint64 {
	perHead := uint64(ga.AttentionKeyLength) + uint64(ga.AttentionValueLength)
	if n := len(ga.AttentionHeadCountKVs); n > 0 && uint64(n) == ga.BlockCount {
		var sum uint64
		for _, h := range ga.AttentionHeadCountKVs {
			sum = satAdd(sum, satMul(h, perHead))
		}
		return satMul(sum, kvCacheBytes)
	}
	return satMul(satMul(satMul(ga.BlockCount, ga.AttentionHeadCountKV), perHead), kvCacheBytes)
}

// quantName names the file type the way llama-quantize does ("Q4_K_M"). A
// header without a known general.file_type is named after its most common
// tensor type, and "" when even that is unknown.
func quantName(gf *gguf.GGUFFile, ft gguf.GGUFFileType) string {
	if s, ok := strings.CutPrefix(ft.String(), "MOSTLY_"); ok {
		return s
	}
	counts := map[gguf.GGMLType]int{}
	for _, ti := range gf.TensorInfos {
		counts[ti.Type]++
	}
	if s, ok := strings.CutPrefix(gguf.GetFileType(counts).String(), "MOSTLY_"); ok {
		return s
	}
	return ""
}

// maxDetail bounds what a parser message adds to an error: the parser quotes
// metadata keys, which a hostile file can make megabytes long.
const maxDetail = 256

func clip(s string) string {
	if len(s) <= maxDetail {
		return s
	}
	return s[:maxDetail] + "..."
}

// clipped is an error whose message is clipped to maxDetail.
type clipped struct{ err error }

func (c clipped) Error() string { return clip(c.err.Error()) }
func (c clipped) Unwrap() error { return c.err }

func toInt(u uint64) int {
	if u > math.MaxInt {
		return math.MaxInt
	}
	return int(u)
}

func satMul(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	if hi != 0 {
		return math.MaxUint64
	}
	return lo
}

func satAdd(a, b uint64) uint64 {
	s, carry := bits.Add64(a, b, 0)
	if carry != 0 {
		return math.MaxUint64
	}
	return s
}
