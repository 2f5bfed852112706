// Command mkmodels writes rbee's generated test and benchmark models (dev
// tooling for `make models`): the alphabet model, a ~3M random model for
// tests, and a ~75M random model in F32, Q8_0 and Q4_K_M for benchmarks,
// quantized with llama.cpp's own quantizer through the engine bundle.
package main
