package catalog

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Errors callers test with errors.Is.
var (
	// ErrNotFound: no hive, model or worker binary matches.
	ErrNotFound = errors.New("not found")
	// ErrExists: the name or alias is taken by another entry.
	ErrExists = errors.New("already exists")
	// ErrInvalid: the entry lacks a required field or has a bad value.
	ErrInvalid = errors.New("invalid entry")
	// ErrCorrupt: the file is not a usable SQLite database. It is left as it is.
	ErrCorrupt = errors.New("catalog is corrupt")
	// ErrTooNew: the file was written by a newer rbee with a schema this one does not know.
	ErrTooNew = errors.New("catalog schema is newer than this rbee")
)

//go:embed migrations/queen/*.sql migrations/hive/*.sql
var migrationFS embed.FS

// busyTimeoutMS is how long a connection waits for another writer (in this
// process or another) before giving up with "database is locked".
const busyTimeoutMS = 5000

// maxConns bounds the pool. WAL lets readers run beside the one writer;
// writers queue on SQLite's lock, so more connections would only add waiting.
const maxConns = 4

// appIDs mark a file as a queen or hive catalog (PRAGMA application_id), so
// one opened as the other is refused instead of migrated.
var appIDs = map[string]int32{
	"queen": 0x72626551, // "rbeQ"
	"hive":  0x72626548, // "rbeH"
}

type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations reads migrations/<dir>/NNNN_name.sql in version order and
// insists the versions run 1, 2, 3, ... so a missing file cannot go unnoticed.
func loadMigrations(dir string) ([]migration, error) {
	root := path.Join("migrations", dir)
	entries, err := fs.ReadDir(migrationFS, root)
	if err != nil {
		return nil, fmt.Errorf("read migrations %s: %w", dir, err)
	}
	var ms []migration
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s/%s: name must start with a positive number and '_'", dir, e.Name())
		}
		b, err := fs.ReadFile(migrationFS, path.Join(root, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read migration %s/%s: %w", dir, e.Name(), err)
		}
		ms = append(ms, migration{version: v, name: e.Name(), sql: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s/%s: version %d, want %d", dir, m.name, m.version, i+1)
		}
	}
	return ms, nil
}

// open opens (creating if needed) the catalog at file, checks it is intact and
// brings its schema up to date with the migrations in migrations/<dir>.
func open(ctx context.Context, file, dir string) (*sql.DB, error) {
	if file == "" {
		return nil, errors.New("open catalog: empty path")
	}
	migs, err := loadMigrations(dir)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, fmt.Errorf("open catalog %s: %w", file, err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("open catalog %s: %w", abs, err)
	}
	// A catalog is created whole (create) and never shrinks to nothing: an
	// empty file is one a crash or a full disk cut, not a new catalog, and
	// opening it would silently lose every hive, model and deployment.
	st, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := create(ctx, abs, dir, migs); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, fmt.Errorf("open catalog %s: %w", abs, err)
	case st.Mode().IsRegular() && st.Size() == 0:
		return nil, corruptErr(abs, "the file is empty (0 bytes): a crash or a full disk cut it")
	}

	db, err := sql.Open("sqlite", dsn(abs))
	if err != nil {
		return nil, fmt.Errorf("open catalog %s: %w", abs, err)
	}
	db.SetMaxOpenConns(maxConns)
	db.SetMaxIdleConns(maxConns)
	if err := setup(ctx, db, abs, dir, migs); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// create makes a new catalog at abs whole or not at all: built under a
// temporary name (0600 from the start: SQLite gives the -wal and -shm files
// the mode of the database file), closed, then linked into place. A
// catalog another process created meanwhile wins.
func create(ctx context.Context, abs, dir string, migs []migration) error {
	f, err := os.CreateTemp(filepath.Dir(abs), "."+filepath.Base(abs)+".new-*")
	if err != nil {
		return fmt.Errorf("create catalog %s: %w", abs, err)
	}
	tmp := f.Name()
	defer func() {
		for _, p := range []string{tmp, tmp + "-wal", tmp + "-shm"} {
			os.Remove(p)
		}
	}()
	if err := f.Close(); err != nil {
		return fmt.Errorf("create catalog %s: %w", abs, err)
	}
	db, err := sql.Open("sqlite", dsn(tmp))
	if err != nil {
		return fmt.Errorf("create catalog %s: %w", abs, err)
	}
	err = setup(ctx, db, tmp, dir, migs)
	if err == nil { // everything into the file itself before it is linked
		_, err = db.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)")
	}
	if cerr := db.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("create catalog %s: %w", abs, cerr)
	}
	if err != nil {
		return err
	}
	if err := os.Link(tmp, abs); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create catalog %s: %w", abs, err)
	}
	return nil
}

// dsn builds a URI that survives '?', '#' and '%' in the path. Every pooled
// connection runs these pragmas; _txlock=immediate makes write transactions
// take the write lock at BEGIN, so two writers wait on busy_timeout instead of
// failing when one upgrades from reading to writing.
func dsn(abs string) string {
	u := url.URL{Path: filepath.ToSlash(abs)}
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeoutMS))
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Set("_txlock", "immediate")
	return "file:" + u.EscapedPath() + "?" + q.Encode()
}

