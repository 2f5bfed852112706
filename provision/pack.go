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

	"github.com/rbee-dev/rbee/remote"
)

// A push sends the agent, the worker and the engine's libraries gzipped
// when the host has gzip: 40 MB a host became about 13 (the binaries
// compress to 41 %, the libraries to 36 %). Each file is compressed once
// per content into a cache directory (<sha256>.gz, made under a temporary
// name and renamed). A push uploads the gzipped copies it needs over SFTP
// (pipelined: an exec channel's stdin carried a third as much) into a
// staging directory on the host, then one remote command unpacks each into
// a temporary file, checks it against the file's SHA-256, and gives it its
// name. A copy that does not check out is dropped from the cache and the
// files sent as they are.

// unpackScript unpacks a push: $1 the staging directory (removed at the
// end, whatever happens), then for each file its gzipped copy, its path,
// its sha256 and its mode (octal). It is a constant: the paths are
// arguments, never pasted into it. Exit 3: what a copy unpacked to does
// not match.
const unpackScript = `set -e; umask 077; stage=$1; shift; ` +
	// A dot a second keeps the channel busy: sshd's ChannelTimeout closes
	// a session that stays silent while a big file unpacks.
	`( while :; do echo .; sleep 1 </dev/null >/dev/null 2>&1; done ) & tick=$!; trap 'kill $tick 2>/dev/null; rm -rf "$stage"' EXIT; ` +
	`while [ $# -ge 4 ]; do z=$1; d=$2; s=$3; m=$4; shift 4; t="$d.tmp-$$"; mkdir -p "${d%/*}"; ` +
	`gzip -dc < "$z" > "$t" || { rm -f "$t"; exit 1; }; h=$(sha256sum "$t"); ` +
	`if [ "${h%% *}" != "$s" ]; then rm -f "$t"; echo "$d: sha256 of what arrived is ${h%% *}, $s expected" >&2; exit 3; fi; ` +
	`chmod "$m" "$t"; mv -f "$t" "$d"; done`

var (
	// errUnpacked: the host unpacked something else than a file's content
	// (the cached copies are dropped).
	errUnpacked = errors.New("a gzipped copy does not match its file")
	// errUnpack: unpacking failed on the host for another reason.
	errUnpack = errors.New("unpacking failed")
)

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

// sendPacked pushes files as their gzipped copies: uploaded into a
// staging directory beside the first file, then unpacked and checked by
// one remote command.
func sendPacked(ctx context.Context, c *remote.Conn, files []file, pack string, mt *meter) error {
	if len(files) == 0 {
		return nil
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	stage := path.Join(path.Dir(files[0].dst), ".incoming-"+hex.EncodeToString(rnd[:]))
	args := []string{"sh", "-c", unpackScript, "sh", stage}
	gzs := make([]file, len(files))
	for i, f := range files {
		gz, _, err := packed(pack, f)
		if err != nil {
			return err
		}
		sum, err := cachedSHA256(gz)
		if err != nil {
			return err
		}
		z := path.Join(stage, fmt.Sprintf("%d.gz", i))
		gzs[i] = file{src: gz, dst: z, mode: 0o600, sum: sum}
		args = append(args, z, f.dst, f.sum, fmt.Sprintf("%o", f.mode.Perm()))
	}
	if err := uploadAll(ctx, c, gzs, &sender{mt: mt}); err != nil {
		// What reached the stage goes with it.
		_, _ = c.Run(context.WithoutCancel(ctx), []string{"rm", "-rf", "--", stage}, nil)
		return err
	}
	_, err := c.Run(ctx, args, nil)
	var ee *remote.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee) && ee.Status == 3:
		return fmt.Errorf("push: %w: %w", errUnpacked, err)
	case ctx.Err() == nil && c.Err() == nil:
		// The session ended some other way (a server that closed it, a
		// host without room for both copies): the files go as they are.
		_, _ = c.Run(context.WithoutCancel(ctx), []string{"rm", "-rf", "--", stage}, nil)
		return fmt.Errorf("push: unpack: %w: %w", errUnpack, err)
	default:
		return fmt.Errorf("push: unpack: %w", err)
	}
}

// canPack reports whether f may go gzipped: a file of this machine to an
// absolute path on the host.
func canPack(f file) bool { return f.data == nil && f.src != "" && path.IsAbs(f.dst) }
