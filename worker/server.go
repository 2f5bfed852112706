package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rbee-dev/rbee/llm"
	"github.com/rbee-dev/rbee/modelfile"
	"github.com/rbee-dev/rbee/sse"
)

// MaxBodyBytes bounds a request body.
const MaxBodyBytes = 8 << 20

// States reported by /health.
const (
	StateLoading = "loading"
	StateReady   = "ready"
	StateFailed  = "failed"
)

// Config configures a Server.
type Config struct {
	ModelPath     string
	ModelName     string // name in responses; default: the file name without .gguf
	EngineDir     string
	EngineVersion string
	Device        string
	CtxSize       int // tokens per slot; 0 = sized to the device (modelfile.Size)
	Threads       int
	Slots         int  // parallel generations sharing one context; default 1
	Embeddings    bool // serve /v1/embeddings instead of completions
	Queue         int  // requests that may wait for a slot; beyond, 503
	// RPC lists llama.cpp RPC servers (HOST:PORT) the model's layers are
	// split over beside Device; Split is each device's share, Device
	// first (nil: by free memory). See llm.ModelOptions.
	RPC   []string
	Split []float64
	ID    string
	Log   *slog.Logger
}

// Server serves one model. Create it with New, serve its handler at once
// (health answers 503 while loading), then call Load.
type Server struct {
	cfg     Config
	log     *slog.Logger
	started time.Time

	mu      sync.Mutex
	state   string
	loadErr error
	model   *llm.Model
	engine  *llm.Engine

	// cut ends running generations (shutdown); active counts handlers
	// that use the model so Close can wait for them.
	cutCtx context.Context
	cut    context.CancelFunc
	active sync.WaitGroup

	admitted  atomic.Int64 // running + queued
	running   atomic.Int64
	served    atomic.Int64
	cancelled atomic.Int64
	rejected  atomic.Int64
	lastGen   atomic.Int64 // completion tokens of the last finished request
}

