package provision

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/internal/sshtest"
)

// compressible is data gzip shrinks to about a quarter, like code.
func compressible(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		b.WriteString(strings.Repeat("mov rax, ", i%7+1))
		b.WriteString(hex.EncodeToString([]byte{byte(i), byte(i >> 8), byte(i * 31)}))
	}
	return b.Bytes()[:n]
}

// TestPushPacked: with a pack directory and gzip on the host, files go
// gzipped (the link carries far fewer bytes than the files hold), land
// whole with their mode, and the gzipped copy is made once and reused. A
// cached copy that unpacks to something else is dropped and the file sent
// as it is.
func TestPushPacked(t *testing.T) {
	if err := sshtest.Available(); err != nil {
		t.Fatalf("SSH hosts cannot run here: %v", err)
	}
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	c := dial(t, h)
	p, err := ProbeHost(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Gzip {
		t.Fatalf("probe found no gzip on the host: %+v", p)
	}
	src := t.TempDir()
	var files []file
	var raw int64
	for i, mode := range []os.FileMode{0o755, 0o644} {
		data := compressible(3<<20 + i)
		name := filepath.Join(src, []string{"rbee-hive", "libllama.so"}[i])
		if err := os.WriteFile(name, data, mode); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		files = append(files, file{src: name, dst: filepath.Join(h.Home, ".rbee", "t", filepath.Base(name)), mode: mode, sum: hex.EncodeToString(sum[:])})
		raw += int64(len(data))
	}
	pack := t.TempDir()
	var wire int64
	s := &sender{mt: &meter{report: func(done, total int64) { wire = total }}, pack: pack}
	if _, err := sendFiles(context.Background(), c, files, file{}, nil, s); err != nil {
		t.Fatal(err)
	}
	if wire <= 0 || wire > raw/2 {
		t.Errorf("%d bytes on the link for %d bytes of files, want less than half", wire, raw)
	}
	for _, f := range files {
		got, err := os.ReadFile(f.dst)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := os.ReadFile(f.src)
		st, _ := os.Stat(f.dst)
		if !bytes.Equal(got, want) || st.Mode().Perm() != f.mode {
			t.Errorf("%s on the host: %d bytes, mode %o; want %d bytes, mode %o", f.dst, len(got), st.Mode().Perm(), len(want), f.mode)
		}
	}
	gz := filepath.Join(pack, files[0].sum+".gz")
	if _, err := os.Stat(gz); err != nil {
		t.Fatalf("no gzipped copy in the cache: %v", err)
	}

	// A cached copy of other content: dropped, the file sent as it is.
	var other bytes.Buffer
	zw := gzip.NewWriter(&other)
	zw.Write([]byte("something else"))
	zw.Close()
	if err := os.WriteFile(gz, other.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	f := files[0]
	f.dst = filepath.Join(h.Home, ".rbee", "t2", "rbee-hive")
	if _, err := sendFiles(context.Background(), c, []file{f}, file{}, nil, &sender{mt: &meter{}, pack: pack}); err != nil {
		t.Fatalf("push with a bad cached copy: %v", err)
	}
	if got, _ := os.ReadFile(f.dst); !bytes.Equal(got, compressible(3<<20)) {
		t.Errorf("the file sent past a bad cached copy differs (%d bytes)", len(got))
	}
	if _, err := os.Stat(gz); !os.IsNotExist(err) {
		t.Errorf("the bad cached copy was kept: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(h.Home, ".rbee", "t*", "*.tmp-*")); len(left) > 0 {
		t.Errorf("temporary files left on the host: %v", left)
	}
}
