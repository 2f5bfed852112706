// Command rbee-worker loads one GGUF model into llama.cpp (an engine bundle
// loaded at run time, no cgo) and serves it over HTTP: GET /health and the
// OpenAI-compatible /v1/completions and /v1/chat/completions. The hive agent
// starts it; people can too.
//
// It prints one JSON line to stdout when it listens and one when the model is
// ready; logs go to stderr. Exit codes: 0 after a clean shutdown, 1 when the
// engine or model cannot be loaded or the server fails, 2 for bad flags.
package main
