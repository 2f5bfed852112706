// Package enginefetch gets an engine bundle the way `make engine` does:
// node-llama-cpp's prebuilt llama.cpp package for a platform, fetched from
// the npm registry (or a mirror, or a local archive), checked against its
// pinned sha512 integrity, cached, and prepared as a bundle (see package
// bundle). The queen calls it when no bundle fits a host; internal/cmd/
// getengine is a thin command over it.
package enginefetch
