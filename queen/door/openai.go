package door

import (
	"bufio"
	"bytes"
	"context"
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
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/queen/fleet"
	"github.com/rbee-dev/rbee/queen/internal/reply"
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
// use: deployments, aliases, references, and file names of local models.
func (dr *Door) openaiModels(w http.ResponseWriter, r *http.Request) {
	out, err := dr.modelList(r.Context())
	if err != nil {
		writeOAIError(w, err)
		return
	}
	reply.JSON(w, http.StatusOK, map[string]any{"object": "list", "data": out})
}

// openaiModel serves GET /v1/models/{id}: the model as GET /v1/models
// lists it, or 404.
func (dr *Door) openaiModel(w http.ResponseWriter, r *http.Request) {
	out, err := dr.modelList(r.Context())
	if err != nil {
		writeOAIError(w, err)
		return
	}
	id := r.PathValue("id")
	for _, m := range out {
		if m.ID == id {
			reply.JSON(w, http.StatusOK, m)
			return
		}
	}
	writeOAI(w, http.StatusNotFound, "invalid_request_error", rbee.CodeModelNotFound, fmt.Sprintf("the model %q does not exist (GET /v1/models lists those this key may use)", id))
}

// modelList is what GET /v1/models lists, sorted by id.
func (dr *Door) modelList(ctx context.Context) ([]oaiModel, error) {
	snaps, _, err := dr.router.lookSnaps(ctx)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	out := []oaiModel{}
	deps, err := dr.router.deployments(ctx)
	if err != nil {
		return nil, err
	}
	for _, d := range deps {
		if allows(ctx, d.Name) {
			seen[d.Name] = true
			out = append(out, oaiModel{ID: d.Name, Object: "model", Created: d.Created.Unix(), OwnedBy: "rbee"})
		}
	}
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
	return out, nil
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

// doorHead is what the door reads of a request body.
type doorHead struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// openaiComplete serves POST /v1/completions, /v1/chat/completions,
// /v1/embeddings, /tokenize and /detokenize: the body goes to the worker as
// it came (see serve), its answer back with the model named as the client
// named it.
func (dr *Door) openaiComplete(endpoint string) http.HandlerFunc {
	embeddings := endpoint == "embeddings"
	return func(w http.ResponseWriter, r *http.Request) {
		body, ok := readBody(w, r, oaiErrors{})
		if !ok {
			return
		}
		var head doorHead
		if err := json.Unmarshal(body, &head); err != nil || head.Model == "" {
			writeOAI(w, http.StatusBadRequest, "invalid_request_error", "invalid_body", "the body must be a JSON object naming a model")
			return
		}
		api := &openaiAPI{model: head.Model}
		// Usage is asked of the worker for every stream (the metrics and
		// the request log count tokens); a client that did not ask for it
		// does not get it.
		if head.Stream && !embeddings && (head.StreamOptions == nil || !head.StreamOptions.IncludeUsage) {
			if b, ok := withUsage(body); ok {
				body, api.strip = b, true
			}
		}
		dr.serve(w, r, exchange{model: head.Model, endpoint: endpoint, body: body, embeddings: embeddings, api: api})
	}
}

// readBody reads a door request's body, bounded by maxOpenAIBody; ok false
// means the client was answered (413, 400).
func readBody(w http.ResponseWriter, r *http.Request, api errorWriter) (body []byte, ok bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxOpenAIBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			api.fail(w, http.StatusRequestEntityTooLarge, "invalid_request_error", "body_too_large", "", fmt.Sprintf("request body larger than %d bytes", maxOpenAIBody))
			return nil, false
		}
		api.fail(w, http.StatusBadRequest, "invalid_request_error", "invalid_body", "", err.Error())
		return nil, false
	}
	return body, true
}

// errorWriter writes the door's own errors in one of its APIs' shapes.
type errorWriter interface {
	// fail answers with an error; param names the request field at
	// fault ("" for none).
	fail(w http.ResponseWriter, status int, typ, code, param, msg string)
}

