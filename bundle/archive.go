package bundle

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// maxEntries bounds the entries of an archive, so that a flood of empty
// files cannot exhaust inodes within MaxBytes.
const maxEntries = 100_000

type archiveKind int

const (
	kindTar archiveKind = iota + 1
	kindTgz
	kindZip
)

// sniff tells the archive kind from the first bytes of f, falling back on
// the name only for old tar files, which have no magic.
func sniff(f *os.File) (archiveKind, error) {
	head := make([]byte, 512)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return 0, err
	}
	head = head[:n]
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return kindTgz, nil
	case bytes.HasPrefix(head, []byte("PK\x03\x04")), bytes.HasPrefix(head, []byte("PK\x05\x06")):
		return kindZip, nil
	case len(head) >= 262 && string(head[257:262]) == "ustar":
		return kindTar, nil
	case strings.HasSuffix(strings.ToLower(f.Name()), ".tar"):
		return kindTar, nil
	}
	return 0, errors.New("not a .tgz, .tar.gz, .tar or .zip archive")
}

// extract unpacks the archive name into dir, refusing entries that would
// land outside dir and stopping after maxBytes of file contents.
func extract(ctx context.Context, name, dir string, maxBytes int64) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	kind, err := sniff(f)
	if err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	x := &extractor{ctx: ctx, root: root, max: maxBytes, left: maxBytes}
	switch kind {
	case kindTgz:
		gz, err := gzip.NewReader(ctxReader{ctx, f})
		if err != nil {
			return err
		}
		defer gz.Close()
		return x.tar(gz)
	case kindTar:
		return x.tar(ctxReader{ctx, f})
	default:
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		return x.zip(f, fi.Size())
	}
}

// extractor writes archive entries through an os.Root, which keeps every
// write inside the directory even where earlier entries made links.
type extractor struct {
	ctx     context.Context
	root    *os.Root
	max     int64
	left    int64 // content bytes still allowed
	entries int
}

// entry checks the next entry's name and returns it cleaned; "" for the
// archive's root itself.
func (x *extractor) entry(name string) (string, error) {
	if err := x.ctx.Err(); err != nil {
		return "", err
	}
	x.entries++
	if x.entries > maxEntries {
		return "", fmt.Errorf("more than %d entries", maxEntries)
	}
	if !filepath.IsLocal(filepath.FromSlash(name)) || strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("unsafe path %q in archive", name)
	}
	clean := path.Clean(name)
	if clean == "." {
		return "", nil
	}
	return clean, nil
}

func (x *extractor) tar(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil && !errors.Is(err, tar.ErrInsecurePath) {
			return err
		}
		name, err := x.entry(hdr.Name)
		if err != nil || name == "" {
			if err != nil {
				return err
			}
			continue
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = x.root.MkdirAll(name, 0o755)
		case tar.TypeReg:
			err = x.file(name, tr)
		case tar.TypeSymlink:
			err = x.symlink(name, hdr.Linkname)
		case tar.TypeLink:
			err = x.hardlink(name, hdr.Linkname)
		}
		// Devices, fifos and the like are skipped: no library is one.
		if err != nil {
			return err
		}
	}
}

func (x *extractor) zip(r io.ReaderAt, size int64) error {
	zr, err := zip.NewReader(r, size)
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) {
		return err
	}
	for _, zf := range zr.File {
		name, err := x.entry(zf.Name)
		if err != nil || name == "" {
			if err != nil {
				return err
			}
			continue
		}
		mode := zf.Mode()
		switch {
		case mode.IsDir():
			err = x.root.MkdirAll(name, 0o755)
		case mode&fs.ModeSymlink != 0:
			err = x.zipSymlink(name, zf)
		case mode.IsRegular():
			if zf.UncompressedSize64 > uint64(x.left) {
				return x.tooBig()
			}
			err = x.zipFile(name, zf)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (x *extractor) zipFile(name string, zf *zip.File) error {
	rc, err := zf.Open()
	if err != nil {
		return err
	}
	defer rc.Close()
	return x.file(name, rc)
}

func (x *extractor) zipSymlink(name string, zf *zip.File) error {
	rc, err := zf.Open()
	if err != nil {
		return err
	}
	defer rc.Close()
	target, err := io.ReadAll(io.LimitReader(rc, 4096))
	if err != nil {
		return err
	}
	return x.symlink(name, string(target))
}

func (x *extractor) tooBig() error {
	return fmt.Errorf("archive holds more than %d bytes; raise Options.MaxBytes if that is expected", x.max)
}

// clear makes room for name: its parent directories exist and nothing is
// at name itself, so that a later entry cannot write through an earlier link.
func (x *extractor) clear(name string) error {
	if dir := path.Dir(name); dir != "." {
		if err := x.root.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	if err := x.root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func (x *extractor) file(name string, r io.Reader) error {
	if err := x.clear(name); err != nil {
		return err
	}
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, ctxReader{x.ctx, io.LimitReader(r, x.left+1)})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	x.left -= n
	if x.left < 0 {
		return x.tooBig()
	}
	return nil
}

func (x *extractor) symlink(name, target string) error {
	if target == "" || path.IsAbs(target) || filepath.IsAbs(target) ||
		!filepath.IsLocal(filepath.FromSlash(path.Join(path.Dir(name), target))) {
		return fmt.Errorf("unsafe link %s -> %s in archive", name, target)
	}
	if err := x.clear(name); err != nil {
		return err
	}
	return x.root.Symlink(target, name)
}

func (x *extractor) hardlink(name, target string) error {
	if !filepath.IsLocal(filepath.FromSlash(target)) || strings.HasPrefix(target, "/") {
		return fmt.Errorf("unsafe link %s -> %s in archive", name, target)
	}
	if err := x.clear(name); err != nil {
		return err
	}
	return x.root.Link(path.Clean(target), name)
}
