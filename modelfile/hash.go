package modelfile

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
)

// hashChunk is how much is read between checks of ctx: large enough for
// full read throughput, small enough that cancelling a multi-GB hash takes
// effect within milliseconds.
const hashChunk = 1 << 20

// Hash streams the file at path through sha256 and returns the digest in
// lowercase hex. ctx bounds the whole call and is checked between chunks.
func Hash(ctx context.Context, path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hash model: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, hashChunk)
	for {
		if err := ctx.Err(); err != nil {
			return "", fmt.Errorf("hash %s: %w", path, err)
		}
		n, err := f.Read(buf)
		h.Write(buf[:n])
		if err != nil {
			if err == io.EOF {
				return hex.EncodeToString(h.Sum(nil)), nil
			}
			return "", fmt.Errorf("hash %s: %w", path, err)
		}
	}
}