// New returns a server in the loading state.
func New(cfg Config) *Server {
	if cfg.Slots < 0 {
		cfg.Slots = 0
	}
	if cfg.Queue < 0 {
		cfg.Queue = 0
	}
	if cfg.ModelName == "" {
		cfg.ModelName = strings.TrimSuffix(filepath.Base(cfg.ModelPath), ".gguf")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{cfg: cfg, log: cfg.Log, started: time.Now(), state: StateLoading, cutCtx: ctx, cut: cancel}
}

// Load loads the engine and the model; the server is ready when it returns
// nil. ctx bounds reaching the RPC servers; llama.cpp's load itself cannot
// be interrupted.
func (s *Server) Load(ctx context.Context) error {
	m, err := s.load(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.state, s.loadErr = StateFailed, err
		return err
	}
	s.state, s.model = StateReady, m
	s.cfg.Slots = m.Slots()
	return nil
}

func (s *Server) load(ctx context.Context) (*llm.Model, error) {
	eng, err := llm.Load(s.cfg.EngineDir)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.engine = eng
	s.mu.Unlock()
	opt := llm.ModelOptions{
		Device: s.cfg.Device, CtxSize: s.cfg.CtxSize, Threads: s.cfg.Threads, Slots: s.cfg.Slots,
		Embeddings: s.cfg.Embeddings, RPC: s.cfg.RPC, Split: s.cfg.Split,
	}
	if opt.Slots == 0 || opt.CtxSize == 0 {
		dev, err := eng.Device(s.cfg.Device)
		if err != nil {
			return nil, fmt.Errorf("load model: %w", err)
		}
		// The header tells the KV cache per token; a file whose header this
		// reader cannot take still loads, with llama.cpp's own defaults.
		if info, err := modelfile.Inspect(context.Background(), s.cfg.ModelPath, modelfile.Options{}); err == nil {
			sz := info.Sizing(dev.FreeBytes, dev.Type != "cpu", opt.Slots, opt.CtxSize)
			opt.Slots, opt.CtxSize = sz.Slots, sz.CtxPerSlot
			s.log.Info("sized", "slots", sz.Slots, "ctx_per_slot", sz.CtxPerSlot, "estimate_bytes", sz.Bytes, "device_free_bytes", dev.FreeBytes)
		}
	}
	m, err := eng.LoadModel(ctx, s.cfg.ModelPath, opt)
	if err != nil {
		return nil, err
	}
	if len(s.cfg.RPC) > 0 {
		for _, p := range m.Placement {
			s.log.Info("split", "device", p.Device, "endpoint", p.Endpoint, "layers", p.Layers, "output", p.Output)
		}
	}
	return m, nil
}

// WatchRPC returns when ctx ends (nil) or when one of the RPC servers the
// model is split over is lost (llm.ErrRPCLost): the worker must then end,
// since llama.cpp cannot go on without it (it aborts at the next token).
// It waits for ctx alone when the model is not split.
func (s *Server) WatchRPC(ctx context.Context) error {
	s.mu.Lock()
	eng := s.engine
	s.mu.Unlock()
	if eng == nil || len(s.cfg.RPC) == 0 {
		<-ctx.Done()
		return nil
	}
	return eng.WatchRPC(ctx, time.Second)
}

// Model returns the loaded model, or nil before Load succeeds.
func (s *Server) Model() *llm.Model {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.model
}

// Cut ends every running and queued generation: streams get an error event
// and [DONE]. Call it when the shutdown grace period is over.
func (s *Server) Cut() { s.cut() }

// Close cuts what is running, waits for the handlers, and frees the model.
func (s *Server) Close() {
	s.cut()
	s.active.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.model != nil {
		s.model.Close()
		s.model = nil
	}
}

// Handler returns the HTTP API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", s.health)
	mux.HandleFunc("GET /v1/models", s.models)
	mux.HandleFunc("POST /v1/completions", s.completions)
	mux.HandleFunc("POST /v1/chat/completions", s.chat)
	mux.HandleFunc("POST /v1/embeddings", s.embeddings)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		for _, p := range []string{"/health", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings"} {
			if r.URL.Path == p {
				writeError(w, &apiError{Status: http.StatusMethodNotAllowed, Type: "invalid_request_error", Code: "method_not_allowed",
					Message: fmt.Sprintf("%s does not accept %s", p, r.Method)})
				return
			}
		}
		writeError(w, &apiError{Status: http.StatusNotFound, Type: "invalid_request_error", Code: "not_found",
			Message: fmt.Sprintf("no route %s %s; this worker serves /health, /v1/models, /v1/completions, /v1/chat/completions, /v1/embeddings", r.Method, r.URL.Path)})
	})
	return mux
}

