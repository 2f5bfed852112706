package fleet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/provision"
)

// copyFromPeer looks for another hive that already holds ref and, when one
// does, copies the model from it to target over the queen's connections
// instead of downloading it again. Chosen whenever a connected hive (or this
// machine's) has the same reference in its catalog: a copy inside your own
// network beats the internet, and the hub is not asked twice. The copy is
// verified against the source's sha256 on the target.
func (f *Fleet) copyFromPeer(ctx context.Context, target *Conn, raw string, ev Events) (hiveapi.Model, bool, error) {
	var peers []*Conn
	for _, h := range f.pool.connected() {
		if h != target {
			peers = append(peers, h)
		}
	}
	for _, src := range peers {
		ms, err := src.client.Models(ctx)
		if err != nil {
			continue
		}
		for _, m := range ms {
			if m.Ref != raw || m.SHA256 == "" {
				continue
			}
			ev.Send(rbee.Narrate(me, "model_copy", fmt.Sprintf("hive %s already holds %s: copying it to hive %s instead of downloading (%s)",
				src.name, raw, target.name, rbee.Bytes(uint64(m.Size)))))
			r, closeSrc, err := openOnHive(src, m.Path)
			if err != nil {
				continue
			}
			progress := func(done, total int64, rate float64) {
				ev.Send(rbee.Event{Type: rbee.EventProgress, Actor: me, Action: "model_copy", BytesDone: done, BytesTotal: total, Rate: rate,
					Message: fmt.Sprintf("copied %s of %s (%s/s)", rbee.Bytes(uint64(done)), rbee.Bytes(uint64(total)), rbee.Bytes(uint64(rate)))})
			}
			var dst string
			if target.remote != nil {
				dst, err = provision.PushModelFrom(ctx, target.remote.conn, target.remote.layout, r, m.Size, m.SHA256, progress)
			} else {
				dst, err = f.copyToLocal(ctx, r, m, progress)
			}
			closeSrc()
			if err != nil {
				return hiveapi.Model{}, false, rbee.Errorf(rbee.CodeHiveDown, "copy %s from hive %s to hive %s: %w", raw, src.name, target.name, err)
			}
			nm, err := target.client.AddModel(ctx, hiveapi.AddModelRequest{Path: dst, Ref: raw, Alias: m.Alias})
			if err != nil {
				return hiveapi.Model{}, false, HiveError(err)
			}
			return nm, true, nil
		}
	}
	return hiveapi.Model{}, false, nil
}

// openOnHive opens a file on a hive for reading: over SFTP for a remote
// hive, directly for this machine's.
func openOnHive(h *Conn, p string) (io.ReadSeeker, func(), error) {
	if h.remote == nil {
		f, err := os.Open(p)
		if err != nil {
			return nil, nil, err
		}
		return f, func() { f.Close() }, nil
	}
	sc, release, err := h.remote.conn.SFTP()
	if err != nil {
		return nil, nil, err
	}
	f, err := sc.Open(p)
	if err != nil {
		release()
		return nil, nil, err
	}
	return f, func() { f.Close(); release() }, nil
}

// copyToLocal writes a model into the local hive's models directory,
// verified, under a temporary name first.
func (f *Fleet) copyToLocal(ctx context.Context, r io.Reader, m hiveapi.Model, progress provision.Progress) (string, error) {
	dir := filepath.Join(string(f.cfg.Home), "models")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	dst := filepath.Join(dir, "sha256-"+m.SHA256+".gguf")
	tmp, err := os.CreateTemp(dir, ".copy-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	start := time.Now()
	var done int64
	buf := make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			tmp.Close()
			return "", err
		}
		n, rerr := r.Read(buf)
		if n > 0 {
			if _, err := tmp.Write(buf[:n]); err != nil {
				tmp.Close()
				return "", err
			}
			h.Write(buf[:n])
			done += int64(n)
			progress(done, m.Size, float64(done)/time.Since(start).Seconds())
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			tmp.Close()
			return "", rerr
		}
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != m.SHA256 {
		return "", fmt.Errorf("sha256 of the copy is %s, want %s", got, m.SHA256)
	}
	return dst, os.Rename(tmp.Name(), dst)
}