// dialect is one of the APIs the door speaks (OpenAI's, its Responses
// API, Ollama's): its errors, and the worker's answer passed back in it.
// One serves one request (it may keep the state of a stream).
type dialect interface {
	errorWriter
	// answer writes the worker's response, status line included, and
	// counts its tokens in use; complete reports whether all of it came.
	answer(w http.ResponseWriter, resp *http.Response, use *tokenUse) (complete bool)
	// broken ends an answer already under way that will not be completed.
	broken(w http.ResponseWriter, code, msg string)
}

// exchange is one request the door routes: the name the client asked for,
// the worker's endpoint and the body it gets, and the API the client
// speaks. refuse, when set, is the door's own 400 for a field the
// translation to the worker cannot carry: answered once the model is
// known, counted like the worker's refusals.
type exchange struct {
	model      string
	endpoint   string
	body       []byte
	embeddings bool
	api        dialect
	refuse     *fieldError
}

// fieldError refuses a request field (400, the field named).
type fieldError struct {
	param, code, msg string
}

// oaiErrors writes OpenAI's error shape.
type oaiErrors struct{}

func (oaiErrors) fail(w http.ResponseWriter, status int, typ, code, param, msg string) {
	writeOAIParam(w, status, typ, code, param, msg)
}

// openaiAPI passes the worker's OpenAI answer on with the model named as
// the client named it; with strip, the usage-only event the door asked
// for is dropped.
type openaiAPI struct {
	oaiErrors
	model string
	strip bool
}

func (a *openaiAPI) answer(w http.ResponseWriter, resp *http.Response, use *tokenUse) bool {
	copyHeaders(w, resp)
	w.WriteHeader(resp.StatusCode)
	return renameModel(w, resp, a.model, use, a.strip)
}

func (a *openaiAPI) broken(w http.ResponseWriter, code, msg string) { writeStreamError(w, code, msg) }

// copyHeaders passes on the worker's headers a client reads.
func copyHeaders(w http.ResponseWriter, resp *http.Response) {
	for _, h := range []string{"Content-Type", "Retry-After", "Cache-Control"} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
}

