// Package bundle prepares and checks engine bundles: directories holding
// llama.cpp's shared libraries (libllama, libggml, libggml-base and the ggml
// backend plugins, and llama.cpp's rpc-server where the bundle has the RPC
// backend) ready for rbee-worker to load, described by a manifest of
// names, sizes and SHA-256 sums. Prepare builds one from a directory or an
// archive such as node-llama-cpp's npm package; Validate and Manifest.Quick
// check one before use.
package bundle