func setup(ctx context.Context, db *sql.DB, abs, dir string, migs []migration) error {
	// quick_check and the kind check come before anything that could write,
	// so a damaged or foreign file is reported exactly as it was found.
	if err := quickCheck(ctx, db, abs); err != nil {
		return err
	}
	var appID int32
	if err := db.QueryRowContext(ctx, "PRAGMA application_id").Scan(&appID); err != nil {
		return openErr(abs, "read application id", err)
	}
	if appID != 0 && appID != appIDs[dir] {
		for other, id := range appIDs {
			if id == appID {
				return fmt.Errorf("open catalog %s: it is a %s catalog, not a %s catalog", abs, other, dir)
			}
		}
		return fmt.Errorf("open catalog %s: not an rbee %s catalog (application id %#x)", abs, dir, appID)
	}
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return openErr(abs, "read journal mode", err)
	}
	if !strings.EqualFold(mode, "wal") {
		if err := db.QueryRowContext(ctx, "PRAGMA journal_mode=WAL").Scan(&mode); err != nil {
			return openErr(abs, "set WAL mode", err)
		}
		if !strings.EqualFold(mode, "wal") {
			return fmt.Errorf("open catalog %s: set WAL mode: journal mode is %q", abs, mode)
		}
	}
	return migrate(ctx, db, abs, appIDs[dir], migs)
}

func quickCheck(ctx context.Context, db *sql.DB, abs string) error {
	rows, err := db.QueryContext(ctx, "PRAGMA quick_check")
	if err != nil {
		return openErr(abs, "check", err)
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return openErr(abs, "check", err)
		}
		if s != "ok" && len(problems) < 3 {
			problems = append(problems, s)
		}
	}
	if err := rows.Err(); err != nil {
		return openErr(abs, "check", err)
	}
	if len(problems) > 0 {
		return corruptErr(abs, strings.Join(problems, "; "))
	}
	return nil
}

func migrate(ctx context.Context, db *sql.DB, abs string, appID int32, migs []migration) error {
	const create = `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		applied_at INTEGER
	)`
	// Reading first keeps a too-new file free of writes.
	cur, err := schemaVersion(ctx, db)
	if err != nil {
		return openErr(abs, "read schema version", err)
	}
	if cur > len(migs) {
		return tooNewErr(abs, cur, len(migs))
	}
	if cur == len(migs) {
		return nil
	}
	if _, err := db.ExecContext(ctx, create); err != nil {
		return openErr(abs, "create schema_migrations", err)
	}
	for _, m := range migs {
		if err := applyMigration(ctx, db, abs, appID, m, len(migs)); err != nil {
			return err
		}
	}
	return nil
}

// schemaVersion is 0 for a new file (no schema_migrations table yet).
func schemaVersion(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (int, error) {
	var n int
	err := q.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'schema_migrations'`).Scan(&n)
	if err != nil || n == 0 {
		return 0, err
	}
	var v sql.NullInt64
	if err := q.QueryRowContext(ctx, `SELECT max(version) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, err
	}
	return int(v.Int64), nil
}

// applyMigration runs one migration in its own transaction, re-reading the
// version under the write lock: another process may have applied it meanwhile.
func applyMigration(ctx context.Context, db *sql.DB, abs string, appID int32, m migration, known int) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return openErr(abs, "migrate", err)
	}
	defer tx.Rollback()
	cur, err := schemaVersion(ctx, tx)
	if err != nil {
		return openErr(abs, "migrate", err)
	}
	if cur > known {
		return tooNewErr(abs, cur, known)
	}
	if cur >= m.version {
		return nil
	}
	if _, err := tx.ExecContext(ctx, m.sql); err != nil {
		return openErr(abs, "migrate "+m.name, err)
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA application_id = %d", appID)); err != nil {
		return openErr(abs, "migrate "+m.name, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations(version, applied_at) VALUES(?, ?)`,
		m.version, time.Now().UnixMilli()); err != nil {
		return openErr(abs, "migrate "+m.name, err)
	}
	if err := tx.Commit(); err != nil {
		return openErr(abs, "migrate "+m.name, err)
	}
	return nil
}

// openErr wraps err, turning SQLite's "not a database" and "malformed" into ErrCorrupt.
func openErr(abs, op string, err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB:
			return corruptErr(abs, se.Error())
		}
	}
	return fmt.Errorf("open catalog %s: %s: %w", abs, op, err)
}

func corruptErr(abs, detail string) error {
	return fmt.Errorf("open catalog %s: %w (%s); move it aside and rbee will create a new one", abs, ErrCorrupt, detail)
}

func tooNewErr(abs string, have, known int) error {
	return fmt.Errorf("open catalog %s: %w (schema version %d, this rbee knows up to %d); upgrade rbee, or move the file aside and rbee will create a new one",
		abs, ErrTooNew, have, known)
}

// toMS stores a time as unix milliseconds; the zero time is NULL.
func toMS(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMilli()
}

func fromMS(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return time.UnixMilli(v.Int64)
}

// orNow defaults an unset creation time to now.
func orNow(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now()
	}
	return t
}

// notFoundIfNone turns "no row changed" into ErrNotFound.
func notFoundIfNone(res sql.Result) error {
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}
