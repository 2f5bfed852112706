package catalog

import (
	"github.com/rbee-dev/rbee"

	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// ms returns a time that survives the round trip through unix milliseconds
// unchanged, so whole structs compare with reflect.DeepEqual.
func ms(v int64) time.Time { return time.UnixMilli(v) }

func openQueen(t testing.TB, path string) *Queen {
	t.Helper()
	q, err := OpenQueen(context.Background(), path)
	if err != nil {
		t.Fatalf("OpenQueen: %v", err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

func openHive(t testing.TB, path string) *HiveDB {
	t.Helper()
	h, err := OpenHive(context.Background(), path)
	if err != nil {
		t.Fatalf("OpenHive: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func TestLoadMigrations(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{"queen", "hive"} {
		ms, err := loadMigrations(dir)
		if err != nil {
			t.Fatalf("loadMigrations(%s): %v", dir, err)
		}
		if len(ms) == 0 {
			t.Fatalf("loadMigrations(%s): no migrations", dir)
		}
		for i, m := range ms {
			if m.version != i+1 {
				t.Errorf("%s: migration %d has version %d, want %d", dir, i, m.version, i+1)
			}
		}
	}
}

func TestSchemaVersion(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openQueen(t, filepath.Join(dir, "queen.db"))
	h := openHive(t, filepath.Join(dir, "hive.db"))
	for _, tt := range []struct {
		name string
		dir  string
		v    func() (int, int, error)
	}{
		{"queen", "queen", func() (int, int, error) { return versionRows(q.db) }},
		{"hive", "hive", func() (int, int, error) { return versionRows(h.db) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			migs, err := loadMigrations(tt.dir)
			if err != nil {
				t.Fatal(err)
			}
			maxV, rows, err := tt.v()
			if err != nil {
				t.Fatal(err)
			}
			if maxV != len(migs) {
				t.Errorf("schema version: got %d, want %d", maxV, len(migs))
			}
			if rows != len(migs) {
				t.Errorf("schema_migrations rows: got %d, want %d", rows, len(migs))
			}
		})
	}
}

func versionRows(db *sql.DB) (maxV, rows int, err error) {
	err = db.QueryRow(`SELECT coalesce(max(version), 0), count(*) FROM schema_migrations`).Scan(&maxV, &rows)
	return maxV, rows, err
}

// TestPragmas checks every pooled connection gets the settings, not just the first.
func TestPragmas(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	q := newQueen(t)
	var conns []*sql.Conn
	for range maxConns {
		c, err := q.db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for i, c := range conns {
		for _, tt := range []struct{ pragma, want string }{
			{"journal_mode", "wal"},
			{"synchronous", "1"},
			{"foreign_keys", "1"},
			{"busy_timeout", "5000"},
		} {
			var got string
			if err := c.QueryRowContext(ctx, "PRAGMA "+tt.pragma).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("conn %d: PRAGMA %s: got %s, want %s", i, tt.pragma, got, tt.want)
			}
		}
	}
	for _, c := range conns {
		c.Close()
	}
}

// TestConcurrentCreate opens one new file from several handles at once, as
// two processes starting together would.
func TestConcurrentCreate(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "new", "queen.db")
	const n = 6
	qs := make([]*Queen, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			q, err := OpenQueen(t.Context(), path)
			if err != nil {
				t.Errorf("open %d: %v", i, err)
				return
			}
			qs[i] = q
		})
	}
	wg.Wait()
	for i, q := range qs {
		if q == nil {
			continue
		}
		t.Cleanup(func() { q.Close() })
		if err := q.AddHive(t.Context(), Hive{Name: fmt.Sprint(i)}); err != nil {
			t.Errorf("add through handle %d: %v", i, err)
		}
	}
	if qs[0] == nil {
		return
	}
	maxV, rows, err := versionRows(qs[0].db)
	if err != nil {
		t.Fatal(err)
	}
	migs, err := loadMigrations("queen")
	if err != nil {
		t.Fatal(err)
	}
	if maxV != len(migs) || rows != len(migs) {
		t.Errorf("schema_migrations: got version %d in %d rows, want %d in %d", maxV, rows, len(migs), len(migs))
	}
	if n, err := qs[0].CountHives(t.Context()); err != nil || n != len(qs) {
		t.Errorf("count: got %d, %v; want %d", n, err, len(qs))
	}
}

func TestReopenKeepsData(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	qpath, hpath := filepath.Join(dir, "queen.db"), filepath.Join(dir, "hive.db")

	q, err := OpenQueen(ctx, qpath)
	if err != nil {
		t.Fatal(err)
	}
	want := Hive{Name: "gpu-box", Kind: "ssh", Host: "10.0.0.2", Port: 22, User: "rbee", Status: "online",
		Added: ms(1000), LastSeen: ms(2000), DevicesAt: ms(3000),
		Devices:      []rbee.Device{{ID: "gpu0", Kind: "gpu", Name: "RTX 3090", TotalBytes: 24 << 30}},
		Capabilities: map[string]string{"os": "linux"}}
	if err := q.AddHive(ctx, want); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	h, err := OpenHive(ctx, hpath)
	if err != nil {
		t.Fatal(err)
	}
	wantM, err := h.AddModel(ctx, Model{Path: "/m/a.gguf", SHA256: sha(1), Alias: "a", Added: ms(5)})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}

	for i := range 2 { // twice: the second reopen finds the schema current
		q = openQueen(t, qpath)
		got, err := q.Hive(ctx, "gpu-box")
		if err != nil {
			t.Fatalf("reopen %d: %v", i, err)
		}
		assertHive(t, got, want)
		h = openHive(t, hpath)
		gotM, err := h.Model(ctx, "a")
		if err != nil {
			t.Fatalf("reopen %d: %v", i, err)
		}
		if gotM != wantM {
			t.Errorf("reopen %d: got %+v, want %+v", i, gotM, wantM)
		}
		q.Close()
		h.Close()
	}
}

func TestFileMode(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "state", "rbee")
	path := filepath.Join(dir, "queen.db")
	q := openQueen(t, path)
	if err := q.AddHive(t.Context(), Hive{Name: "localhost", Kind: "local"}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		path string
		want os.FileMode
	}{
		{dir, os.ModeDir | 0o700},
		{path, 0o600},
		{path + "-wal", 0o600},
		{path + "-shm", 0o600},
	} {
		fi, err := os.Stat(tt.path)
		if err != nil {
			t.Errorf("stat: %v", err)
			continue
		}
		if got := fi.Mode(); got != tt.want {
			t.Errorf("mode of %s: got %v, want %v", filepath.Base(tt.path), got, tt.want)
		}
	}
}

