package provision

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/rbee-dev/rbee/remote"
)

// ModelPath is where a model pushed from the keeper's machine lives on the
// host: content-addressed, so the same file is pushed once.
func (l Layout) ModelPath(sha256 string) string {
	return path.Join(l.RbeeDir(), "models", "sha256-"+sha256+".gguf")
}

// Progress reports bytes pushed so far.
type Progress func(done, total int64, rate float64)

// PushModel copies a local model to the host, resuming a partial copy a
// previous push left behind, and verifies its sha256 there before it takes
// its final name. It returns the path on the host.
func PushModel(ctx context.Context, c *remote.Conn, l Layout, local, sha string, progress Progress) (string, error) {
	f, err := os.Open(local)
	if err != nil {
		return "", fmt.Errorf("push model: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	return PushModelFrom(ctx, c, l, f, st.Size(), sha, progress)
}

// PushModelFrom is PushModel from any seekable source of size bytes: a
// file here, or a model on another hive read over its SSH connection (a
// hive-to-hive copy).
func PushModelFrom(ctx context.Context, c *remote.Conn, l Layout, f io.ReadSeeker, size int64, sha string, progress Progress) (string, error) {
	dst := l.ModelPath(sha)
	sums, err := remoteSums(ctx, c, []string{dst})
	if err != nil {
		return "", err
	}
	if sums[dst] == sha {
		return dst, nil
	}
	st := sized(size)
	partial := dst + ".partial"
	sc, release, err := c.SFTP()
	if err != nil {
		return "", fmt.Errorf("push model: %w", err)
	}
	defer release()
	if err := sc.MkdirAll(path.Dir(dst)); err != nil {
		return "", fmt.Errorf("push model: %w", err)
	}
	var have int64
	if fi, err := sc.Stat(partial); err == nil && fi.Size() <= st.Size() {
		have = fi.Size() // resume where the last push stopped
	}
	if err := checkPushSpace(ctx, c, path.Dir(dst), partial, st.Size()-have); err != nil {
		return "", err
	}
	// A push that fails for any reason but cancellation removes what it
	// wrote: a partial copy on a full disk would fail every later push.
	done := have
	failed := func(err error) (string, error) {
		full := diskFull(context.WithoutCancel(ctx), c, path.Dir(dst), st.Size()-done)
		_ = sc.Remove(partial)
		if full != nil {
			return "", full
		}
		return "", fmt.Errorf("push model: %w; the partial copy was removed", err)
	}
	out, err := sc.OpenFile(partial, os.O_WRONLY|os.O_CREATE)
	if err != nil {
		return failed(err)
	}
	if _, err := out.Seek(have, io.SeekStart); err != nil {
		out.Close()
		return "", fmt.Errorf("push model: %w", err)
	}
	if _, err := f.Seek(have, io.SeekStart); err != nil {
		out.Close()
		return "", err
	}
	start, last := time.Now(), time.Time{} // the first chunk is reported at once
	buf := make([]byte, 1<<20)
	for done < st.Size() {
		if err := ctx.Err(); err != nil {
			out.Close()
			return "", err // the partial file stays for the next push to resume
		}
		n, rerr := f.Read(buf)
		if n > 0 {
			if _, err := out.Write(buf[:n]); err != nil {
				out.Close()
				return failed(err)
			}
			done += int64(n)
			if progress != nil && (time.Since(last) > 200*time.Millisecond || done == st.Size()) {
				// at most five reports a second, and the last one
				last = time.Now()
				progress(done, st.Size(), float64(done-have)/time.Since(start).Seconds())
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			out.Close()
			return "", rerr
		}
	}
	if err := out.Close(); err != nil {
		return failed(err)
	}
	// Verify on the host, then take the final name.
	got, err := c.Run(ctx, []string{"sh", "-c", `s=$(sha256sum "$1") || exit 1; printf '%s\n' "${s%% *}"`, "sh", partial}, nil)
	if err != nil {
		return "", fmt.Errorf("verify model: %w", err)
	}
	if s := strings.TrimSpace(string(got)); s != sha {
		_, _ = c.Run(context.WithoutCancel(ctx), []string{"rm", "-f", partial}, nil)
		return "", fmt.Errorf("verify model: sha256 on the host is %s, want %s (size %s); the partial copy was removed", s, sha, strconv.FormatInt(done, 10))
	}
	if err := sc.PosixRename(partial, dst); err != nil {
		return "", fmt.Errorf("push model: %w", err)
	}
	return dst, nil
}

// sized stands in for a FileInfo where only the size is known.
type sized int64

func (s sized) Size() int64 { return int64(s) }
