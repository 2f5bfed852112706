package remote

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/pkg/sftp"
	"github.com/rbee-dev/rbee/internal/watchdog"
)

// SFTP returns the connection's SFTP client, started on first use and
// shared while in use; release says the caller is done with it. A session
// nobody used for Config.SFTPIdle is closed (the host's sftp-server
// exits) and the next use opens another; all close with the Conn.
func (c *Conn) SFTP() (cl *sftp.Client, release func(), err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, nil, fmt.Errorf("sftp on %s: %w", c.name, c.err)
	}
	if c.sftp == nil {
		if err := c.openSFTP(); err != nil {
			return nil, nil, err
		}
	}
	c.sftpUsers++
	var once sync.Once
	return c.sftp, func() {
		once.Do(func() {
			c.mu.Lock()
			c.sftpUsers--
			c.sftpUsed = time.Now()
			c.mu.Unlock()
		})
	}, nil
}

// closeIdleSFTP closes the SFTP session when nobody has used it for the
// idle time (in its own goroutine: a stalled peer is not waited on here).
func (c *Conn) closeIdleSFTP() {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := c.sftp
	if cl == nil || c.sftpUsers > 0 || time.Since(c.sftpUsed) < c.sftpIdle || c.err != nil {
		return
	}
	c.sftp = nil
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		cl.Close()
	}()
}

// openSFTP starts the SFTP session; c.mu is held.
func (c *Conn) openSFTP() error {
	// 128 KiB packets (OpenSSH's sftp-server takes up to 256 KiB) cut the
	// per-packet cost of pushing agents and bundles by four.
	// At most 4 requests in flight per file: with 64 (8 MiB), sshd's
	// copying of its buffers was most of a cold up's CPU.
	opts := []sftp.ClientOption{sftp.UseConcurrentWrites(true), sftp.MaxPacketUnchecked(128 << 10), sftp.MaxConcurrentRequestsPerFile(4)}
	cl, err := sftp.NewClient(c.client, opts...)
	if err != nil && c.err == nil {
		// A server that closes silent channels (ChannelTimeout) may close
		// one that opens slowly on a busy host: once more.
		cl, err = sftp.NewClient(c.client, opts...)
	}
	if err != nil {
		return fmt.Errorf("sftp on %s: %w", c.name, err)
	}
	c.sftp, c.sftpUsed = cl, time.Now()
	// The server may close the channel on its own (sshd's ChannelTimeout
	// closes an idle sftp session): forgotten then, the next use opens a
	// new one, where every later push failed with "connection lost".
	c.wg.Add(1) // c.err is nil under c.mu: Close has not begun
	go func() {
		defer c.wg.Done()
		_ = cl.Wait()
		c.mu.Lock()
		if c.sftp == cl {
			c.sftp = nil
		}
		c.mu.Unlock()
	}()
	return nil
}

// Upload writes size bytes from r to remotePath with mode, atomically: into
// remotePath.tmp-<random> first (parents made 0700 as needed), synced where
// the server supports fsync, its size checked, then renamed over
// remotePath. It returns the SHA-256 of what was sent. On any error, or
// when ctx ends, the temporary file is removed and remotePath is left as
// it was. A size below 0 means unknown (not checked). A path starting with
// "~/" or relative is under the remote home.
func (c *Conn) Upload(ctx context.Context, r io.Reader, size int64, remotePath string, mode os.FileMode) (string, error) {
	sum, err := c.upload(ctx, r, size, remotePath, mode)
	if err != nil {
		return "", fmt.Errorf("upload to %s:%s: %w", c.name, remotePath, err)
	}
	return sum, nil
}

func (c *Conn) upload(ctx context.Context, r io.Reader, size int64, remotePath string, mode os.FileMode) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	dst := strings.TrimPrefix(remotePath, "~/")
	if dst == "" || strings.HasSuffix(dst, "/") {
		return "", errors.New("no file name")
	}
	cl, release, err := c.SFTP()
	if err != nil {
		return "", err
	}
	defer release()
	if err := mkdirAll(cl, path.Dir(dst)); err != nil {
		return "", err
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", err
	}
	tmp := dst + ".tmp-" + hex.EncodeToString(rnd[:])
	f, err := cl.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return "", c.errOr(err)
	}
	done := false
	defer func() {
		if !done {
			f.Close()
			_ = cl.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return "", c.errOr(err)
	}
	h := sha256.New()
	src := &ctxReader{ctx: ctx, r: r, h: h}
	var n int64
	if size >= 0 {
		// A LimitedReader lets the client keep many writes in flight.
		n, err = f.ReadFrom(&io.LimitedReader{R: src, N: size})
		if err == nil && n == size {
			// The source must end where it said it would.
			var one [1]byte
			if m, _ := io.ReadFull(src, one[:]); m > 0 {
				return "", fmt.Errorf("source is longer than %d bytes", size)
			}
		}
	} else {
		n, err = f.ReadFrom(src)
	}
	if cerr := ctx.Err(); cerr != nil {
		return "", cerr
	}
	if err != nil {
		return "", c.errOr(err)
	}
	if size >= 0 && n != size {
		return "", fmt.Errorf("source ended after %d of %d bytes", n, size)
	}
	if err := f.Sync(); err != nil && !isUnsupported(err) {
		return "", c.errOr(err)
	}
	fi, err := f.Stat()
	if err != nil {
		return "", c.errOr(err)
	}
	if fi.Size() != n {
		return "", fmt.Errorf("remote file has %d bytes, sent %d", fi.Size(), n)
	}
	if err := f.Chmod(mode.Perm()); err != nil {
		return "", c.errOr(err)
	}
	if err := f.Close(); err != nil {
		return "", c.errOr(err)
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if err := cl.PosixRename(tmp, dst); err != nil {
		if !isUnsupported(err) {
			return "", c.errOr(err)
		}
		// Plain SFTP rename refuses an existing target.
		_ = cl.Remove(dst)
		if err := cl.Rename(tmp, dst); err != nil {
			return "", c.errOr(err)
		}
	}
	done = true
	return hex.EncodeToString(h.Sum(nil)), nil
}

func isUnsupported(err error) bool {
	var se *sftp.StatusError
	return errors.Is(err, sftp.ErrSSHFxOpUnsupported) || errors.As(err, &se) && se.FxCode() == sftp.ErrSSHFxOpUnsupported
}

// mkdirAll makes dir and its missing parents, each 0700; existing ones are
// left as they are.
func mkdirAll(cl *sftp.Client, dir string) error {
	if dir == "" || dir == "." || dir == "/" {
		return nil
	}
	fi, err := cl.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		return nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("stat %s: %w", dir, err)
	}
	if err := mkdirAll(cl, path.Dir(dir)); err != nil {
		return err
	}
	if err := cl.Mkdir(dir); err != nil {
		if fi, serr := cl.Stat(dir); serr == nil && fi.IsDir() {
			return nil // made meanwhile by another upload
		}
		return fmt.Errorf("mkdir %s: %w", dir, err)
	}
	if err := cl.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("chmod %s: %w", dir, err)
	}
	return nil
}

// ctxReader hashes what it reads, reports each read as progress on ctx,
// and stops when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
	h   hash.Hash
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	c.h.Write(p[:n])
	watchdog.Alive(c.ctx) // the link moves: silence bounds keep waiting
	return n, err
}
