package provision

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rbee-dev/rbee"
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
	RemoveLeftovers(ctx, c)
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
		gone := removePartial(ctx, c, partial, done)
		var re *rbee.Error
		if errors.As(full, &re) {
			re.Message += "; " + gone
			return "", re
		}
		return "", fmt.Errorf("push model: %w; %s", err, gone)
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
		gone := removePartial(ctx, c, partial, done)
		return "", fmt.Errorf("verify model: sha256 on the host is %s, want %s (size %s); %s", s, sha, strconv.FormatInt(done, 10), gone)
	}
	if err := sc.PosixRename(partial, dst); err != nil {
		return "", fmt.Errorf("push model: %w", err)
	}
	return dst, nil
}

// removeTimeout bounds the removal of a failed push's partial copy: the
// connection that failed may be one that stalls.
const removeTimeout = 10 * time.Second

// removePartial removes a failed push's partial copy from the host and
// says what became of it. When the host cannot be told (the connection is
// gone or stalls), the copy is remembered and the next push to the host,
// or the next connection's start, removes it; meanwhile the message says
// where it is.
func removePartial(ctx context.Context, c *remote.Conn, partial string, size int64) string {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removeTimeout)
	defer cancel()
	_, err := c.Run(rctx, []string{"rm", "-f", "--", partial}, nil)
	if err == nil {
		return "the partial copy was removed"
	}
	remember(hostKey(c), partial)
	return fmt.Sprintf("the partial copy (%s) could not be removed (%v): it stays at %s:%s, and the next push or connection to the host removes it",
		rbee.Bytes(uint64(max(size, 0))), err, c.Resolved().Host, partial)
}

// leftovers are the partial copies failed pushes could not remove, by
// host (hostKey).
var leftovers = struct {
	sync.Mutex
	m map[string]map[string]bool
}{m: map[string]map[string]bool{}}

// hostKey names the account a connection reaches: user@host:port.
func hostKey(c *remote.Conn) string {
	r := c.Resolved()
	return r.User + "@" + r.Addr
}

// RemoveLeftovers removes from the host the partial copies that failed
// pushes over an earlier connection could not remove. They are taken off
// the list first, so that two callers never remove one twice (the second
// could pull a new push's file from under it); what cannot be removed now
// goes back on it.
func RemoveLeftovers(ctx context.Context, c *remote.Conn) {
	host := hostKey(c)
	leftovers.Lock()
	paths := slices.Sorted(maps.Keys(leftovers.m[host]))
	delete(leftovers.m, host)
	leftovers.Unlock()
	if len(paths) == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, removeTimeout)
	defer cancel()
	if _, err := c.Run(rctx, append([]string{"rm", "-f", "--"}, paths...), nil); err != nil {
		remember(host, paths...)
	}
}

// remember puts partial copies on host's list of leftovers.
func remember(host string, paths ...string) {
	leftovers.Lock()
	defer leftovers.Unlock()
	if leftovers.m[host] == nil {
		leftovers.m[host] = map[string]bool{}
	}
	for _, p := range paths {
		leftovers.m[host][p] = true
	}
}

// sized stands in for a FileInfo where only the size is known.
type sized int64

func (s sized) Size() int64 { return int64(s) }