func TestOddPath(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "a dir?x=1#frag", "100% hive.db")
	h := openHive(t, path)
	if _, err := h.AddModel(t.Context(), Model{Path: "/m.gguf", SHA256: sha(7)}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("catalog not at the path asked for: %v", err)
	}
}

// TestTwoProcesses writes from many goroutines through two handles on one
// file, as the queen and a CLI command might.
func TestTwoProcesses(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "queen.db")
	qs := []*Queen{openQueen(t, path), openQueen(t, path)}
	const workers, perWorker = 4, 20

	var wg sync.WaitGroup
	for p, q := range qs {
		for w := range workers {
			wg.Go(func() {
				for i := range perWorker {
					name := fmt.Sprintf("hive-%d-%d-%d", p, w, i)
					if err := q.AddHive(ctx, Hive{Name: name, Kind: "ssh", Host: name}); err != nil {
						t.Errorf("add: %v", err)
						return
					}
					devs := []rbee.Device{{ID: "cpu", Kind: "cpu", Cores: i}, {ID: "gpu0", Kind: "gpu", Index: 0}}
					if err := q.SetDevices(ctx, name, devs, ms(int64(i+1))); err != nil {
						t.Errorf("set devices: %v", err)
						return
					}
					if err := q.SetStatus(ctx, name, "online", "", ms(int64(i+1))); err != nil {
						t.Errorf("set status: %v", err)
						return
					}
					if _, err := q.Hives(ctx); err != nil {
						t.Errorf("list: %v", err)
						return
					}
				}
			})
		}
	}
	wg.Wait()

	hs, err := qs[0].Hives(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(hs), len(qs)*workers*perWorker; got != want {
		t.Fatalf("hives: got %d, want %d", got, want)
	}
	for _, h := range hs {
		if len(h.Devices) != 2 || h.Status != "online" || h.DevicesAt.IsZero() {
			t.Errorf("hive %s: got %d devices, status %q, devices at %v; want 2, online, set",
				h.Name, len(h.Devices), h.Status, h.DevicesAt)
		}
	}
}

