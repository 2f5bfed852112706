package download

import (
	"context"
	"fmt"
	"math"
	"math/bits"
	"net/url"

	gguf "github.com/gpustack/gguf-parser-go"
)

// headerBuffer is how much the GGUF parser fetches per Range request. The
// header of a typical model (metadata with a vocabulary, tensor infos) is a
// few hundred KiB to a few MiB; the parser's own default of 4 MiB would
// fetch a large share of a small file for nothing.
const headerBuffer = 256 << 10

// kvCacheBytes is the size of one cached K or V element: llama.cpp's default
// cache type is F16.
const kvCacheBytes = 2

// Estimate reads only the header of r's GGUF file, over HTTP with Range
// requests, and returns what modelfile.Info reports for a local file: the
// bytes of all tensors, the F16 KV cache one context token costs, and the
// training context. The body of the file (the weights) is not fetched, so a
// model that fits no device can be refused before its download.
//
// The header is read from the final URL Head found, and the token goes with
// it only when that is the hub's own host. ctx bounds the whole call.
func (h *Hub) Estimate(ctx context.Context, r Ref) (weightsBytes, kvBytesPerToken uint64, ctxTrain int, err error) {
	rem, err := h.Head(ctx, r)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("estimate: %w", err)
	}
	if !rem.AcceptRanges {
		return 0, 0, 0, fmt.Errorf("estimate %s: %s does not serve byte ranges, so its header cannot be read alone", r.Raw, redact(rem.URL))
	}
	opts := []gguf.GGUFReadOption{gguf.SkipLargeMetadata(), gguf.UseBufferSize(headerBuffer), gguf.SkipCache()}
	if u, perr := url.Parse(rem.URL); perr == nil && h.token() != "" && h.isHub(u) {
		opts = append(opts, gguf.UseBearerAuth(h.token()))
	}
	gf, err := parseRemote(ctx, rem.URL, opts)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("estimate %s: read GGUF header from %s: %w", r.Raw, redact(rem.URL), err)
	}
	ga := gf.Architecture()
	return gf.TensorInfos.Bytes(), kvBytesPerTok(ga), clampInt(ga.MaximumContextLength), nil
}

// parseRemote runs the parser under recover: it panics on some malformed
// headers, and a remote file is untrusted input.
func parseRemote(ctx context.Context, u string, opts []gguf.GGUFReadOption) (gf *gguf.GGUFFile, err error) {
	defer func() {
		if p := recover(); p != nil {
			gf, err = nil, fmt.Errorf("malformed header: %.200s", fmt.Sprint(p))
		}
	}()
	return gguf.ParseGGUFFileRemote(ctx, u, opts...)
}

// kvBytesPerTok is modelfile.Info.KVBytesPerTok computed from a parsed
// header: the sum over layers of n_head_kv * (key_length + value_length) *
// 2 bytes, with a per-layer n_head_kv array summed layer by layer.
func kvBytesPerTok(ga gguf.GGUFArchitecture) uint64 {
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

func clampInt(u uint64) int {
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