// Health is the /health body.
type Health struct {
	Status    string `json:"status"`
	Error     string `json:"error,omitempty"`
	ID        string `json:"id,omitempty"`
	Model     string `json:"model"`
	ModelPath string `json:"model_path"`
	Device    string `json:"device,omitempty"`
	// ChatTemplate is "model" when the GGUF carries a template llama.cpp
	// applies, else the fallback's name (llm.FallbackChatTemplate).
	ChatTemplate string `json:"chat_template,omitempty"`
	CtxSize      int    `json:"ctx_size,omitempty"`
	Threads      int    `json:"threads,omitempty"`
	Slots        int    `json:"slots"`
	Embeddings   bool   `json:"embeddings,omitempty"` // started to serve /v1/embeddings
	NEmbd        int    `json:"n_embd,omitempty"`
	// Placement lists the devices holding the model's layers: one for a
	// model on one device, this process's and the RPC servers' for a
	// split one.
	Placement []llm.Placement `json:"placement,omitempty"`
	SlotsBusy int             `json:"slots_busy"`
	Queued    int             `json:"queued"`
	Engine    struct {
		Dir     string `json:"dir"`
		Version string `json:"version"`
	} `json:"engine"`
	UptimeS  float64 `json:"uptime_s"`
	Requests struct {
		Served         int64 `json:"served"`
		Cancelled      int64 `json:"cancelled"`
		RejectedBusy   int64 `json:"rejected_busy"`
		LastCompletion int64 `json:"last_completion_tokens"`
	} `json:"requests"`
	// Batches counts the decode loop's work: SharedDecodes and MaxSeqs show
	// that concurrent requests were decoded together.
	Batches llm.Stats `json:"batches"`
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	h := Health{Status: s.state, ID: s.cfg.ID, Model: s.cfg.ModelName, ModelPath: s.cfg.ModelPath, Slots: s.cfg.Slots}
	if s.loadErr != nil {
		h.Error = s.loadErr.Error()
	}
	if s.model != nil {
		h.Device, h.CtxSize, h.Threads = s.model.Device, s.model.CtxSize, s.model.Threads
		h.ChatTemplate = s.model.Info().ChatTemplate
		h.Embeddings, h.NEmbd = s.model.Embeddings(), s.model.NEmbd()
		h.Batches = s.model.Stats()
		h.Placement = s.model.Placement
	}
	s.mu.Unlock()
	running := int(s.running.Load())
	h.SlotsBusy = running
	h.Queued = max(int(s.admitted.Load())-running, 0)
	h.Engine.Dir, h.Engine.Version = s.cfg.EngineDir, s.cfg.EngineVersion
	h.UptimeS = time.Since(s.started).Seconds()
	h.Requests.Served = s.served.Load()
	h.Requests.Cancelled = s.cancelled.Load()
	h.Requests.RejectedBusy = s.rejected.Load()
	h.Requests.LastCompletion = s.lastGen.Load()
	code := http.StatusOK
	if h.Status != StateReady {
		code = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, code, h)
}

func (s *Server) models(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"object": "list",
		"data": []map[string]any{{
			"id": s.cfg.ModelName, "object": "model", "created": s.started.Unix(), "owned_by": "rbee",
		}},
	})
}

// ready returns the model, or writes 503 when it is not loaded.
func (s *Server) ready(w http.ResponseWriter) *llm.Model {
	s.mu.Lock()
	m, state := s.model, s.state
	s.mu.Unlock()
	if m == nil {
		w.Header().Set("Retry-After", "1")
		writeError(w, &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "model_" + state,
			Message: fmt.Sprintf("model is %s; retry when GET /health answers 200", state)})
	}
	return m
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) *apiError {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return &apiError{Status: http.StatusUnsupportedMediaType, Type: "invalid_request_error", Code: "unsupported_media_type",
			Message: fmt.Sprintf("Content-Type %q not supported; send application/json", ct)}
	}
	body := http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(body)
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return &apiError{Status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error", Code: "body_too_large",
				Message: fmt.Sprintf("request body larger than %d bytes", MaxBodyBytes)}
		}
		if errors.Is(err, io.EOF) {
			return invalid("", "invalid_json", "request body is empty; send a JSON object")
		}
		return invalid("", "invalid_json", "request body is not valid JSON: %v", err)
	}
	// Only white space may follow the object ("{}}" is not one JSON value;
	// dec.More misses a stray closing delimiter).
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalid("", "invalid_json", "request body has data after the JSON object")
	}
	// Read to EOF so the server notices a client that goes away.
	_, _ = io.Copy(io.Discard, body)
	return nil
}

