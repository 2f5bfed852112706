package queen

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/hiveapi"
)

// maxOpenAIBody bounds a request body at the front door (413 beyond).
const maxOpenAIBody = 8 << 20

// oaiModel is one entry of GET /v1/models.
type oaiModel struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// openaiModels lists every model the fleet can serve by the names clients
// use: aliases, references, and file names of local models.
func (q *Queen) openaiModels(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	hives, err := q.candidates(ctx, "", quietEvents{})
	if err != nil {
		writeOAIError(w, err)
		return
	}
	snaps, err := q.plan.snapshots(ctx, hives, quietEvents{})
	if err != nil {
		writeOAIError(w, err)
		return
	}
	seen := map[string]bool{}
	out := []oaiModel{}
	for _, s := range snaps {
		for _, m := range s.Models {
			for _, n := range modelNames(m) {
				if !seen[n] && allows(ctx, n) {
					seen[n] = true
					out = append(out, oaiModel{ID: n, Object: "model", Created: m.Added.Unix(), OwnedBy: "rbee"})
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": out})
}

// modelNames are the names a client may ask for a model by.
func modelNames(m hiveapi.Model) []string {
	var names []string
	if m.Alias != "" {
		names = append(names, m.Alias)
	}
	if filepath.IsAbs(m.Ref) {
		names = append(names, filepath.Base(m.Ref))
	} else if m.Ref != "" {
		names = append(names, m.Ref)
	}
	return names
}

// openaiComplete serves POST /v1/completions and /v1/chat/completions: the
// model is found by name in the fleet's catalogs (or taken as a reference
// to download), the request is placed exactly as `rbee infer` places a job
// (a warm worker wins, else the plan and the VRAM checker), and the
// worker's answer streams back as it comes.
func (q *Queen) openaiComplete(endpoint string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxOpenAIBody))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				writeOAI(w, http.StatusRequestEntityTooLarge, "invalid_request_error", "body_too_large", fmt.Sprintf("request body larger than %d bytes", maxOpenAIBody))
				return
			}
			writeOAI(w, http.StatusBadRequest, "invalid_request_error", "invalid_body", err.Error())
			return
		}
		var head struct {
			Model string `json:"model"`
		}
		if err := json.Unmarshal(body, &head); err != nil || head.Model == "" {
			writeOAI(w, http.StatusBadRequest, "invalid_request_error", "invalid_body", "the body must be a JSON object naming a model")
			return
		}
		ctx := r.Context()
		fb := &firstByte{ResponseWriter: w, start: time.Now(), status: http.StatusOK}
		w = fb
		// A name no hive knows is counted as "unknown": clients must not
		// be able to grow the metrics without bound.
		label := "unknown"
		var replica string
		var use tokenUse
		defer func() {
			entry := requestEntry{Time: fb.start, Model: head.Model, Replica: replica, TokensIn: use.PromptTokens, TokensOut: use.CompletionTokens,
				TTFTMS: float64(fb.first.Microseconds()) / 1e3, DurationMS: float64(time.Since(fb.start).Microseconds()) / 1e3, Status: fb.status}
			if k, ok := ctx.Value(keyCtx{}).(*APIKey); ok {
				entry.Key = k.ID
			}
			q.reqlog.write(entry)
			q.metrics.requests.WithLabelValues(label, strconv.Itoa(fb.status)).Inc()
			q.metrics.duration.WithLabelValues(label).Observe(time.Since(fb.start).Seconds())
			if fb.status < 300 && fb.first > 0 {
				q.metrics.ttft.WithLabelValues(label).Observe(fb.first.Seconds())
			}
		}()
		if !allows(ctx, head.Model) {
			writeOAI(w, http.StatusForbidden, "invalid_request_error", "model_not_allowed", fmt.Sprintf("this API key may not use model %q", head.Model))
			return
		}
		hives, err := q.candidates(ctx, "", quietEvents{})
		if err != nil {
			writeOAIError(w, err)
			return
		}
		snaps, err := q.plan.snapshots(ctx, hives, quietEvents{})
		if err != nil {
			writeOAIError(w, err)
			return
		}
		spec, err := q.modelByName(ctx, head.Model, snaps)
		if err != nil {
			writeOAIError(w, err)
			return
		}
		label = head.Model
		q.metrics.running.WithLabelValues(label).Inc()
		defer q.metrics.running.WithLabelValues(label).Dec()
		var b [6]byte
		_, _ = rand.Read(b[:])
		id := "req-" + hex.EncodeToString(b[:])
		pl, err := q.plan.place(ctx, placeJob{ID: id, Spec: spec, Fleet: len(hives) > 1, Snaps: snaps}, hives, quietEvents{})
		if err != nil {
			writeOAIError(w, err)
			return
		}
		lh, ok := pl.hive.(*liveHive)
		if !ok {
			writeOAIError(w, rbee.Errorf(rbee.CodeInternal, "hive %s cannot take OpenAI requests", pl.hive.Name()))
			return
		}
		hc, err := lh.conn(ctx)
		if err != nil {
			writeOAIError(w, err)
			return
		}
		resp, err := hc.client.OpenAI(ctx, endpoint, map[string]string{hiveapi.WorkerHeader: pl.worker,
			hiveapi.ModelHeader: pl.model.ID, hiveapi.DeviceHeader: pl.device, hiveapi.ReservationHeader: pl.reservation}, body)
		if err != nil {
			writeOAIError(w, hiveError(err))
			return
		}
		defer resp.Body.Close()
		for _, h := range []string{"Content-Type", "Retry-After", "Cache-Control"} {
			if v := resp.Header.Get(h); v != "" {
				w.Header().Set(h, v)
			}
		}
		replica = pl.hive.Name() + "/" + resp.Header.Get(hiveapi.WorkerHeader)
		w.WriteHeader(resp.StatusCode)
		renameModel(w, resp, head.Model, &use)
	}
}

