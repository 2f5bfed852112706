package llm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"github.com/hybridgroup/yzma/pkg/llama"
)

// ErrModelFile means the model file is missing, unreadable or not GGUF.
var ErrModelFile = errors.New("model file")

// ErrPromptTooLong means the prompt does not fit the context.
var ErrPromptTooLong = errors.New("prompt too long")

// ErrNUL means text holds a NUL byte, which llama.cpp's tokenizer cannot take.
var ErrNUL = errors.New("text contains a NUL byte")

// FallbackChatTemplate is the built-in llama.cpp template used when a model
// carries no chat template, or one llama.cpp cannot apply: ChatML, the most
// widely understood format.
const FallbackChatTemplate = "chatml"

// ModelOptions configure LoadModel.
type ModelOptions struct {
	Device  string // "", "auto", "cpu" or a device name such as "CUDA0"
	CtxSize int    // context tokens per slot; 0 = min(model's training context, 4096)
	Threads int    // CPU threads of the process's one thread pool; 0 = one per physical (performance) core
	Slots   int    // parallel sequences sharing the one context; 0 = 1
	// Embeddings makes the model serve Embed instead of Generate: the
	// context pools each input into one vector (the model's pooling type,
	// else the mean of its tokens).
	Embeddings bool
	// RPC lists RPC servers (HOST:PORT) the model's layers are split over
	// beside Device (see Engine.AddRPCServers); ctx of LoadModel bounds
	// reaching them.
	RPC []string
	// Split is each device's share of the layers with RPC: Device first,
	// then each RPC device in order (a server may offer several); nil
	// splits by free memory, as llama.cpp does.
	Split []float64
}

// Model is a loaded model, the one llama context all its slots share, and
// the decode loop that drives that context. Every call into the context
// happens on the loop's goroutine.
type Model struct {
	Path    string
	Device  string
	CtxSize int // tokens per slot
	Threads int
	// Placement says which device holds how many layers; one entry, the
	// device, for a model that is not split.
	Placement []Placement
	model     llama.Model
	vocab     llama.Vocab
	template  string
	templName string // "model" or FallbackChatTemplate
	templSrc  string // the GGUF's tokenizer.chat_template, "" when none
	desc      string
	params    uint64
	size      uint64
	nEmbd     int
	maxTokLen int // bytes of the longest token text: bounds tokens per byte

	lctx       llama.Context
	pool       llama.Threadpool
	batch      llama.Batch
	nBatch     int
	nUbatch    int
	embeddings bool
	pooling    llama.PoolingType
	canReuse   bool // the memory can drop a sequence's tail (not recurrent)

	slotMu  sync.Mutex
	slots   []*Slot
	free    []*Slot
	waiters []*waiter

	submit  chan *request
	embedCh chan *embedRequest
	wake    chan struct{}
	quit    chan struct{}
	loopWG  sync.WaitGroup
	stats   statsCounters

	closeOnce sync.Once
}

// CheckGGUF reports whether path is a readable GGUF file, with an error that
// says what is wrong, before handing it to llama.cpp (which only says "failed").
func CheckGGUF(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w %s: %w", ErrModelFile, path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%w %s: %w", ErrModelFile, path, err)
	}
	if st.IsDir() {
		return fmt.Errorf("%w %s: is a directory; pass a .gguf file", ErrModelFile, path)
	}
	var magic [8]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil {
		return fmt.Errorf("%w %s: not a GGUF file (%d bytes)", ErrModelFile, path, st.Size())
	}
	if string(magic[:4]) != "GGUF" {
		return fmt.Errorf("%w %s: not a GGUF file (no GGUF magic); rbee-worker runs GGUF models", ErrModelFile, path)
	}
	if v := uint32(magic[4]) | uint32(magic[5])<<8 | uint32(magic[6])<<16 | uint32(magic[7])<<24; v < 2 || v > 3 {
		return fmt.Errorf("%w %s: GGUF version %d not supported (want 2 or 3)", ErrModelFile, path, v)
	}
	return nil
}