func (s *Server) completions(w http.ResponseWriter, r *http.Request) {
	m := s.ready(w)
	if m == nil {
		return
	}
	var req completionRequest
	if e := decodeBody(w, r, &req); e != nil {
		writeError(w, e)
		return
	}
	if e := req.validate(); e != nil {
		writeError(w, e)
		return
	}
	if req.Prompt == nil || len(*req.Prompt) == 0 {
		writeError(w, invalid("prompt", "missing_prompt", "prompt is required"))
		return
	}
	if len(*req.Prompt) > 1 {
		writeError(w, invalid("prompt", "unsupported_value", "prompt arrays of %d strings are not supported; send one prompt per request", len(*req.Prompt)))
		return
	}
	if (*req.Prompt)[0] == "" {
		writeError(w, invalid("prompt", "missing_prompt", "prompt is empty"))
		return
	}
	s.run(w, r, m, req.sampling, (*req.Prompt)[0], false)
}

func (s *Server) chat(w http.ResponseWriter, r *http.Request) {
	m := s.ready(w)
	if m == nil {
		return
	}
	var req chatRequest
	if e := decodeBody(w, r, &req); e != nil {
		writeError(w, e)
		return
	}
	if req.MaxCompletionTokens != nil && req.MaxTokens == nil {
		req.MaxTokens = req.MaxCompletionTokens
	}
	if e := req.validate(); e != nil {
		writeError(w, e)
		return
	}
	if len(req.Messages) == 0 {
		writeError(w, invalid("messages", "missing_messages", "messages is required and must not be empty"))
		return
	}
	msgs := make([]llm.Message, len(req.Messages))
	for i, msg := range req.Messages {
		if !chatRoles[msg.Role] {
			writeError(w, invalid(fmt.Sprintf("messages[%d].role", i), "invalid_value",
				"messages[%d].role %q is not one of system, developer, user, assistant, tool", i, msg.Role))
			return
		}
		if j := strings.IndexByte(msg.Content.text, 0); j >= 0 {
			writeError(w, invalid(fmt.Sprintf("messages[%d].content", i), "invalid_value",
				"messages[%d].content contains a NUL byte (at byte %d), which the model's tokenizer cannot take", i, j))
			return
		}
		role := msg.Role
		if role == "developer" {
			role = "system"
		}
		msgs[i] = llm.Message{Role: role, Content: msg.Content.text}
	}
	prompt, err := m.ApplyChat(msgs)
	if err != nil {
		writeError(w, &apiError{Status: http.StatusInternalServerError, Type: "server_error", Code: "chat_template", Message: err.Error()})
		return
	}
	s.run(w, r, m, req.sampling, prompt, true)
}

// tokenize turns a prompt into tokens for the model, or says why it cannot.
func (s *Server) tokenize(m *llm.Model, param, text string) ([]llm.Token, *apiError) {
	tokens, err := m.Tokenize(text, true, m.CtxSize)
	switch {
	case errors.Is(err, llm.ErrNUL):
		return nil, invalid(param, "invalid_value", "%s: %v; the model's tokenizer cannot take NUL bytes", param, err)
	case errors.Is(err, llm.ErrPromptTooLong):
		return nil, invalid(param, "context_length_exceeded",
			"%s is longer than this worker's context of %d tokens (%v); start it with a larger --ctx-size", param, m.CtxSize, err)
	case err != nil:
		return nil, invalid(param, "invalid_value", "%s: %v", param, err)
	}
	if len(tokens) >= m.CtxSize {
		return nil, invalid(param, "context_length_exceeded",
			"%s is %d tokens; this worker's context holds %d (start it with a larger --ctx-size)", param, len(tokens), m.CtxSize)
	}
	return tokens, nil
}

// admit counts a request against the slots and the queue; it writes 503
// and returns false when both are full. The caller calls s.leave.
func (s *Server) admit(w http.ResponseWriter) bool {
	slots := s.Model().Slots()
	limit := int64(slots + s.cfg.Queue)
	if s.admitted.Add(1) > limit {
		s.admitted.Add(-1)
		s.rejected.Add(1)
		w.Header().Set("Retry-After", "1")
		writeError(w, &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "server_busy",
			Message: fmt.Sprintf("all %d slots busy and %d requests queued; retry later", slots, s.cfg.Queue)})
		return false
	}
	s.active.Add(1)
	return true
}