// serve routes one request: the model is found by name (a deployment, or
// a name in the fleet's catalogs, or a reference to download), the
// request goes to the ready replica with the fewest requests in flight
// per slot — waiting in the model's queue when every slot is taken; with
// no replica, one is placed exactly as `rbee infer` places a job —, and
// the worker's answer streams back as it comes, at the client's pace,
// through the exchange's API. A replica that fails before the first byte
// is dropped and the request tried on another. Every request is counted
// in the metrics and the request log.
func (dr *Door) serve(w http.ResponseWriter, r *http.Request, x exchange) {
	api := x.api
	ctx, done, ok := dr.begin(r)
	if !ok {
		writeShuttingDown(w, api)
		return
	}
	defer done()
	fb := &firstByte{ResponseWriter: w, start: time.Now(), status: http.StatusOK}
	w = fb
	// The queen's grace period ended while this request was served:
	// say so, in the shape the client reads at this point.
	defer func() {
		if !errors.Is(context.Cause(ctx), ErrShuttingDown) || fb.complete {
			return
		}
		if !fb.wrote {
			writeShuttingDown(w, api)
			return
		}
		api.broken(w, rbee.CodeQueenDown, "the queen is shutting down: the request was not completed; send it again once the queen is back")
	}()
	// A name no hive knows is counted as "unknown": clients must not
	// be able to grow the metrics without bound.
	label := "unknown"
	var replica string
	var use tokenUse
	defer func() {
		entry := requestEntry{Time: fb.start, Model: x.model, Replica: replica, TokensIn: use.PromptTokens, TokensOut: use.CompletionTokens,
			TTFTMS: float64(fb.first.Microseconds()) / 1e3, DurationMS: float64(time.Since(fb.start).Microseconds()) / 1e3, Status: fb.status}
		if k, ok := ctx.Value(keyCtx{}).(*APIKey); ok {
			entry.Key = k.ID
		}
		dr.reqlog.write(entry)
		dr.metrics.requests.WithLabelValues(label, strconv.Itoa(fb.status)).Inc()
		dr.metrics.duration.WithLabelValues(label).Observe(time.Since(fb.start).Seconds())
		if fb.status < 300 && fb.first > 0 {
			dr.metrics.ttft.WithLabelValues(label).Observe(fb.first.Seconds())
		}
		dr.metrics.promptTokens.WithLabelValues(label).Add(float64(use.PromptTokens))
		dr.metrics.genTokens.WithLabelValues(label).Add(float64(use.CompletionTokens))
		if replica != "" && use.CompletionTokens > 0 {
			dr.router.counted(replica, use.CompletionTokens)
		}
	}()
	if !allows(ctx, x.model) {
		api.fail(w, http.StatusForbidden, "invalid_request_error", "model_not_allowed", "", fmt.Sprintf("this API key may not use model %q", x.model))
		return
	}
	spec, fetch, err := dr.resolve(ctx, x.model, dr.cfg.Pull)
	if err != nil {
		writeErrorAs(w, api, err)
		return
	}
	if !fetch { // a name to fetch is no label until a hive holds it
		label = x.model
	}
	if f := x.refuse; f != nil {
		api.fail(w, http.StatusBadRequest, "invalid_request_error", f.code, f.param, f.msg)
		return
	}
	g := dr.router.group(spec, x.embeddings)
	if !fetch {
		dr.router.named(g, label) // its replicas' series carry the same label
	}
	dr.metrics.running.WithLabelValues(label).Inc()
	defer dr.metrics.running.WithLabelValues(label).Dec()
	waiting := func(d int) { dr.metrics.waiting.WithLabelValues(label).Add(float64(d)) }
	var lastErr error
	for try := 0; try < 3; try++ {
		rp, err := dr.router.acquire(ctx, g, waiting)
		if err != nil {
			if ctx.Err() == nil {
				writeQueueError(w, api, x.model, err, dr.router)
			}
			return
		}
		resp, err := dr.sendTo(ctx, rp, x.endpoint, x.body)
		if err != nil {
			// Nothing was written: another replica may answer.
			dr.log.Warn("replica failed before answering", "replica", rp.id(), "err", err)
			dr.router.release(g, rp, true)
			lastErr = err
			if ctx.Err() != nil {
				return
			}
			continue
		}
		replica = rp.id()
		w.Header().Set("Rbee-Replica", replica)
		complete := api.answer(w, resp, &use)
		resp.Body.Close()
		fb.complete = complete
		broken := !complete && ctx.Err() == nil
		if broken {
			dr.log.Warn("replica failed mid-answer", "replica", rp.id())
			api.broken(w, rbee.CodeWorkerCrashed, fmt.Sprintf("replica %s stopped mid-answer; the request was not completed", rp.describe()))
		}
		dr.router.release(g, rp, broken)
		return
	}
	writeErrorAs(w, api, (&rbee.Error{Code: rbee.CodeWorkerFailed, Message: fmt.Sprintf("no replica of %s answered: %v", x.model, lastErr), Err: lastErr}))
}

// sendTo passes the request to replica rp through its hive. An error
// means nothing came back: the worker or its hive is gone (a 404 or 502
// from the hive, or no connection).
func (dr *Door) sendTo(ctx context.Context, rp *replica, endpoint string, body []byte) (*http.Response, error) {
	hc, err := dr.fleet.Client(ctx, rp.hive)
	if err != nil {
		return nil, err
	}
	resp, err := hc.OpenAI(ctx, endpoint, map[string]string{hiveapi.WorkerHeader: rp.worker}, body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusBadGateway || resp.StatusCode == http.StatusConflict {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 32<<10))
		resp.Body.Close()
		if e, ok := rbee.ErrorFromBody(raw); ok {
			return nil, &e
		}
		return nil, fmt.Errorf("hive %s: status %d", rp.hive, resp.StatusCode)
	}
	return resp, nil
}

// ResolveName finds the model a client named: a deployment's, else by
// name in the fleet's catalogs (see modelByName).
func (dr *Door) ResolveName(ctx context.Context, name string) (*fleet.ModelSpec, error) {
	spec, _, err := dr.resolve(ctx, name, true)
	return spec, err
}

