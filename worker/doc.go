// Package worker is rbee-worker's HTTP server: the worker contract (GET
// /health, 503 while loading and 200 when ready) and the OpenAI-compatible
// completion and embedding endpoints, streaming over SSE, on top of package
// llm. Requests beyond the worker's slots wait in a bounded queue; beyond
// that they get 503 with Retry-After. Input llama.cpp cannot take is refused
// with 400 before it reaches the engine. docs/worker.md has the rules.
package worker
