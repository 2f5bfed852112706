package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/modelfile"
)

// ModelSpec is a job's model, parsed once: a local file on the queen's
// machine (pushed to remote hives) or a reference the hive downloads. Need
// is the memory the worker will take, the figure every hive is planned on.
type ModelSpec struct {
	Raw      string        // as the user gave it
	Path     string        // a local file: its absolute path
	Ref      *download.Ref // a reference: downloaded by the hive
	Resolved string        // an hf ref whose file the queen resolved
	SHA256   string        // local files: identifies the model across hives
	Size     int64
	Need     uint64 // weights + KV cache + overhead at the worker's context
	CtxSize  int
	Weights  uint64
	Layers   int  // block count, when the header was read here (a split's shares)
	Checked  bool // Need came from the file's header (not yet from a hive)
}

// ParseModel parses the job's model reference: the only place it is
// parsed. Local files are read here (header and sha256, cached); a
// reference's header is read later, only if no hive has the model yet.
func (f *Fleet) ParseModel(ctx context.Context, raw string) (*ModelSpec, error) {
	spec := &ModelSpec{Raw: raw}
	ref, err := download.ParseRef(raw)
	if err == nil {
		spec.Ref = &ref
		return spec, nil
	}
	if !errors.Is(err, download.ErrNotRef) {
		return nil, rbee.Errorf(rbee.CodeBadRequest, "model %s: %w", raw, err)
	}
	if !filepath.IsAbs(raw) {
		return nil, rbee.Errorf(rbee.CodeBadRequest, "model %q: give an absolute path, https://…/file.gguf or hf:ORG/REPO[/FILE]", raw)
	}
	st, err := os.Stat(raw)
	if err != nil {
		return nil, rbee.Errorf(rbee.CodeModelNotFound, "model %s: %w", raw, err)
	}
	if !st.Mode().IsRegular() {
		return nil, rbee.Errorf(rbee.CodeModelNotFound, "model %s is not a regular file", raw)
	}
	info, err := modelfile.Inspect(ctx, raw, modelfile.Options{})
	if err != nil {
		return nil, rbee.Errorf(rbee.CodeNotGGUF, "model %s: %w", filepath.Base(raw), err)
	}
	sha, err := f.shas.sum(ctx, raw)
	if err != nil {
		return nil, rbee.Errorf(rbee.CodeModelNotFound, "model %s: %w", raw, err)
	}
	spec.Path, spec.SHA256, spec.Size = raw, sha, st.Size()
	spec.CtxSize = ctxFor(info.CtxTrain)
	spec.Weights, spec.Need, spec.Checked = info.WeightsBytes, info.Estimate(spec.CtxSize), true
	spec.Layers = info.Layers
	return spec, nil
}

// Estimate fills Need for a reference: from a hive that already holds
// the model (no network), else from the file's GGUF header over HTTP (a
// few hundred KiB, not the weights).
func (f *Fleet) Estimate(ctx context.Context, spec *ModelSpec, snaps map[string]Snapshot) error {
	if spec.Need > 0 || spec.Ref == nil {
		return nil
	}
	for _, s := range snaps {
		if m, ok := s.Find(spec); ok && m.EstimateBytes > 0 {
			spec.Need, spec.CtxSize, spec.Weights, spec.SHA256 = m.EstimateBytes, m.CtxSize, m.WeightsBytes, m.SHA256
			return nil
		}
	}
	hub := f.hub()
	ref := *spec.Ref
	if ref.Kind == download.KindHF && ref.File == "" {
		r, err := hub.Resolve(ctx, ref)
		if err != nil {
			return refError(err)
		}
		ref = r
	}
	weights, kv, ctxTrain, err := hub.Estimate(ctx, ref)
	if err != nil {
		return refError(err)
	}
	spec.CtxSize = ctxFor(ctxTrain)
	spec.Weights = weights
	spec.Need = modelfile.Info{WeightsBytes: weights, KVBytesPerTok: kv, CtxTrain: ctxTrain}.Estimate(spec.CtxSize)
	spec.Checked = true
	return nil
}

func (f *Fleet) hub() *download.Hub {
	return &download.Hub{Endpoint: os.Getenv("HF_ENDPOINT"), Token: os.Getenv("HF_TOKEN")}
}

// ctxFor is the context a worker gets for a model (see agent.DefaultCtxSize).
func ctxFor(ctxTrain int) int {
	if ctxTrain > 0 && ctxTrain < 4096 {
		return ctxTrain
	}
	return 4096
}

func refError(err error) error {
	switch {
	case errors.Is(err, download.ErrNotFound):
		return rbee.Errorf(rbee.CodeModelNotFound, "%w", err)
	case errors.Is(err, download.ErrAuth):
		return rbee.Errorf(rbee.CodeModelNotFound, "%w", err).WithHint("set HF_TOKEN to a token with read access")
	case errors.Is(err, download.ErrNotRef):
		return rbee.Errorf(rbee.CodeBadRequest, "%w", err)
	case errors.Is(err, download.ErrInsecure): // the endpoint's setting, not the server
		return rbee.Errorf(rbee.CodeBadRequest, "%w", err)
	case errors.Is(err, modelfile.ErrNotGGUF):
		return rbee.Errorf(rbee.CodeNotGGUF, "%w", err)
	}
	return rbee.Errorf(rbee.CodeDownload, "%w", err) // the server: unreachable, failing, stalled
}

// shaCache remembers local files' sha256 per (path, size, mtime), so a
// warm job does not read gigabytes again.
type shaCache struct {
	mu   sync.Mutex
	sums map[string]string
}

func (c *shaCache) sum(ctx context.Context, p string) (string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	key := fmt.Sprintf("%s|%d|%d", p, st.Size(), st.ModTime().UnixNano())
	c.mu.Lock()
	sum, ok := c.sums[key]
	c.mu.Unlock()
	if ok {
		return sum, nil
	}
	sum, err = modelfile.Hash(ctx, p)
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	if c.sums == nil {
		c.sums = map[string]string{}
	}
	c.sums[key] = sum
	c.mu.Unlock()
	return sum, nil
}