// LoadModel loads the GGUF model at path, creates its one context with room
// for opt.Slots sequences of opt.CtxSize tokens each, attaches one thread
// pool, and starts the decode loop. ctx bounds reaching opt.RPC's servers;
// llama.cpp's load itself cannot be interrupted.
func (e *Engine) LoadModel(ctx context.Context, path string, opt ModelOptions) (*Model, error) {
	if err := CheckGGUF(path); err != nil {
		return nil, err
	}
	names := strings.Split(opt.Device, ",")
	devName, dev, err := e.resolveDevice(names[0])
	if err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	var local *splitPlan // a split across this host's own GPUs
	if len(names) > 1 {
		if len(opt.RPC) > 0 {
			return nil, errors.New("load model: split across this host's GPUs or over rpc servers, not both")
		}
		if local, err = e.planLocal(path, names, opt.Split); err != nil {
			return nil, fmt.Errorf("load model: %w", err)
		}
	} else if opt.Split != nil && len(opt.RPC) == 0 {
		return nil, errors.New("load model: a split needs several devices or rpc servers")
	}
	mp := llama.ModelDefaultParams()
	devs := []llama.GGMLBackendDevice{dev, 0}
	var split []float32
	placement := []Placement{{Device: devName, Layers: -1, Output: true}}
	switch {
	case local != nil:
		devs, split, placement = local.devices, local.split, local.placement
		devName = opt.Device
		mp.NGpuLayers = local.nGPU
		mp.SplitMode = llama.SplitModeLayer
		mp.TensorSplit = &split[0]
		if err := mp.SetDevices(devs); err != nil {
			return nil, fmt.Errorf("load model: %w", err)
		}
	case len(opt.RPC) > 0:
		plan, err := e.planRPC(ctx, path, devName, dev, opt)
		if err != nil {
			return nil, fmt.Errorf("load model: %w", err)
		}
		devs, split, placement = plan.devices, plan.split, plan.placement
		mp.NGpuLayers = plan.nGPU
		mp.SplitMode = llama.SplitModeLayer
		mp.TensorSplit = &split[0]
		if err := mp.SetDevices(devs); err != nil {
			return nil, fmt.Errorf("load model: %w", err)
		}
	case dev == 0:
		mp.SetCPUOnly()
	default:
		mp.NGpuLayers = 999
		if err := mp.SetDevices(devs); err != nil {
			return nil, fmt.Errorf("load model: %w", err)
		}
	}
	mdl, err := llama.ModelLoadFromFile(path, mp)
	runtime.KeepAlive(devs)
	runtime.KeepAlive(split)
	if err != nil {
		return nil, fmt.Errorf("%w %s: llama.cpp could not load it (corrupt or unsupported architecture)", ErrModelFile, path)
	}
	if placement[0].Layers < 0 {
		placement[0].Layers = int(llama.ModelNLayer(mdl))
	}
	m := &Model{Path: path, Device: devName, Placement: placement, model: mdl, vocab: llama.ModelGetVocab(mdl)}
	m.desc = llama.ModelDesc(mdl)
	m.params = llama.ModelNParams(mdl)
	m.size = llama.ModelSize(mdl)
	m.nEmbd = int(llama.ModelNEmbd(mdl))
	m.template = llama.ModelChatTemplate(mdl, "")
	m.templSrc = m.template
	m.templName = "model"
	if m.template == "" || applyTemplate(m.template, []Message{{Role: "user", Content: "x"}}, true) == "" {
		m.template, m.templName = FallbackChatTemplate, FallbackChatTemplate
	}
	m.maxTokLen = maxTokenBytes(m.vocab)
	m.CtxSize = opt.CtxSize
	if m.CtxSize <= 0 {
		m.CtxSize = int(min(llama.ModelNCtxTrain(mdl), 4096))
	}
	m.Threads = opt.Threads
	if m.Threads <= 0 {
		m.Threads = int(llama.Threads())
	}
	m.embeddings = opt.Embeddings
	m.canReuse = !llama.ModelIsRecurrent(mdl) && !llama.ModelIsHybrid(mdl)
	slots := max(opt.Slots, 1)
	if m.embeddings {
		slots = 1
	}
	if err := m.newContext(slots); err != nil {
		llama.ModelFree(mdl)
		return nil, err
	}
	for i := range slots {
		s := &Slot{ID: i, m: m, seq: []llama.SeqId{llama.SeqId(i)}}
		m.slots = append(m.slots, s)
		m.free = append(m.free, s)
	}
	m.submit = make(chan *request)
	m.embedCh = make(chan *embedRequest)
	m.wake = make(chan struct{}, 1)
	m.quit = make(chan struct{})
	m.loopWG.Add(1)
	go m.loop()
	return m, nil
}

