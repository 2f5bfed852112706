package llm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync"
	"unsafe"

	"github.com/hybridgroup/yzma/pkg/llama"
)

// ErrModelFile means the model file is missing, unreadable or not GGUF.
var ErrModelFile = errors.New("model file")

// ErrPromptTooLong means the prompt does not fit the context.
var ErrPromptTooLong = errors.New("prompt too long")

// FallbackChatTemplate is the built-in llama.cpp template used when a model
// carries no chat template, or one llama.cpp cannot apply: ChatML, the most
// widely understood format.
const FallbackChatTemplate = "chatml"

// ModelOptions configure LoadModel.
type ModelOptions struct {
	Device  string // "", "auto", "cpu" or a device name such as "CUDA0"
	CtxSize int    // context tokens per slot; 0 = min(model's training context, 4096)
	Threads int    // generation threads; 0 = one per physical (performance) core, as llama.cpp chooses
	Slots   int    // parallel sequences (one llama context each); 0 = 1
}

// Model is a loaded model and its per-slot contexts.
type Model struct {
	Path      string
	Device    string
	CtxSize   int
	Threads   int
	model     llama.Model
	vocab     llama.Vocab
	template  string
	templName string // "model" or FallbackChatTemplate
	desc      string
	params    uint64
	size      uint64
	sessions  chan *Session
	all       []*Session
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

// LoadModel loads the GGUF model at path and creates opt.Slots contexts.
func (e *Engine) LoadModel(path string, opt ModelOptions) (*Model, error) {
	if err := CheckGGUF(path); err != nil {
		return nil, err
	}
	devName, dev, err := e.resolveDevice(opt.Device)
	if err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	mp := llama.ModelDefaultParams()
	devs := []llama.GGMLBackendDevice{dev, 0}
	if dev == 0 {
		mp.SetCPUOnly()
	} else {
		mp.NGpuLayers = 999
		if err := mp.SetDevices(devs); err != nil {
			return nil, fmt.Errorf("load model: %w", err)
		}
	}
	mdl, err := llama.ModelLoadFromFile(path, mp)
	runtime.KeepAlive(devs)
	if err != nil {
		return nil, fmt.Errorf("%w %s: llama.cpp could not load it (corrupt or unsupported architecture)", ErrModelFile, path)
	}
	m := &Model{Path: path, Device: devName, model: mdl, vocab: llama.ModelGetVocab(mdl)}
	m.desc = llama.ModelDesc(mdl)
	m.params = llama.ModelNParams(mdl)
	m.size = llama.ModelSize(mdl)
	m.template = llama.ModelChatTemplate(mdl, "")
	m.templName = "model"
	if m.template == "" || applyTemplate(m.template, []Message{{Role: "user", Content: "x"}}, true) == "" {
		m.template, m.templName = FallbackChatTemplate, FallbackChatTemplate
	}
	m.CtxSize = opt.CtxSize
	if m.CtxSize <= 0 {
		m.CtxSize = int(min(llama.ModelNCtxTrain(mdl), 4096))
	}
	m.Threads = opt.Threads
	if m.Threads <= 0 {
		m.Threads = int(llama.Threads())
	}
	slots := max(opt.Slots, 1)
	m.sessions = make(chan *Session, slots)
	for i := 0; i < slots; i++ {
		s, err := m.newSession(i)
		if err != nil {
			m.Close()
			return nil, err
		}
		m.all = append(m.all, s)
		m.sessions <- s
	}
	return m, nil
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
func (m *Model) Slots() int { return cap(m.sessions) }

// Acquire takes a free slot, or returns nil when none is free.
func (m *Model) Acquire() *Session {
	select {
	case s := <-m.sessions:
		return s
	default:
		return nil
	}
}

// AcquireWait takes a free slot, waiting until one frees or done closes.
func (m *Model) AcquireWait(done <-chan struct{}) *Session {
	select {
	case s := <-m.sessions:
		return s
	case <-done:
		return nil
	}
}

// Release returns a slot taken with Acquire.
func (m *Model) Release(s *Session) { m.sessions <- s }

// Close frees every context and the model. No session may be in use.
func (m *Model) Close() {
	m.closeOnce.Do(func() {
		for _, s := range m.all {
			llama.Free(s.ctx)
		}
		llama.ModelFree(m.model)
	})
}

// Tokenize turns text into tokens, adding BOS when the model wants it.
func (m *Model) Tokenize(text string, addSpecial bool) []llama.Token {
	return llama.Tokenize(m.vocab, text, addSpecial, true)
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