func (s *Server) leave() {
	s.active.Done()
	s.admitted.Add(-1)
}

// run admits the request, waits for a slot, generates and writes the
// response or the stream.
func (s *Server) run(w http.ResponseWriter, r *http.Request, m *llm.Model, req sampling, prompt string, chat bool) {
	if m.Embeddings() {
		writeError(w, invalid("", "unsupported_endpoint", "this worker was started with --embeddings and serves only POST /v1/embeddings"))
		return
	}
	// Admitted before tokenizing: Close waits for admitted requests before
	// it frees the model the tokenizer reads.
	if !s.admit(w) {
		return
	}
	defer s.leave()
	tokens, apiErr := s.tokenize(m, "prompt", prompt)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stopCut := context.AfterFunc(s.cutCtx, cancel)
	defer stopCut()

	slot, err := m.Acquire(ctx, tokens)
	if err != nil {
		s.cancelled.Add(1)
		if s.cutCtx.Err() != nil || errors.Is(err, llm.ErrClosed) {
			writeError(w, shuttingDown())
		}
		return
	}
	s.running.Add(1)
	var releaseOnce sync.Once
	release := func() {
		releaseOnce.Do(func() {
			s.running.Add(-1)
			m.Release(slot)
		})
	}
	defer release()

	p := llm.SampleParams{Temperature: 1, Stop: req.Stop, IgnoreEOS: req.IgnoreEOS}
	if req.MaxTokens != nil {
		p.MaxTokens = *req.MaxTokens
	}
	if req.Temperature != nil {
		p.Temperature = float32(*req.Temperature)
	}
	if req.TopP != nil {
		p.TopP = float32(*req.TopP)
	}
	if req.TopK != nil {
		p.TopK = *req.TopK
	}
	if req.Seed != nil {
		seed := uint32(*req.Seed)
		p.Seed = &seed
	}
	if req.CachePrompt != nil && !*req.CachePrompt {
		p.NoCache = true
	}

	out := &responder{w: w, id: newID(chat), chat: chat, model: s.cfg.ModelName, created: time.Now().Unix(), stream: req.Stream}
	defer out.close()
	res, err := slot.Generate(ctx, tokens, p, out.text)
	// The slot is done with: free (with its cache) before the answer's
	// last bytes go out, so a next turn sent the moment [DONE] is read
	// finds it, not an empty slot.
	release()
	s.lastGen.Store(int64(res.CompletionTokens))
	switch {
	case err == nil:
		s.served.Add(1)
		out.finish(res)
	case s.cutCtx.Err() != nil:
		s.cancelled.Add(1)
		out.fail(shuttingDown())
	case r.Context().Err() != nil || out.writeErr != nil:
		s.cancelled.Add(1) // the client went away: nothing to write to
	default:
		code := "generation_failed"
		if errors.Is(err, llm.ErrPromptTooLong) {
			code = "context_length_exceeded"
		}
		out.fail(&apiError{Status: http.StatusInternalServerError, Type: "server_error", Code: code, Message: err.Error()})
	}
	s.log.Info("request", "id", out.id, "slot", slot.ID, "prompt_tokens", res.PromptTokens, "cached_tokens", res.CachedTokens,
		"completion_tokens", res.CompletionTokens, "finish", res.FinishReason, "gen_tok_s", fmt.Sprintf("%.1f", res.GenPerSecond()), "stream", req.Stream)
}

func shuttingDown() *apiError {
	return &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "shutting_down", Message: "worker is shutting down"}
}

// responder writes either one JSON response or an SSE stream.
type responder struct {
	w        http.ResponseWriter
	id       string
	chat     bool
	model    string
	created  int64
	stream   bool
	started  bool // stream headers sent
	buf      strings.Builder
	out      *sse.Batcher // set by begin
	writeErr error
}

