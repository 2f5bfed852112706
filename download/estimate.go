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
	"time"

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
// The header is read from the final URL Head found, through the hub's own
// requests (each hop checked, the token only for the hub's own host), with
// the hub's retries and stall timeout. For the first part of a split model
// ("-00001-of-00003.gguf") the weights of all parts are summed, each read
// from its own header. ctx bounds the whole call.
func (h *Hub) Estimate(ctx context.Context, r Ref) (weightsBytes, kvBytesPerToken uint64, ctxTrain int, err error) {
	opt := h.options()
	r, err = h.resolve(ctx, r, opt, h.onRetry())
	if err != nil {
		return 0, 0, 0, fmt.Errorf("estimate: %w", err)
	}
	gf, err := h.header(ctx, r, opt)
	if err != nil {
		return 0, 0, 0, err
	}
	ga := gf.Architecture()
	weightsBytes = gf.TensorInfos.Bytes()
	for _, part := range splitSiblings(r) {
		pf, err := h.header(ctx, part, opt)
		if err != nil {
			return 0, 0, 0, err
		}
		weightsBytes = satAdd(weightsBytes, pf.TensorInfos.Bytes())
	}
	return weightsBytes, modelfile.KVBytesPerToken(ga), clampInt(ga.MaximumContextLength), nil
}

// header parses the GGUF header of r's file.
func (h *Hub) header(ctx context.Context, r Ref, opt Options) (*gguf.GGUFFile, error) {
	rem, err := h.head(ctx, r, opt, h.onRetry())
	if err != nil {
		return nil, fmt.Errorf("estimate: %w", err)
	}
	var gf *gguf.GGUFFile
	err = retry(ctx, opt, h.onRetry(), func(ctx context.Context) (err error) {
		gf, err = h.headerPrefix(ctx, r, rem, opt.StallTimeout)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("estimate %s: read GGUF header from %s: %w", r.Raw, redact(rem.URL), err)
	}
	return gf, nil
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

// headerPrefix reads a GGUF header from the start of rem's file: the
// first bytes go into a sparse temporary file of the file's full size (the
// parser checks the size), and the read grows (headerBuffer, ×4, up to
// maxHeaderPrefix) until the header parses. A server with byte ranges is
// asked for each step's bytes; from one without (Python's http.server,
// many mirrors) the start of a plain download is read and the connection
// dropped. Either way the weights are not fetched. The reads go through do
// (each hop checked and authorized on its own, never the parser's own
// client, which would follow any redirect with the token) and are cut when
// nothing arrives for stall.
func (h *Hub) headerPrefix(ctx context.Context, r Ref, rem Remote, stall time.Duration) (*gguf.GGUFFile, error) {
	wctx, watch, stop := watchStall(ctx, stall)
	defer stop()
	f, err := os.CreateTemp("", "rbee-header-*.gguf")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	ranges, total := rem.AcceptRanges, rem.Size
	var body io.ReadCloser // the plain download, once one is open
	defer func() {
		if body != nil {
			body.Close()
		}
	}()
	var read int64
	for limit := int64(headerBuffer); ; limit = min(limit*4, maxHeaderPrefix) {
		if body == nil {
			hdr := http.Header{}
			if ranges {
				hdr.Set("Range", fmt.Sprintf("bytes=%d-%d", read, limit-1))
			}
			resp, final, err := h.do(wctx, http.MethodGet, rem.URL, hdr, nil)
			if err != nil {
				return nil, watch.failed(ctx, err, -1)
			}
			watch.kick()
			switch {
			case resp.StatusCode == http.StatusPartialContent && ranges:
				if start, ok := contentRangeStart(resp.Header.Get("Content-Range")); !ok || start != read {
					drain(resp)
					return nil, fmt.Errorf("asked for bytes from %d, got Content-Range %q", read, resp.Header.Get("Content-Range"))
				}
			case resp.StatusCode == http.StatusOK: // the whole file, from its start
				ranges, read = false, 0
				if total < 0 {
					total = resp.ContentLength
				}
			default:
				err := h.statusError(r, final, resp)
				drain(resp)
				return nil, err
			}
			body = resp.Body
		}
		if _, err := f.Seek(read, io.SeekStart); err != nil {
			return nil, err
		}
		n, cerr := io.CopyN(f, watch.reader(body), limit-read)
		read += n
		eof := errors.Is(cerr, io.EOF)
		if cerr != nil && !eof {
			return nil, watch.failed(ctx, cerr, read)
		}
		if ranges { // one request per step
			body.Close()
			body = nil
			eof = eof || total >= 0 && read >= total
		}
		if err := f.Truncate(max(total, read)); err != nil {
			return nil, err
		}
		gf, perr := parseRemoteFile(f.Name())
		if perr == nil {
			return gf, nil
		}
		if eof || read >= maxHeaderPrefix {
			// All there is, or more than a header can be: the server's
			// file is no GGUF model (the same fault, and code, as when a
			// download is found to be none).
			return nil, fmt.Errorf("%w: %w", modelfile.ErrNotGGUF, perr)
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