// TestTwoProcessesSameModel registers one model from both handles at once:
// the upsert must leave exactly one entry.
func TestTwoProcessesSameModel(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "hive.db")
	hs := []*HiveDB{openHive(t, path), openHive(t, path)}
	var wg sync.WaitGroup
	for p, h := range hs {
		for w := range 3 {
			wg.Go(func() {
				for i := range 10 {
					m := Model{Path: fmt.Sprintf("/m/%d-%d-%d.gguf", p, w, i), SHA256: sha(i % 3)}
					if _, err := h.AddModel(ctx, m); err != nil {
						t.Errorf("add model: %v", err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	ms, err := hs[1].Models(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(ms), 3; got != want {
		t.Errorf("models: got %d, want %d", got, want)
	}
}

func TestCorrupt(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		make func(t *testing.T, path string)
		open func(ctx context.Context, path string) error
	}{
		{
			// A crash or a full disk can leave a 0-byte file: it is not a
			// new catalog (every hive and deployment would vanish).
			name: "empty file",
			make: func(t *testing.T, path string) {
				if err := os.WriteFile(path, nil, 0o600); err != nil {
					t.Fatal(err)
				}
			},
			open: func(ctx context.Context, path string) error {
				q, err := OpenQueen(ctx, path)
				if err == nil {
					q.Close()
				}
				return err
			},
		},
		{
			name: "empty hive file",
			make: func(t *testing.T, path string) {
				if err := os.WriteFile(path, nil, 0o600); err != nil {
					t.Fatal(err)
				}
			},
			open: func(ctx context.Context, path string) error {
				h, err := OpenHive(ctx, path)
				if err == nil {
					h.Close()
				}
				return err
			},
		},
		{
			name: "plain text",
			make: func(t *testing.T, path string) {
				text := strings.Repeat("this is not a database, it is a shopping list\n", 200)
				if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			open: func(ctx context.Context, path string) error {
				q, err := OpenQueen(ctx, path)
				if err == nil {
					q.Close()
				}
				return err
			},
		},
		{
			name: "random middle pages",
			make: func(t *testing.T, path string) {
				h, err := OpenHive(t.Context(), path)
				if err != nil {
					t.Fatal(err)
				}
				for i := range 300 {
					m := Model{Path: fmt.Sprintf("/models/some-rather-long-name-%04d.gguf", i), SHA256: sha(i),
						Ref: fmt.Sprintf("hf:org/repo/file-%d.gguf", i), Alias: fmt.Sprintf("m%d", i)}
					if _, err := h.AddModel(t.Context(), m); err != nil {
						t.Fatal(err)
					}
				}
				if err := h.Close(); err != nil {
					t.Fatal(err)
				}
				b, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if len(b) < 16*4096 {
					t.Fatalf("catalog is only %d bytes; want many pages to damage", len(b))
				}
				r := rand.New(rand.NewPCG(1, 2))
				for i := len(b) / 4; i < len(b)*3/4; i++ {
					b[i] = byte(r.Uint32())
				}
				if err := os.WriteFile(path, b, 0o600); err != nil {
					t.Fatal(err)
				}
			},
			open: func(ctx context.Context, path string) error {
				h, err := OpenHive(ctx, path)
				if err == nil {
					h.Close()
				}
				return err
			},
		},
		{
			// Pages intact, but quick_check reports rows that break the
			// (edited) schema: the report-rows path rather than an SQLite error.
			name: "constraint broken",
			make: func(t *testing.T, path string) {
				h, err := OpenHive(t.Context(), path)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := h.AddModel(t.Context(), Model{Path: "/m/a.gguf", SHA256: sha(1)}); err != nil {
					t.Fatal(err)
				}
				conn, err := h.db.Conn(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				for _, stmt := range []string{
					`PRAGMA writable_schema = ON`,
					`UPDATE sqlite_schema SET sql = replace(sql, 'alias            TEXT UNIQUE', 'alias TEXT NOT NULL UNIQUE') WHERE name = 'models'`,
					`PRAGMA writable_schema = OFF`,
				} {
					if _, err := conn.ExecContext(t.Context(), stmt); err != nil {
						t.Fatalf("%s: %v", stmt, err)
					}
				}
				conn.Close()
				if err := h.Close(); err != nil {
					t.Fatal(err)
				}
			},
			open: func(ctx context.Context, path string) error {
				h, err := OpenHive(ctx, path)
				if err == nil {
					h.Close()
				}
				return err
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "catalog.db")
			tt.make(t, path)
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			err = tt.open(t.Context(), path)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("open: got %v, want ErrCorrupt", err)
			}
			t.Logf("open: %v", err)
			for _, want := range []string{path, "move it aside"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			after, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(before, after) {
				t.Errorf("corrupt file was modified (%d bytes before, %d after)", len(before), len(after))
			}
			// Still corrupt on a second try: nothing was "repaired" or recreated.
			if err := tt.open(t.Context(), path); !errors.Is(err, ErrCorrupt) {
				t.Errorf("second open: got %v, want ErrCorrupt", err)
			}
		})
	}
}

func TestWrongKind(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	qpath, hpath := filepath.Join(dir, "queen.db"), filepath.Join(dir, "hive.db")
	openQueen(t, qpath).Close()
	openHive(t, hpath).Close()
	tests := []struct {
		name, path, want string
		open             func(context.Context, string) error
	}{
		{"hive file as queen", hpath, "hive catalog, not a queen", func(ctx context.Context, p string) error {
			_, err := OpenQueen(ctx, p)
			return err
		}},
		{"queen file as hive", qpath, "queen catalog, not a hive", func(ctx context.Context, p string) error {
			_, err := OpenHive(ctx, p)
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, err := os.ReadFile(tt.path)
			if err != nil {
				t.Fatal(err)
			}
			err = tt.open(ctx, tt.path)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("open: got %v, want an error saying %q", err, tt.want)
			}
			after, err := os.ReadFile(tt.path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(before, after) {
				t.Errorf("file was modified")
			}
		})
	}
}

func TestTooNew(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "queen.db")
	q, err := OpenQueen(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.db.ExecContext(ctx, `INSERT INTO schema_migrations(version, applied_at) VALUES(999, 0)`); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = OpenQueen(ctx, path)
	if !errors.Is(err, ErrTooNew) {
		t.Fatalf("open: got %v, want ErrTooNew", err)
	}
	t.Logf("open: %v", err)
	if !strings.Contains(err.Error(), "999") || !strings.Contains(err.Error(), path) {
		t.Errorf("error %q should name the version and the file", err)
	}
}

func TestNotADirectory(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := OpenQueen(t.Context(), filepath.Join(file, "queen.db"))
	if err == nil {
		t.Fatal("open under a regular file: got no error")
	}
	if errors.Is(err, ErrCorrupt) {
		t.Errorf("open under a regular file: got %v, want an error other than ErrCorrupt", err)
	}
}

// TestTwoOSProcesses runs this test binary as a second process writing to
// the same catalog while this one writes too.
func TestTwoOSProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	t.Parallel()
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "queen.db")
	q := openQueen(t, path)

	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperWriter$", "-test.count=1")
	cmd.Env = append(os.Environ(), "RBEE_CATALOG_HELPER_DB="+path)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Start writing once the child is, so the two overlap.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, err := q.Hive(ctx, "child-0"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("helper wrote nothing in 10s\n%s", out.Bytes())
		}
	}
	for i := range helperWrites {
		name := fmt.Sprintf("parent-%d", i)
		if err := q.AddHive(ctx, Hive{Name: name}); err != nil {
			t.Errorf("add: %v", err)
			break
		}
		if err := q.SetDevices(ctx, name, []rbee.Device{{ID: "cpu", Kind: "cpu"}}, ms(1)); err != nil {
			t.Errorf("set devices: %v", err)
			break
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out.Bytes())
	}
	if n, err := q.CountHives(ctx); err != nil || n != 2*helperWrites {
		t.Errorf("count: got %d, %v; want %d", n, err, 2*helperWrites)
	}
}

const helperWrites = 200

// TestHelperWriter is the child of TestTwoOSProcesses; on its own it does nothing.
func TestHelperWriter(t *testing.T) {
	path := os.Getenv("RBEE_CATALOG_HELPER_DB")
	if path == "" {
		t.Skip("helper process only")
	}
	q := openQueen(t, path)
	for i := range helperWrites {
		name := fmt.Sprintf("child-%d", i)
		if err := q.AddHive(t.Context(), Hive{Name: name}); err != nil {
			t.Fatalf("add: %v", err)
		}
		if err := q.SetDevices(t.Context(), name, []rbee.Device{{ID: "cpu", Kind: "cpu"}}, ms(1)); err != nil {
			t.Fatalf("set devices: %v", err)
		}
	}
}

// A new catalog appears whole: its file is never the empty one a crash
// leaves (so an empty file can be called damage), and no temporary file is
// left beside it.
func TestCreateIsWhole(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "queen.db")
	q, err := OpenQueen(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	st, err := os.Stat(path)
	if err != nil || st.Size() == 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("new catalog: %v %v, want a non-empty 0600 file", st, err)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".new-") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
	if err := q.UpsertHive(t.Context(), Hive{Name: "h1", Kind: "ssh", Host: "h1", Status: StatusUnknown, Added: time.Now()}); err != nil {
		t.Fatal(err)
	}
}