// resolve is ResolveName; fetch says the name is a reference no hive holds
// yet (the chosen hive will download it), which pull=false refuses.
func (dr *Door) resolve(ctx context.Context, name string, pull bool) (spec *fleet.ModelSpec, fetch bool, err error) {
	deps, err := dr.router.deployments(ctx)
	if err != nil {
		return nil, false, err
	}
	for _, d := range deps {
		if d.Name == name {
			name = d.Model
			break
		}
	}
	// The snapshots are at most two refreshes old, and taken again after
	// any catalog change made through the queen (a name pulled a moment
	// ago is found): an unknown name costs no hive a round trip.
	snaps, _, err := dr.router.lookSnaps(ctx)
	if err != nil {
		return nil, false, err
	}
	return dr.modelByName(ctx, name, snaps, pull)
}

// withUsage sets stream_options.include_usage in a request body.
func withUsage(body []byte) ([]byte, bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil {
		return nil, false
	}
	m["stream_options"] = json.RawMessage(`{"include_usage":true}`)
	b, err := json.Marshal(m)
	return b, err == nil
}

// writeQueueError answers a request the queue could not serve: 429 with
// Retry-After when it is full, 503 when no slot freed in time.
func writeQueueError(w http.ResponseWriter, api errorWriter, model string, err error, rt *router) {
	switch {
	case errors.Is(err, errQueueFull):
		w.Header().Set("Retry-After", "1")
		api.fail(w, http.StatusTooManyRequests, "rate_limit_error", "queue_full", "",
			fmt.Sprintf("model %s: every replica is busy and %d requests already wait; retry later", model, rt.depth))
	case errors.Is(err, errQueueTimeout):
		w.Header().Set("Retry-After", "5")
		api.fail(w, http.StatusServiceUnavailable, "server_error", "queue_timeout", "",
			fmt.Sprintf("model %s: no replica could take the request within %s", model, rt.wait))
	case errors.Is(err, context.Canceled):
		// the client left
	default:
		writeErrorAs(w, api, err)
	}
}

