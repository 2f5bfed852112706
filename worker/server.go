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

	"github.com/rbee-dev/rbee/chat"
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
	// tmpl is the model's chat template compiled for Jinja; nil, with
	// tmplErr saying why, when it does not compile or there is none.
	tmpl    *chat.Template
	tmplErr error

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
	s.tmpl, s.tmplErr = compileTemplate(m.ChatTemplate())
	if s.tmpl != nil {
		s.log.Info("chat template", "renderer", "jinja", "tool_format", s.tmpl.Format().String())
	} else {
		s.log.Warn("chat template: not rendered with Jinja, llama.cpp's built-in templating is used and tools are refused", "reason", s.tmplErr)
	}
	return nil
}

func compileTemplate(ct llm.ChatTemplate) (*chat.Template, error) {
	if ct.Source == "" {
		return nil, errors.New("the model has no chat template (tokenizer.chat_template)")
	}
	t, err := chat.Compile(ct.Source, ct.BOS, ct.EOS)
	if err != nil {
		return nil, fmt.Errorf("the model's chat template does not compile: %w", err)
	}
	return t, nil
}

// template returns the compiled chat template, or why there is none.
func (s *Server) template() (*chat.Template, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tmpl, s.tmplErr
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
	mux.HandleFunc("GET /v1/models/{id...}", s.modelByID)
	mux.HandleFunc("POST /v1/embeddings", s.embeddings)
	mux.HandleFunc("POST /tokenize", s.tokenizeHandler)
	mux.HandleFunc("POST /detokenize", s.detokenizeHandler)
	mux.HandleFunc("POST /apply-template", s.applyTemplate)
	routes := []string{"/health", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/tokenize", "/detokenize", "/apply-template"}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		for _, p := range routes {
			if r.URL.Path == p {
				writeError(w, &apiError{Status: http.StatusMethodNotAllowed, Type: "invalid_request_error", Code: "method_not_allowed",
					Message: fmt.Sprintf("%s does not accept %s", p, r.Method)})
				return
			}
		}
		writeError(w, &apiError{Status: http.StatusNotFound, Type: "invalid_request_error", Code: "not_found",
			Message: fmt.Sprintf("no route %s %s; this worker serves %s and GET /v1/models/{id}", r.Method, r.URL.Path, strings.Join(routes, ", "))})
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
	// ToolFormat is the tool-call syntax of the template's family when it
	// renders with Jinja (generic, hermes, llama3, mistral); absent when
	// tools are refused.
	ToolFormat string `json:"tool_format,omitempty"`
	CtxSize    int    `json:"ctx_size,omitempty"`
	Threads    int    `json:"threads,omitempty"`
	Slots      int    `json:"slots"`
	Embeddings bool   `json:"embeddings,omitempty"` // started to serve /v1/embeddings
	NEmbd      int    `json:"n_embd,omitempty"`
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
	if s.tmpl != nil {
		h.ToolFormat = s.tmpl.Format().String()
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
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": []map[string]any{s.modelObject()}})
}

func (s *Server) modelObject() map[string]any {
	return map[string]any{"id": s.cfg.ModelName, "object": "model", "created": s.started.Unix(), "owned_by": "rbee"}
}

// modelByID answers GET /v1/models/{id}: the model when id is its name.
func (s *Server) modelByID(w http.ResponseWriter, r *http.Request) {
	if id := r.PathValue("id"); id != s.cfg.ModelName {
		writeError(w, &apiError{Status: http.StatusNotFound, Type: "invalid_request_error", Code: "model_not_found",
			Message: fmt.Sprintf("the model %q does not exist here; this worker serves %q", id, s.cfg.ModelName)})
		return
	}
	writeJSON(w, http.StatusOK, s.modelObject())
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

// decodeBody reads a JSON object into v and returns its fields as raw
// JSON, for checkFields.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) (map[string]json.RawMessage, *apiError) {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return nil, &apiError{Status: http.StatusUnsupportedMediaType, Type: "invalid_request_error", Code: "unsupported_media_type",
			Message: fmt.Sprintf("Content-Type %q not supported; send application/json", ct)}
	}
	body := http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(body)
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, &apiError{Status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error", Code: "body_too_large",
				Message: fmt.Sprintf("request body larger than %d bytes", MaxBodyBytes)}
		}
		if errors.Is(err, io.EOF) {
			return nil, invalid("", "invalid_json", "request body is empty; send a JSON object")
		}
		return nil, invalid("", "invalid_json", "request body is not valid JSON: %v", err)
	}
	// Only white space may follow the object ("{}}" is not one JSON value;
	// dec.More misses a stray closing delimiter).
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, invalid("", "invalid_json", "request body has data after the JSON object")
	}
	// Read to EOF so the server notices a client that goes away.
	_, _ = io.Copy(io.Discard, body)
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
		return nil, invalid("", "invalid_json", "request body must be a JSON object")
	}
	if err := json.Unmarshal(raw, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			// The shared fields sit in an embedded struct; the client
			// knows them by their own name.
			return nil, invalid(strings.TrimPrefix(te.Field, "sampling."), "invalid_json", "request body is not valid: %v", err)
		}
		return nil, invalid("", "invalid_json", "request body is not valid: %v", err)
	}
	return fields, nil
}

