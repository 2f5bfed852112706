package provision

import (
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sync"

	"github.com/rbee-dev/rbee/internal/watchdog"
	"github.com/rbee-dev/rbee/remote"
)

// A push sends the agent, the worker and the engine's libraries gzipped
// when the host has gzip: 40 MB a host became about 13 (the binaries
// compress to 41 %, the libraries to 36 %). Each file is compressed once
// per content into a cache directory (<sha256>.gz, made under a temporary
// name and renamed) and streamed from there to every host, where gzip -dc
// writes a temporary file that is checked against the file's SHA-256
// before it takes its name. A copy that does not check out is dropped
// from the cache and the file sent as it is over SFTP.

// unpackScript receives a gzipped file on stdin: $1 the path, $2 its
// sha256, $3 its mode (octal). It is a constant: the paths are arguments,
// never pasted into it. Exit 3: what arrived does not match.
const unpackScript = `set -e; umask 077; t="$1.tmp-$$"; trap 'rm -f "$t"' EXIT; mkdir -p "${1%/*}"; gzip -dc > "$t"; ` +
	`s=$(sha256sum "$t"); [ "${s%% *}" = "$2" ] || { echo "sha256 of what arrived is ${s%% *}, $2 expected" >&2; exit 3; }; ` +
	`chmod "$3" "$t"; mv -f "$t" "$1"; trap - EXIT`

// errUnpacked: the host unpacked something else than the file's content.
var errUnpacked = errors.New("the gzipped copy does not match")

// packLocks make one compression per cached copy: hosts pushed at once
// wait for the first.
var packLocks = struct {
	sync.Mutex
	m map[string]*sync.Mutex
}{m: map[string]*sync.Mutex{}}

// packed returns the gzipped copy of f in dir, making it when it is not
// there, and its size.
func packed(dir string, f file) (string, int64, error) {
	p := filepath.Join(dir, f.sum+".gz")
	packLocks.Lock()
	mu := packLocks.m[p]
	if mu == nil {
		mu = &sync.Mutex{}
		packLocks.m[p] = mu
	}
	packLocks.Unlock()
	mu.Lock()
	defer mu.Unlock()
	if st, err := os.Stat(p); err == nil {
		return p, st.Size(), nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", 0, fmt.Errorf("pack %s: %w", filepath.Base(f.src), err)
	}
	in, err := os.Open(f.src)
	if err != nil {
		return "", 0, fmt.Errorf("pack %s: %w", filepath.Base(f.src), err)
	}
	defer in.Close()
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", 0, err
	}
	tmp := p + ".tmp-" + hex.EncodeToString(rnd[:])
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", 0, fmt.Errorf("pack %s: %w", filepath.Base(f.src), err)
	}
	defer os.Remove(tmp) // after the rename: nothing
	zw := gzip.NewWriter(out)
	_, err = io.Copy(zw, in)
	if err == nil {
		err = zw.Close()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		return "", 0, fmt.Errorf("pack %s: %w", filepath.Base(f.src), err)
	}
	st, err := os.Stat(p)
	if err != nil {
		return "", 0, err
	}
	return p, st.Size(), nil
}

// sendPacked streams the gzipped copy gz of f to the host, which unpacks
// and checks it.
func sendPacked(ctx context.Context, c *remote.Conn, f file, gz string, mt *meter) error {
	in, err := os.Open(gz)
	if err != nil {
		return fmt.Errorf("push %s: %w", filepath.Base(f.src), err)
	}
	defer in.Close()
	_, err = c.Run(ctx, []string{"sh", "-c", unpackScript, "sh", f.dst, f.sum, fmt.Sprintf("%o", f.mode.Perm())},
		aliveReader{ctx: ctx, r: counted{in, mt}})
	var ee *remote.ExitError
	if errors.As(err, &ee) && ee.Status == 3 {
		return fmt.Errorf("push %s: %w: %w", filepath.Base(f.src), errUnpacked, err)
	}
	if err != nil {
		return fmt.Errorf("push %s: %w", filepath.Base(f.src), err)
	}
	return nil
}

// aliveReader reports each read as progress on ctx (a wait bounded by
// silence goes on while bytes flow).
type aliveReader struct {
	ctx context.Context
	r   io.Reader
}

func (a aliveReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		watchdog.Alive(a.ctx)
	}
	return n, err
}

// canPack reports whether f may go gzipped: a file of this machine to an
// absolute path on the host.
func canPack(f file) bool { return f.data == nil && f.src != "" && path.IsAbs(f.dst) }