// newContext creates the one context (slots sequences, each with its own
// CtxSize tokens of KV cache) and the one thread pool it computes with:
// without a pool, ggml starts and joins its threads for every decode.
func (m *Model) newContext(slots int) error {
	cp := llama.ContextDefaultParams()
	cp.NCtx = uint32(m.CtxSize * slots)
	cp.NSeqMax = uint32(slots)
	cp.KVUnified = 0 // each slot gets its own CtxSize, as llama-server --parallel does
	cp.NBatch = uint32(min(m.CtxSize*slots, 2048))
	cp.NUbatch = uint32(min(int(cp.NBatch), 512))
	cp.NThreads = int32(m.Threads)
	cp.NThreadsBatch = int32(m.Threads)
	cp.NoPerf = 1
	if m.embeddings {
		// A pooled sequence must fit one micro-batch.
		cp.NBatch, cp.NUbatch = uint32(m.CtxSize), uint32(m.CtxSize)
		cp.Embeddings = 1
		m.pooling = modelPooling(m.model)
		if m.pooling == llama.PoolingTypeNone || m.pooling == llama.PoolingTypeUnspecified {
			m.pooling = llama.PoolingTypeMean
		}
		cp.PoolingType = m.pooling
	}
	lctx, err := llama.InitFromModel(m.model, cp)
	if err != nil || lctx == 0 {
		return fmt.Errorf("create context (%d slots × %d tokens): %v; try a smaller --ctx-size or fewer --slots", slots, m.CtxSize, err)
	}
	m.lctx = lctx
	if n := int(llama.NCtxSeq(lctx)); n > 0 && n < m.CtxSize {
		m.CtxSize = n
	}
	m.nBatch, m.nUbatch = int(cp.NBatch), int(cp.NUbatch)
	m.batch = llama.BatchInit(int32(m.nBatch), 0, 1)
	tpp := llama.ThreadpoolParamsDefault(int32(m.Threads))
	if tp, err := llama.ThreadpoolNew(&tpp); err == nil {
		m.pool = tp
		llama.AttachThreadpool(lctx, uintptr(tp), 0)
	}
	return nil
}

// modelPooling reads the GGUF's pooling type (<arch>.pooling_type).
func modelPooling(mdl llama.Model) llama.PoolingType {
	arch, _ := llama.ModelMetaValStr(mdl, "general.architecture")
	v, ok := llama.ModelMetaValStr(mdl, arch+".pooling_type")
	if !ok {
		return llama.PoolingTypeUnspecified
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		return llama.PoolingTypeUnspecified
	}
	return llama.PoolingType(n)
}

// maxTokenBytes is the length of the longest token text in the vocabulary.
// The stored text over-counts (escaped spaces, <0xNN> byte tokens), which
// only makes the bound looser: a prompt of more than ctx × maxTokenBytes
// bytes is certainly more than ctx tokens.
func maxTokenBytes(v llama.Vocab) int {
	n := 1
	for t := range llama.VocabNTokens(v) {
		n = max(n, len(llama.VocabGetText(v, llama.Token(t))))
	}
	return n
}

// Info describes a loaded model.
type Info struct {
	Description  string `json:"description"`
	Params       uint64 `json:"params"`
	SizeBytes    uint64 `json:"size_bytes"`
	ChatTemplate string `json:"chat_template"` // "model" or the fallback's name
}

// Info describes the model.
func (m *Model) Info() Info {
	return Info{Description: m.desc, Params: m.params, SizeBytes: m.size, ChatTemplate: m.templName}
}

// Slots returns the number of parallel sequences.
func (m *Model) Slots() int { return len(m.slots) }

// NEmbd returns the model's embedding width.
func (m *Model) NEmbd() int { return m.nEmbd }

// Embeddings reports whether the model was loaded to serve Embed.
func (m *Model) Embeddings() bool { return m.embeddings }

