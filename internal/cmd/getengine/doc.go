// Command getengine fetches the llama.cpp CPU build that rbee develops
// against — node-llama-cpp's pinned npm package for this machine's
// platform (linux/amd64 is the one pinned today), checked against its
// pinned sha512 integrity and cached — and prepares it as an engine bundle.
// With -rpc it also builds llama.cpp's RPC backend and server from the same
// release's source (scripts/rpc.sh) and adds them to the bundle.
// It is development tooling behind `make engine`, a thin command over
// package enginefetch, not part of any rbee binary.
package main
