package download

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net/http"
	"net/url"
	"os"
	"strconv"

	gguf "github.com/gpustack/gguf-parser-go"

	"github.com/rbee-dev/rbee/modelfile"
)

// headerBuffer is how much the GGUF parser fetches per Range request. The
// header of a typical model (metadata with a vocabulary, tensor infos) is a
// few hundred KiB to a few MiB; the parser's own default of 4 MiB would
// fetch a large share of a small file for nothing.
const headerBuffer = 256 << 10

// Estimate reads only the header of r's GGUF file, over HTTP with Range
// requests, and returns what modelfile.Info reports for a local file: the
// bytes of all tensors, the F16 KV cache one context token costs, and the
// training context. The body of the file (the weights) is not fetched, so a
// model that fits no device can be refused before its download.
//
// The header is read from the final URL Head found, with gguf-parser-go's
// own HTTP client (Hub.Client serves only the Head), and the token goes with
// it only when that URL is on the hub's own host. For the first part of a
// split model ("-00001-of-00003.gguf") the weights of all parts are summed,
// each read from its own header. ctx bounds the whole call.
func (h *Hub) Estimate(ctx context.Context, r Ref) (weightsBytes, kvBytesPerToken uint64, ctxTrain int, err error) {
	r, err = h.Resolve(ctx, r)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("estimate: %w", err)
	}
	gf, allParts, err := h.header(ctx, r)
	if err != nil {
		return 0, 0, 0, err
	}
	ga := gf.Architecture()
	weightsBytes = gf.TensorInfos.Bytes()
	var siblings []Ref
	if !allParts {
		siblings = splitSiblings(r)
	}
	for _, part := range siblings {
		pf, _, err := h.header(ctx, part)
		if err != nil {
			return 0, 0, 0, err
		}
		weightsBytes = satAdd(weightsBytes, pf.TensorInfos.Bytes())
	}
	return weightsBytes, modelfile.KVBytesPerToken(ga), clampInt(ga.MaximumContextLength), nil
}

// header parses the GGUF header of r's file. When the final URL itself
// names a part of a split model, the parser reads all parts (allParts);
// behind the hub's redirect to a content-addressed CDN URL it cannot.
func (h *Hub) header(ctx context.Context, r Ref) (gf *gguf.GGUFFile, allParts bool, err error) {
	rem, err := h.Head(ctx, r)
	if err != nil {
		return nil, false, fmt.Errorf("estimate: %w", err)
	}
	if !rem.AcceptRanges {
		// A simple mirror (Python's http.server, many others): read the
		// header from the start of a plain download and drop it there.
		gf, err := h.headerFromStart(ctx, rem)
		if err != nil {
			return nil, false, fmt.Errorf("estimate %s: read GGUF header from the start of %s: %w", r.Raw, redact(rem.URL), err)
		}
		return gf, false, nil
	}
	opts := []gguf.GGUFReadOption{gguf.SkipLargeMetadata(), gguf.UseBufferSize(headerBuffer), gguf.SkipCache()}
	if u, perr := url.Parse(rem.URL); perr == nil && h.token() != "" && h.isHub(u) {
		opts = append(opts, gguf.UseBearerAuth(h.token()))
	}
	gf, err = parseRemote(ctx, rem.URL, opts)
	if err != nil {
		return nil, false, fmt.Errorf("estimate %s: read GGUF header from %s: %w", r.Raw, redact(rem.URL), err)
	}
	return gf, gguf.CompleteShardGGUFFilename(rem.URL) != nil, nil
}

// splitSiblings returns the refs of parts 2..N when r names part 1 of N of a
// split model, else nil.
func splitSiblings(r Ref) []Ref {
	name := r.File
	if r.Kind == KindURL {
		u, err := url.Parse(r.URL)
		if err != nil {
			return nil
		}
		name = u.Path
	}
	m := splitPart.FindStringSubmatchIndex(name)
	if m == nil || name[m[2]:m[3]] != "00001" {
		return nil
	}
	n, err := strconv.Atoi(name[m[4]:m[5]])
	if err != nil || n < 2 || n > 9999 {
		return nil
	}
	var parts []Ref
	for i := 2; i <= n; i++ {
		p := r
		sibling := name[:m[2]] + fmt.Sprintf("%05d", i) + name[m[3]:]
		p.Raw = fmt.Sprintf("%s (part %d of %d)", r.Raw, i, n)
		if r.Kind == KindURL {
			u, _ := url.Parse(r.URL)
			u.Path, u.RawPath = sibling, ""
			p.URL = u.String()
		} else {
			p.File = sibling
			p.URL = ""
		}
		parts = append(parts, p)
	}
	return parts
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

func clampInt(u uint64) int {
	if u > math.MaxInt {
		return math.MaxInt
	}
	return int(u)
}

func satAdd(a, b uint64) uint64 {
	s, carry := bits.Add64(a, b, 0)
	if carry != 0 {
		return math.MaxUint64
	}
	return s
}

// maxHeaderPrefix bounds how much of a file without byte ranges is read
// for its header: far more than any real header (a large vocabulary is a
// few MiB), far less than the weights.
const maxHeaderPrefix = 64 << 20

// headerFromStart reads a GGUF header from the start of a plain GET of a
// server that ignores byte ranges: the first bytes go into a sparse
// temporary file of the file's full size (the parser checks the size), and
// the read grows (1 MiB, ×4, up to maxHeaderPrefix) until the header
// parses. The connection is then dropped: the weights are not fetched.
func (h *Hub) headerFromStart(ctx context.Context, rem Remote) (*gguf.GGUFFile, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", rem.URL, nil)
	if err != nil {
		return nil, err
	}
	if u, perr := url.Parse(rem.URL); perr == nil && h.token() != "" && h.isHub(u) {
		req.Header.Set("Authorization", "Bearer "+h.token())
	}
	resp, err := h.client().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	size := rem.Size
	if size < 0 {
		size = resp.ContentLength
	}
	f, err := os.CreateTemp("", "rbee-header-*.gguf")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	var read int64
	for limit := int64(1 << 20); ; limit *= 4 {
		n, cerr := io.CopyN(f, resp.Body, limit-read)
		read += n
		eof := errors.Is(cerr, io.EOF)
		if cerr != nil && !eof {
			return nil, cerr
		}
		if size > read {
			if err := f.Truncate(size); err != nil {
				return nil, err
			}
		}
		gf, perr := parseRemoteFile(f.Name())
		if perr == nil {
			return gf, nil
		}
		if eof || read >= maxHeaderPrefix {
			return nil, perr
		}
		if _, err := f.Seek(read, io.SeekStart); err != nil {
			return nil, err
		}
	}
}

// parseRemoteFile parses a local copy of (the start of) a remote file,
// under recover like parseRemote: its bytes are untrusted.
func parseRemoteFile(p string) (gf *gguf.GGUFFile, err error) {
	defer func() {
		if r := recover(); r != nil {
			gf, err = nil, fmt.Errorf("malformed GGUF header: %v", r)
		}
	}()
	return gguf.ParseGGUFFile(p, gguf.SkipLargeMetadata(), gguf.SkipCache())
}