// job is one choice to generate: a prompt and the choice's index.
type job struct {
	index  int
	prompt int // index of the prompt
	tokens []llm.Token
}

// gen is what one request asks to generate, past its checks.
type gen struct {
	sampling
	chat     bool
	prompts  []string
	logprobs bool
	top      int      // alternatives per token
	tools    *toolUse // chat: read tool calls out of the answer
}

func (s *Server) completions(w http.ResponseWriter, r *http.Request) {
	m := s.ready(w)
	if m == nil {
		return
	}
	var req completionRequest
	fields, e := decodeBody(w, r, &req)
	if e == nil {
		e = checkFields(fields, false)
	}
	if e == nil {
		e = req.validate()
	}
	if e != nil {
		writeError(w, e)
		return
	}
	if req.Prompt == nil || len(*req.Prompt) == 0 {
		writeError(w, invalid("prompt", "missing_prompt", "prompt is required"))
		return
	}
	for i, p := range *req.Prompt {
		if p == "" {
			writeError(w, invalid("prompt", "missing_prompt", "prompt %d is empty", i))
			return
		}
	}
	if k := len(*req.Prompt) * req.n(); k > maxChoices {
		writeError(w, invalid("prompt", "invalid_value", "%d prompts times n=%d is %d choices; at most %d per request", len(*req.Prompt), req.n(), k, maxChoices))
		return
	}
	g := gen{sampling: req.sampling, prompts: *req.Prompt}
	if req.Logprobs != nil {
		if *req.Logprobs < 0 || *req.Logprobs > maxTopLogprobs {
			writeError(w, invalid("logprobs", "invalid_value", "logprobs must be between 0 and %d, got %d", maxTopLogprobs, *req.Logprobs))
			return
		}
		g.logprobs, g.top = true, *req.Logprobs
	}
	s.run(w, r, m, g)
}