// writeStreamError ends a broken stream with an error event an OpenAI
// client reports.
func writeStreamError(w http.ResponseWriter, code, msg string) {
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": msg, "type": "server_error", "code": code}})
	_, _ = fmt.Fprintf(w, "data: %s\n\n", b)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

// tokenUse is the usage an answer reports.
type tokenUse struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

// renameModel copies the worker's answer with its "model" field set to the
// name the client asked for: every event of a stream, or the one JSON
// body. Other fields pass untouched; with strip, the usage-only event the
// door asked for is not passed on. It reports whether the answer was
// complete (a stream's [DONE] came).
func renameModel(w http.ResponseWriter, resp *http.Response, name string, use *tokenUse, strip bool) (complete bool) {
	quoted, _ := json.Marshal(name)
	newField := append([]byte(`"model":`), quoted...)
	var oldField []byte // the worker's "model":"…" as it writes it, once seen
	rename := func(b []byte) []byte {
		// The hot path: an event without usage is the worker's compact
		// JSON; its model field is replaced in place. (A string value
		// cannot hold `"model":` unescaped, so the first match is the key.)
		if oldField != nil && !bytes.Contains(b, []byte(`"usage":{`)) {
			if i := bytes.Index(b, oldField); i >= 0 {
				out := make([]byte, 0, len(b)-len(oldField)+len(newField))
				return append(append(append(out, b[:i]...), newField...), b[i+len(oldField):]...)
			}
		}
		var m map[string]json.RawMessage
		if json.Unmarshal(b, &m) != nil {
			return b
		}
		if u, ok := m["usage"]; ok && string(u) != "null" {
			_ = json.Unmarshal(u, use) // the request log's token counts
			if c, ok := m["choices"]; strip && ok && string(c) == "[]" {
				return nil
			}
		}
		old, ok := m["model"]
		if !ok {
			return b
		}
		if f := append([]byte(`"model":`), old...); bytes.Contains(b, f) {
			oldField = f
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
		return err == nil
	}
	f, _ := w.(http.Flusher)
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if data, ok := bytes.CutPrefix(line, []byte("data: {")); ok {
			body := rename(bytes.TrimRight(append([]byte("{"), data...), "\r\n"))
			if body == nil {
				_, _ = br.ReadBytes('\n') // the blank line after the dropped event
				continue
			}
			line = append(append([]byte("data: "), body...), '\n')
		} else if bytes.HasPrefix(line, []byte("data: [DONE]")) {
			complete = true
		}
		if len(line) > 0 {
			if _, werr := w.Write(line); werr != nil {
				return true // the client left: not the replica's fault
			}
			if f != nil && (len(bytes.TrimSpace(line)) == 0 || err != nil) {
				f.Flush()
			}
		}
		if err != nil {
			return complete
		}
	}
}

// modelByName finds the model a client named: an alias, a reference, a
// catalog id or a local model's file name in any candidate's catalog; else,
// with pull, a reference (hf:…, https://…) the chosen hive will download
// (fetch is then true).
func (dr *Door) modelByName(ctx context.Context, name string, snaps map[string]fleet.Snapshot, pull bool) (spec *fleet.ModelSpec, fetch bool, err error) {
	if m, ok := findModel(snaps, name); ok {
		spec := &fleet.ModelSpec{Raw: m.Ref, SHA256: m.SHA256, Size: m.Size, Need: m.EstimateBytes, CtxSize: m.CtxSize, Weights: m.WeightsBytes}
		if ref, err := download.ParseRef(m.Ref); err == nil {
			spec.Ref = &ref // another hive may fetch it (or copy it from this one)
		}
		if filepath.IsAbs(m.Ref) {
			if st, err := os.Stat(m.Ref); err == nil && st.Mode().IsRegular() {
				spec.Path = m.Ref // still on this machine: pushed to a hive that lacks it
			}
		}
		return spec, false, nil
	}
	var known []string
	for _, s := range snaps {
		for _, m := range s.Models {
			known = append(known, modelNames(m)...)
		}
	}
	sort.Strings(known)
	notFound := &rbee.Error{Code: rbee.CodeModelNotFound, Message: fmt.Sprintf("model %q is not on any hive (known: %s)", name, strings.Join(slices.Compact(known), ", "))}
	if strings.HasPrefix(name, "hf:") || strings.HasPrefix(name, "https://") {
		if !pull {
			// A client naming a URL must not make the queen reach out.
			return nil, false, notFound.WithHint("the front door does not download: the owner runs rbee model pull " + name + " --alias NAME, or starts the queen with --door-pull")
		}
		spec, err := dr.fleet.ParseModel(ctx, name)
		return spec, true, err
	}
	return nil, false, notFound.WithHint("rbee model pull REF --alias NAME gives a model a name clients can use")
}

// findModel finds a model by a name a client may use: an alias, a
// reference, a catalog id or a local model's file name.
func findModel(snaps map[string]fleet.Snapshot, name string) (hiveapi.Model, bool) {
	for _, s := range snaps {
		for _, m := range s.Models {
			if m.ID == name || m.Alias == name || m.Ref == name || (filepath.IsAbs(m.Ref) && filepath.Base(m.Ref) == name) {
				return m, true
			}
		}
	}
	return hiveapi.Model{}, false
}

// writeShuttingDown refuses a request the queen will not serve: it is
// stopping (503, Retry-After: a client retries against the next queen).
func writeShuttingDown(w http.ResponseWriter, api errorWriter) {
	w.Header().Set("Retry-After", "5")
	api.fail(w, http.StatusServiceUnavailable, "server_error", rbee.CodeQueenDown, "", "the queen is shutting down; retry in a few seconds")
}

// writeOAIError answers with OpenAI's error shape and the status that
// matches rbee's code.
func writeOAIError(w http.ResponseWriter, err error) { writeErrorAs(w, oaiErrors{}, err) }

// writeErrorAs answers with api's error shape and the status that matches
// rbee's code.
func writeErrorAs(w http.ResponseWriter, api errorWriter, err error) {
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
	case rbee.CodeDownload: // the model's server failed the queen: a gateway's error
		status = http.StatusBadGateway
	}
	msg := err.Error()
	if h := rbee.HintOf(err); h != "" {
		msg += " (" + h + ")"
	}
	api.fail(w, status, typ, code, "", msg)
}

func writeOAI(w http.ResponseWriter, status int, typ, code, msg string) {
	writeOAIParam(w, status, typ, code, "", msg)
}

// writeOAIParam writes OpenAI's error shape; param names the request field
// at fault ("" = null).
func writeOAIParam(w http.ResponseWriter, status int, typ, code, param, msg string) {
	var p any
	if param != "" {
		p = param
	}
	reply.JSON(w, status, map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": p, "code": code}})
}
