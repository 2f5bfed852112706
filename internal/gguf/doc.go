// Package gguf writes GGUF model files: metadata key/values and F32 tensors.
//
// It is development tooling for generating test and benchmark models (see
// internal/testmodel); it is not shipped in any rbee binary. Reading GGUF
// headers is done with github.com/gpustack/gguf-parser-go elsewhere.
package gguf