// Close stops the decode loop and frees the context, the thread pool and
// the model. No slot may be in use.
func (m *Model) Close() {
	m.closeOnce.Do(func() {
		close(m.quit)
		m.loopWG.Wait()
		llama.BatchFree(m.batch)
		llama.Free(m.lctx)
		if m.pool != 0 {
			llama.ThreadpoolFree(m.pool)
		}
		llama.ModelFree(m.model)
	})
}

// Tokenize turns text into tokens, adding BOS when the model wants it.
// Text llama.cpp cannot take is refused first: a NUL byte (its tokenizer
// aborts the process on one) and text certainly longer than limit tokens,
// which would otherwise be tokenized in full only to be refused.
func (m *Model) Tokenize(text string, addSpecial bool, limit int) ([]llama.Token, error) {
	if i := strings.IndexByte(text, 0); i >= 0 {
		return nil, fmt.Errorf("%w at byte %d", ErrNUL, i)
	}
	if limit > 0 && len(text) > limit*m.maxTokLen {
		return nil, fmt.Errorf("%w: %d bytes is more than %d tokens", ErrPromptTooLong, len(text), limit)
	}
	return llama.Tokenize(m.vocab, text, addSpecial, true), nil
}

// Message is one chat message.
type Message struct {
	Role    string
	Content string
}

// ApplyChat renders messages with the model's chat template (or the fallback)
// and adds the assistant prompt.
func (m *Model) ApplyChat(msgs []Message) (string, error) {
	out := applyTemplate(m.template, msgs, true)
	if out == "" && len(msgs) > 0 {
		return "", fmt.Errorf("apply chat template %q: llama.cpp refused the messages", m.templName)
	}
	return out, nil
}

func applyTemplate(tmpl string, msgs []Message, addAssistant bool) string {
	if len(msgs) == 0 {
		return ""
	}
	// ChatMessage holds C string pointers; keep the Go bytes alive.
	keep := make([][]byte, 0, 2*len(msgs))
	cm := make([]llama.ChatMessage, len(msgs))
	for i, msg := range msgs {
		r := append([]byte(strings.ToValidUTF8(msg.Role, "")), 0)
		c := append([]byte(strings.ReplaceAll(msg.Content, "\x00", "")), 0)
		keep = append(keep, r, c)
		cm[i] = llama.ChatMessage{Role: unsafe.SliceData(r), Content: unsafe.SliceData(c)}
	}
	n := 0
	for _, msg := range msgs {
		n += len(msg.Content) + 64
	}
	buf := make([]byte, 2*n+256)
	got := llama.ChatApplyTemplate(tmpl, cm, addAssistant, buf)
	if got > int32(len(buf)) {
		buf = make([]byte, got)
		got = llama.ChatApplyTemplate(tmpl, cm, addAssistant, buf)
	}
	runtime.KeepAlive(keep)
	if got <= 0 || got > int32(len(buf)) {
		return ""
	}
	return string(buf[:got])
}

// ChatTemplate is what rendering the model's own chat template (with a
// Jinja engine, beside llama.cpp's built-in templates) needs.
type ChatTemplate struct {
	Source   string // tokenizer.chat_template; "" when the GGUF has none
	BOS, EOS string // the texts of the begin and end of stream tokens
	// AddBOS says that tokenizing adds the begin-of-stream token itself:
	// a rendered prompt that starts with BOS must lose it.
	AddBOS bool
}

// ChatTemplate returns the model's chat template and special tokens.
func (m *Model) ChatTemplate() ChatTemplate {
	text := func(t llama.Token) string {
		if t < 0 {
			return ""
		}
		return llama.VocabGetText(m.vocab, t)
	}
	return ChatTemplate{Source: m.templSrc, BOS: text(llama.VocabBOS(m.vocab)), EOS: text(llama.VocabEOS(m.vocab)),
		AddBOS: llama.VocabGetAddBOS(m.vocab)}
}

// Token is a token id of the model's vocabulary.
type Token = llama.Token

// NVocab returns the number of tokens in the vocabulary.
func (m *Model) NVocab() int { return int(llama.VocabNTokens(m.vocab)) }
