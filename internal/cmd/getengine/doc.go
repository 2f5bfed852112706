// Command getengine fetches the llama.cpp CPU build that rbee develops
// against — node-llama-cpp's pinned linux-x64 npm package, checked against
// its pinned sha512 integrity and cached — and prepares it as an engine
// bundle. It is development tooling behind `make engine`, a thin command
// over package enginefetch, not part of any rbee binary.
package main
