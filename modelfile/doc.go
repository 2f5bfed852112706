// Package modelfile reads what the hive needs to know about a GGUF model file:
// its architecture, quantization, shape and the memory a worker needs to run
// it, all from the header, plus the sha256 that content-addresses it.
// Header parsing is done by github.com/gpustack/gguf-parser-go, guarded so that
// a hostile or damaged file yields ErrNotGGUF instead of a panic.
package modelfile
