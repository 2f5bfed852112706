// Package llm is rbee-worker's inference engine: llama.cpp's shared libraries
// loaded at run time through github.com/hybridgroup/yzma (purego + libffi), so
// the worker stays a pure Go (CGO_ENABLED=0) binary. It loads one model into
// one llama context whose KV cache holds a sequence per slot, and runs one
// decode loop that batches the next token of every generating slot with a
// chunk of any new prompt (continuous batching), on one thread pool. A slot
// keeps its last sequence's KV, so a prompt sharing a prefix with it decodes
// only its new tokens. Sampling, stop strings and cancellation are per slot.
// With llama.cpp's RPC backend in the bundle, a model's layers can be split
// over this process's device and rpc-servers on other hosts (ModelOptions.RPC),
// and WatchRPC notices a lost server.
package llm