func (o *responder) chunk(text string, finish *string, u *usage, t *timings) response {
	obj := "text_completion"
	var choices any = []completionChoice{{Text: text, FinishReason: finish}}
	if o.chat {
		obj = "chat.completion.chunk"
		d := &chatDelta{Content: text}
		if !o.started {
			d.Role = "assistant"
		}
		choices = []chatChoice{{Delta: d, FinishReason: finish}}
	}
	return response{ID: o.id, Object: obj, Created: o.created, Model: o.model, Choices: choices, Usage: u, Timings: t}
}

func (o *responder) begin() {
	if o.started {
		return
	}
	h := o.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	o.w.WriteHeader(http.StatusOK)
	o.out = sse.NewBatcher(o.w, sse.FlushInterval)
}

// close flushes a stream; the handler must call it before returning.
func (o *responder) close() {
	if o.out != nil {
		_ = o.out.Close()
	}
}

// send writes one SSE chunk; text chunks are batched, the rest flushed.
func (o *responder) send(v any, urgent bool) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return o.sendRaw(b, urgent)
}

func (o *responder) sendRaw(b []byte, urgent bool) error {
	if o.writeErr != nil {
		return o.writeErr
	}
	buf := make([]byte, 0, len(b)+8)
	buf = append(append(append(buf, "data: "...), b...), "\n\n"...)
	o.writeErr = o.out.Write(buf, urgent)
	return o.writeErr
}

// text receives generated text from the engine.
func (o *responder) text(t string) error {
	if !o.stream {
		o.buf.WriteString(t)
		return nil
	}
	o.begin()
	err := o.send(o.chunk(t, nil, nil, nil), false)
	o.started = true
	return err
}

func (o *responder) finish(res llm.Result) {
	reason := res.FinishReason
	u := &usage{PromptTokens: res.PromptTokens, CompletionTokens: res.CompletionTokens, TotalTokens: res.PromptTokens + res.CompletionTokens,
		PromptTokensDetails: &promptDetails{CachedTokens: res.CachedTokens}}
	t := &timings{
		CacheN:  res.CachedTokens,
		PromptN: res.PromptTokens - res.CachedTokens, PromptMS: ms(res.PromptDuration), PromptPerSecond: res.PromptPerSecond(),
		PredictedN: res.CompletionTokens, PredictedMS: ms(res.GenDuration), PredictedPerSecond: res.GenPerSecond(),
	}
	if o.stream {
		o.begin()
		c := o.chunk("", &reason, u, t)
		if o.chat {
			c.Choices = []chatChoice{{Delta: &chatDelta{}, FinishReason: &reason}}
		}
		if o.send(c, false) == nil {
			_ = o.sendRaw([]byte("[DONE]"), true)
		}
		return
	}
	resp := response{ID: o.id, Created: o.created, Model: o.model, Usage: u, Timings: t}
	if o.chat {
		resp.Object = "chat.completion"
		resp.Choices = []chatChoice{{Message: &chatMessageOut{Role: "assistant", Content: o.buf.String()}, FinishReason: &reason}}
	} else {
		resp.Object = "text_completion"
		resp.Choices = []completionChoice{{Text: o.buf.String(), FinishReason: &reason}}
	}
	writeJSON(o.w, http.StatusOK, resp)
}

// fail reports an error: as the response when nothing was sent yet, else as
// an error event followed by [DONE].
func (o *responder) fail(e *apiError) {
	if !o.stream || !o.started {
		writeError(o.w, e)
		return
	}
	if o.send(map[string]any{"error": e}, false) == nil {
		_ = o.sendRaw([]byte("[DONE]"), true)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func newID(chat bool) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	if chat {
		return "chatcmpl-" + hex.EncodeToString(b[:])
	}
	return "cmpl-" + hex.EncodeToString(b[:])
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error":{"message":"encode response","type":"server_error","code":"internal"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.Status, map[string]any{"error": e})
}
