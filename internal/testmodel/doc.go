// Package testmodel builds the GGUF models rbee's tests and benchmarks run on:
// the alphabet model, whose weights make greedy decoding continue the
// alphabet ("abc" → "defg…z" then end of stream), and random-weight llama
// models of chosen sizes. All use a byte-level vocabulary, so any text
// tokenizes without a trained tokenizer.
package testmodel