func (s *Server) chat(w http.ResponseWriter, r *http.Request) {
	m := s.ready(w)
	if m == nil {
		return
	}
	var req chatRequest
	fields, e := decodeBody(w, r, &req)
	if e == nil {
		e = checkFields(fields, true)
	}
	if e != nil {
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
	g := gen{sampling: req.sampling, chat: true, logprobs: req.Logprobs}
	if req.TopLogprobs != nil {
		switch {
		case *req.TopLogprobs < 0 || *req.TopLogprobs > maxTopLogprobs:
			writeError(w, invalid("top_logprobs", "invalid_value", "top_logprobs must be between 0 and %d, got %d", maxTopLogprobs, *req.TopLogprobs))
			return
		case !req.Logprobs:
			writeError(w, invalid("top_logprobs", "invalid_value", "top_logprobs needs logprobs: true"))
			return
		}
		g.top = *req.TopLogprobs
	}
	prompt, tools, e := s.chatPrompt(m, &req)
	if e != nil {
		writeError(w, e)
		return
	}
	g.sampling, g.tools = req.sampling, tools
	g.prompts = []string{prompt}
	s.run(w, r, m, g)
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

// run admits the request, waits for a slot, generates every choice in it
// one after the other, and writes the response or the stream.
func (s *Server) run(w http.ResponseWriter, r *http.Request, m *llm.Model, g gen) {
	if m.Embeddings() {
		writeError(w, invalid("", "unsupported_endpoint", "this worker was started with --embeddings and serves only POST /v1/embeddings"))
		return
	}
	bias, apiErr := g.logitBias(m.NVocab())
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	if g.gbnf != "" {
		if err := m.CheckGrammar(g.gbnf); err != nil {
			writeError(w, invalid(g.gbnfField, "invalid_grammar", "%s: %v", g.gbnfField, err))
			return
		}
	}
	// Admitted before tokenizing: Close waits for admitted requests before
	// it frees the model the tokenizer reads.
	if !s.admit(w) {
		return
	}
	defer s.leave()
	var jobs []job
	promptTokens := 0
	for i, text := range g.prompts {
		param := "prompt"
		if len(g.prompts) > 1 {
			param = fmt.Sprintf("prompt[%d]", i)
		}
		tokens, apiErr := s.tokenize(m, param, text)
		if apiErr != nil {
			writeError(w, apiErr)
			return
		}
		promptTokens += len(tokens)
		for k := range g.n() {
			jobs = append(jobs, job{index: i*g.n() + k, prompt: i, tokens: tokens})
		}
	}

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stopCut := context.AfterFunc(s.cutCtx, cancel)
	defer stopCut()

	slot, err := m.Acquire(ctx, jobs[0].tokens)
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

	out := &responder{w: w, id: newID(g.chat), chat: g.chat, model: s.cfg.ModelName, created: time.Now().Unix(),
		stream: g.Stream, includeUsage: g.includeUsage(), logprobs: g.logprobs, top: g.top, tools: g.tools, choices: make([]*choiceOut, len(jobs))}
	defer out.close()
	var total llm.Result
	total.PromptTokens = promptTokens
	cachedN, promptN := 0, 0 // over every run, for the timings
	for i, jb := range jobs {
		p := g.params()
		p.LogitBias, p.Logprobs, p.TopLogprobs = bias, g.logprobs, g.top
		if p.Seed != nil {
			seed := *p.Seed + uint32(jb.index%g.n())
			p.Seed = &seed
		}
		c := &choiceOut{index: jb.index}
		if g.tools != nil {
			c.calls = g.tools.format.NewStream()
		}
		out.choices[i] = c
		res, err := slot.Generate(ctx, jb.tokens, p, func(pc llm.Piece) error { return out.piece(c, pc) })
		if err == nil && i == len(jobs)-1 {
			// The slot is done with: free (with its cache) before the
			// answer's last bytes go out, so a next turn sent the moment
			// [DONE] is read finds it, not an empty slot. A failed run
			// frees it on return, after it is counted: whoever sees the
			// slot free sees the count.
			release()
		}
		total.CompletionTokens += res.CompletionTokens
		if jb.index%g.n() == 0 {
			total.CachedTokens += res.CachedTokens
		}
		cachedN += res.CachedTokens
		promptN += res.PromptTokens - res.CachedTokens
		total.PromptDuration += res.PromptDuration
		total.GenDuration += res.GenDuration
		s.lastGen.Store(int64(total.CompletionTokens))
		s.log.Info("request", "id", out.id, "choice", jb.index, "slot", slot.ID, "prompt_tokens", res.PromptTokens, "cached_tokens", res.CachedTokens,
			"completion_tokens", res.CompletionTokens, "finish", res.FinishReason, "gen_tok_s", fmt.Sprintf("%.1f", res.GenPerSecond()), "stream", g.Stream)
		switch {
		case err == nil:
			c.finish = res.FinishReason
			out.finishChoice(c, res)
			continue
		case s.cutCtx.Err() != nil:
			s.cancelled.Add(1)
			out.fail(shuttingDown())
		case r.Context().Err() != nil || out.writeErr != nil:
			s.cancelled.Add(1) // the client went away: nothing to write to
		default:
			e := &apiError{Status: http.StatusInternalServerError, Type: "server_error", Code: "generation_failed", Message: err.Error()}
			switch {
			case errors.Is(err, llm.ErrPromptTooLong):
				e.Code = "context_length_exceeded"
			case errors.Is(err, llm.ErrGrammar):
				e = invalid(g.gbnfField, "invalid_grammar", "%s: %v", g.gbnfField, err)
			}
			out.fail(e)
		}
		return
	}
	s.served.Add(1)
	t := &timings{
		CacheN: cachedN, PromptN: promptN, PromptMS: ms(total.PromptDuration), PromptPerSecond: perSecond(promptN, total.PromptDuration),
		PredictedN: total.CompletionTokens, PredictedMS: ms(total.GenDuration), PredictedPerSecond: total.GenPerSecond(),
	}
	out.finish(total, t)
}

func perSecond(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

func shuttingDown() *apiError {
	return &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "shutting_down", Message: "worker is shutting down"}
}

// responder writes either one JSON response or an SSE stream. A stream
// sends the choices one after the other, each chunk naming its index.
type responder struct {
	w            http.ResponseWriter
	id           string
	chat         bool
	model        string
	created      int64
	stream       bool
	includeUsage bool // stream_options.include_usage: a last chunk with the usage
	logprobs     bool
	top          int
	tools        *toolUse // read tool calls out of the answers
	choices      []*choiceOut
	out          *sse.Batcher // set by begin
	writeErr     error
}

// choiceOut is one choice as it is generated.
type choiceOut struct {
	index   int
	text    strings.Builder
	started bool // a chunk of it was sent
	finish  string
	timings *timings
	chatLP  chatLogprobs
	compLP  completionLogprobs
	offset  int // bytes of tokens in compLP
	// calls reads the tool calls as the answer is generated; content and
	// toolCalls are what it found when the choice ended.
	calls     *chat.Stream
	content   string
	toolCalls []toolCallOut
	// streamed are the calls whose deltas went out as they were
	// generated: their ids and the arguments sent so far.
	streamed []toolCallOut
}

// logprobsOf adds probs to c's logprobs and returns them in the endpoint's
// shape (nil when none were asked for); with fresh, only probs.
func (o *responder) logprobsOf(c *choiceOut, probs []llm.TokenLogprob, fresh bool) any {
	if !o.logprobs {
		return nil
	}
	if o.chat {
		lp := &c.chatLP
		if fresh {
			lp = &chatLogprobs{}
		}
		if lp.Content == nil {
			lp.Content = []chatTokenLogprob{}
		}
		appendChatLogprobs(lp, probs, o.top)
		return lp
	}
	if fresh {
		lp := &completionLogprobs{}
		appendCompletionLogprobs(lp, probs, o.top, c.offset)
		c.offset += tokenBytes(probs)
		return lp
	}
	c.offset = appendCompletionLogprobs(&c.compLP, probs, o.top, c.offset)
	return &c.compLP
}

func tokenBytes(probs []llm.TokenLogprob) int {
	n := 0
	for _, p := range probs {
		n += len(p.Bytes)
	}
	return n
}

func (o *responder) begin() {
	if o.out != nil {
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

// chunk is a stream chunk of choice c.
func (o *responder) chunk(c *choiceOut, text string, lp any, finish *string, t *timings) response {
	if o.chat {
		d := &chatDelta{Content: text}
		if !c.started {
			d.Role = "assistant"
		}
		return response{ID: o.id, Object: "chat.completion.chunk", Created: o.created, Model: o.model, Timings: t,
			Choices: []chatChoice{{Index: c.index, Delta: d, Logprobs: lp, FinishReason: finish}}}
	}
	return response{ID: o.id, Object: "text_completion", Created: o.created, Model: o.model, Timings: t,
		Choices: []completionChoice{{Index: c.index, Text: text, Logprobs: lp, FinishReason: finish}}}
}

// piece receives generated text of choice c from the engine.
func (o *responder) piece(c *choiceOut, pc llm.Piece) error {
	if !o.stream {
		c.text.WriteString(pc.Text)
		o.logprobsOf(c, pc.Logprobs, false)
		return nil
	}
	text := pc.Text
	var deltas []chat.CallDelta
	if c.calls != nil {
		text = c.calls.Feed(text) // what may go out before a call
		deltas = c.calls.Deltas(o.tools.format.CallID)
	}
	if text != "" || (o.logprobs && len(pc.Logprobs) > 0) {
		o.begin()
		if err := o.send(o.chunk(c, text, o.logprobsOf(c, pc.Logprobs, true), nil, nil), false); err != nil {
			return err
		}
		c.started = true
	}
	for _, d := range deltas {
		// A call's id and name as soon as they are read, then its
		// arguments as they come (OpenAI's tool-call deltas).
		td := toolCallDelta{Index: d.Index}
		args := d.Arguments
		if d.Index == len(c.streamed) {
			c.streamed = append(c.streamed, toolCallOut{ID: d.ID, Type: "function", Function: functionCall{Name: d.Name}})
			td.ID, td.Type, td.Function.Name = d.ID, "function", d.Name
		}
		c.streamed[d.Index].Function.Arguments += args
		td.Function.Arguments = &args
		o.begin()
		ch := o.chunk(c, "", nil, nil, nil)
		ch.Choices.([]chatChoice)[0].Delta.ToolCalls = []toolCallDelta{td}
		if err := o.send(ch, false); err != nil {
			return err
		}
		c.started = true
	}
	return nil
}

// finishChoice ends choice c: a stream gets its finish chunk, with the
// choice's timings (llama-server's extension).
func (o *responder) finishChoice(c *choiceOut, res llm.Result) {
	c.timings = &timings{
		CacheN:  res.CachedTokens,
		PromptN: res.PromptTokens - res.CachedTokens, PromptMS: ms(res.PromptDuration), PromptPerSecond: res.PromptPerSecond(),
		PredictedN: res.CompletionTokens, PredictedMS: ms(res.GenDuration), PredictedPerSecond: res.GenPerSecond(),
	}
	rest := o.readCalls(c)
	if !o.stream {
		return
	}
	o.begin()
	if rest != "" {
		_ = o.send(o.chunk(c, rest, nil, nil, nil), false)
		c.started = true
	}
	for i, tc := range c.toolCalls {
		for _, d := range callDeltas(i, tc, c.streamed) {
			ch := o.chunk(c, "", nil, nil, nil)
			ch.Choices.([]chatChoice)[0].Delta.ToolCalls = []toolCallDelta{d}
			_ = o.send(ch, false)
			c.started = true
		}
	}
	ch := o.chunk(c, "", nil, &c.finish, c.timings)
	if o.chat {
		ch.Choices = []chatChoice{{Index: c.index, Delta: &chatDelta{}, FinishReason: &c.finish}}
	}
	_ = o.send(ch, false)
	c.started = true
}

// readCalls reads choice c's tool calls once it has ended: they go to
// c.toolCalls, the content to c.content, and a choice that called ends
// with "tool_calls". It returns the content not yet streamed.
func (o *responder) readCalls(c *choiceOut) string {
	if c.calls == nil {
		return ""
	}
	rest, calls := c.calls.Finish()
	if o.stream {
		c.content = rest
	} else {
		c.content, calls = o.tools.format.Parse(c.text.String())
	}
	for i, tc := range calls {
		id := tc.ID
		if i < len(c.streamed) {
			id = c.streamed[i].ID // the id the client has
		}
		if id == "" {
			id = o.tools.format.CallID()
		}
		c.toolCalls = append(c.toolCalls, toolCallOut{ID: id, Type: "function", Function: functionCall{Name: tc.Name, Arguments: tc.Arguments}})
	}
	switch {
	case len(calls) > 0:
		c.finish = "tool_calls"
	case len(c.streamed) > 0:
		// Deltas of a call went out and the model stopped before it
		// ended (max_tokens): the answer stays a cut call, as OpenAI's
		// is, not text.
		rest, c.content = "", ""
	}
	return rest
}

// callDeltas is what is left to stream of call index in OpenAI's shape:
// its id, type and name with empty arguments, then the arguments; of a
// call streamed as it was generated (streamed), the arguments it lacks.
func callDeltas(index int, tc toolCallOut, streamed []toolCallOut) []toolCallDelta {
	args := tc.Function.Arguments
	var out []toolCallDelta
	if index < len(streamed) {
		sent := streamed[index].Function.Arguments
		if !strings.HasPrefix(args, sent) {
			return nil // cannot be taken back; the whole answer has the same call
		}
		args = args[len(sent):]
	} else {
		empty := ""
		first := toolCallDelta{Index: index, ID: tc.ID, Type: tc.Type}
		first.Function.Name, first.Function.Arguments = tc.Function.Name, &empty
		out = append(out, first)
	}
	if args != "" {
		next := toolCallDelta{Index: index}
		next.Function.Arguments = &args
		out = append(out, next)
	}
	return out
}

// finish ends the answer: a stream with the usage chunk when it was asked
// for (OpenAI's stream_options.include_usage: "choices" empty) and [DONE];
// else the one response, with usage and timings.
func (o *responder) finish(res llm.Result, t *timings) {
	u := &usage{PromptTokens: res.PromptTokens, CompletionTokens: res.CompletionTokens, TotalTokens: res.PromptTokens + res.CompletionTokens,
		PromptTokensDetails: &promptDetails{CachedTokens: res.CachedTokens}}
	if o.stream {
		o.begin()
		if o.includeUsage {
			var choices any = []completionChoice{}
			if o.chat {
				choices = []chatChoice{}
			}
			obj := "text_completion"
			if o.chat {
				obj = "chat.completion.chunk"
			}
			if o.send(response{ID: o.id, Object: obj, Created: o.created, Model: o.model, Choices: choices, Usage: u, Timings: t}, false) != nil {
				return
			}
		}
		_ = o.sendRaw([]byte("[DONE]"), true)
		return
	}
	resp := response{ID: o.id, Created: o.created, Model: o.model, Usage: u, Timings: t}
	if o.chat {
		resp.Object = "chat.completion"
		cs := make([]chatChoice, len(o.choices))
		for i, c := range o.choices {
			content := c.text.String()
			if c.calls != nil {
				content = c.content
			}
			msg := &chatMessageOut{Role: "assistant", Content: &content, ToolCalls: c.toolCalls}
			if len(c.toolCalls) > 0 && content == "" {
				msg.Content = nil
			}
			cs[i] = chatChoice{Index: c.index, Message: msg, FinishReason: &c.finish}
			if o.logprobs {
				if c.chatLP.Content == nil {
					c.chatLP.Content = []chatTokenLogprob{}
				}
				cs[i].Logprobs = &c.chatLP
			}
		}
		resp.Choices = cs
	} else {
		resp.Object = "text_completion"
		cs := make([]completionChoice, len(o.choices))
		for i, c := range o.choices {
			cs[i] = completionChoice{Index: c.index, Text: c.text.String(), FinishReason: &c.finish}
			if o.logprobs {
				appendCompletionLogprobs(&c.compLP, nil, 0, 0) // [] rather than null when no token came
				cs[i].Logprobs = &c.compLP
			}
		}
		resp.Choices = cs
	}
	writeJSON(o.w, http.StatusOK, resp)
}

// fail reports an error: as the response when nothing was sent yet, else as
// an error event followed by [DONE].
func (o *responder) fail(e *apiError) {
	if !o.stream || o.out == nil {
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
