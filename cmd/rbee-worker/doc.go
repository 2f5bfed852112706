// Command rbee-worker loads one GGUF model into llama.cpp (an engine bundle
// loaded at run time, no cgo) and serves it over HTTP: GET /health and the
// OpenAI-compatible /v1/completions and /v1/chat/completions. The hive agent
// starts it; people can too. With --rpc it splits the model's layers over
// llama.cpp rpc-servers (of the same engine bundle) beside its own device.
//
// It prints one JSON line to stdout when it listens and one when the model is
// ready; logs go to stderr. Exit codes: 0 after a clean shutdown, 1 when the
// engine or model cannot be loaded, the server fails or an RPC server is
// lost while idle, 2 for bad flags; 134 (SIGABRT) when llama.cpp aborts,
// which it does when an RPC server is lost while it computes.
package main
