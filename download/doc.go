// Package download fetches models onto the machine that runs them: it parses
// model references (https URLs and hf:ORG/REPO[/FILE] Hugging Face refs),
// asks the hub what a file is before fetching it (size, sha256, and the
// memory a GGUF needs, read from its header with Range requests), and
// downloads into a content-addressed store with resume, retries, a stall
// timeout, a free-space check and sha256 verification, so that only a whole,
// verified file ever appears under blobs/.
package download