// tokenUse is the usage an answer reports.
type tokenUse struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

// renameModel copies the worker's answer with its "model" field set to the
// name the client asked for: every event of a stream, or the one JSON
// body. Other fields pass untouched.
func renameModel(w http.ResponseWriter, resp *http.Response, name string, use *tokenUse) {
	quoted, _ := json.Marshal(name)
	rename := func(b []byte) []byte {
		var m map[string]json.RawMessage
		if json.Unmarshal(b, &m) != nil {
			return b
		}
		if u, ok := m["usage"]; ok {
			_ = json.Unmarshal(u, use) // the request log's token counts
		}
		if _, ok := m["model"]; !ok {
			return b
		}
		m["model"] = quoted
		out, err := json.Marshal(m)
		if err != nil {
			return b
		}
		return out
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		if err == nil {
			b = rename(b)
		}
		_, _ = w.Write(b)
		return
	}
	f, _ := w.(http.Flusher)
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if data, ok := bytes.CutPrefix(line, []byte("data: {")); ok {
			body := bytes.TrimRight(append([]byte("{"), data...), "\r\n")
			line = append(append([]byte("data: "), rename(body)...), '\n')
		}
		if len(line) > 0 {
			if _, werr := w.Write(line); werr != nil {
				return
			}
			if f != nil && (len(bytes.TrimSpace(line)) == 0 || err != nil) {
				f.Flush()
			}
		}
		if err != nil {
			return
		}
	}
}

// modelByName finds the model a client named: an alias, a reference, a
// catalog id or a local model's file name in any candidate's catalog; else
// a reference (hf:…, https://…) the chosen hive will download.
func (q *Queen) modelByName(ctx context.Context, name string, snaps map[string]Snapshot) (*ModelSpec, error) {
	var known []string
	for _, s := range snaps {
		for _, m := range s.Models {
			names := modelNames(m)
			known = append(known, names...)
			if m.ID == name || m.Alias == name || m.Ref == name || (filepath.IsAbs(m.Ref) && filepath.Base(m.Ref) == name) {
				spec := &ModelSpec{Raw: m.Ref, SHA256: m.SHA256, Size: m.Size, Need: m.EstimateBytes, CtxSize: m.CtxSize, Weights: m.WeightsBytes}
				if filepath.IsAbs(m.Ref) {
					if st, err := os.Stat(m.Ref); err == nil && st.Mode().IsRegular() {
						spec.Path = m.Ref // still on this machine: pushed to a hive that lacks it
					}
				}
				return spec, nil
			}
		}
	}
	if strings.HasPrefix(name, "hf:") || strings.HasPrefix(name, "https://") {
		return q.parseModel(ctx, name)
	}
	sort.Strings(known)
	return nil, (&rbee.Error{Code: rbee.CodeModelNotFound, Message: fmt.Sprintf("model %q is not on any hive (known: %s)", name, strings.Join(slices.Compact(known), ", "))}).
		WithHint("rbee model pull REF --alias NAME gives a model a name clients can use")
}

// writeOAIError answers with OpenAI's error shape and the status that
// matches rbee's code.
func writeOAIError(w http.ResponseWriter, err error) {
	code := rbee.CodeOf(err)
	status, typ := http.StatusInternalServerError, "server_error"
	switch code {
	case rbee.CodeBadRequest, rbee.CodeNotGGUF:
		status, typ = http.StatusBadRequest, "invalid_request_error"
	case rbee.CodeModelNotFound:
		status, typ = http.StatusNotFound, "invalid_request_error"
	case rbee.CodeNoRoom, rbee.CodeHiveDown, rbee.CodeWorkerFailed, rbee.CodeQueenDown:
		status = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "5")
	}
	msg := err.Error()
	if h := rbee.HintOf(err); h != "" {
		msg += " (" + h + ")"
	}
	writeOAI(w, status, typ, code, msg)
}

func writeOAI(w http.ResponseWriter, status int, typ, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": code}})
}
