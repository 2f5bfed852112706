// Package llm is rbee-worker's inference engine: llama.cpp's shared libraries
// loaded at run time through github.com/hybridgroup/yzma (purego + libffi), so
// the worker stays a pure Go (CGO_ENABLED=0) binary. It loads one model, keeps
// one llama context per slot, and generates tokens with sampling, stop strings
// and per-token cancellation.
package llm
