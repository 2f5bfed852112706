package catalog

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// HiveDB is a hive's model and worker catalog. It is safe for concurrent
// use, and several processes may open the same file.
type HiveDB struct {
	db *sql.DB
}

// OpenHive opens the hive's catalog at path, creating it (and its directory)
// if needed.
func OpenHive(ctx context.Context, path string) (*HiveDB, error) {
	db, err := open(ctx, path, "hive")
	if err != nil {
		return nil, err
	}
	return &HiveDB{db: db}, nil
}

// Close closes the catalog.
func (h *HiveDB) Close() error { return h.db.Close() }

// Model is a model file on the hive, addressed by its content.
type Model struct {
	ID            string // "sha256:<first 16 hex>" — derived from SHA256, primary key
	Ref           string // what the user asked for: a path, URL or hf: ref
	Alias         string // optional, unique when set
	Path          string // absolute path on the hive
	Size          int64
	SHA256        string // full hex
	Format        string // "gguf"
	Arch          string // "llama"
	Quant         string // "Q4_K_M", "F32", ...
	Params        uint64
	CtxTrain      int
	WeightsBytes  uint64 // memory for the weights
	KVBytesPerTok uint64 // KV cache bytes per context token
	Added         time.Time
	LastUsed      time.Time
}

// ModelID is the catalog ID of the model whose content has this SHA-256
// (hex, optionally prefixed "sha256:").
func ModelID(sha256 string) string {
	s := normSHA(sha256)
	if len(s) > 16 {
		s = s[:16]
	}
	return "sha256:" + s
}

// normSHA lower-cases a hex digest and drops a "sha256:" prefix.
func normSHA(s string) string {
	return strings.TrimPrefix(strings.ToLower(s), "sha256:")
}

const modelCols = `id, sha256, ref, alias, path, size, format, arch, quant, params, ctx_train,
	weights_bytes, kv_bytes_per_tok, added_at, last_used_at`

// AddModel records a model, keyed by its SHA256: adding the same content
// again updates that entry instead of making a second one. On update, Ref,
// Alias, Path and the metadata fields are overwritten only when set, LastUsed
// only moves forward, and Added is kept. A new entry needs Path; a zero Added
// becomes now. Entries of other content at the same path (a file changed in
// place) are removed. It returns the entry as stored, or ErrExists when the alias
// belongs to another model.
func (h *HiveDB) AddModel(ctx context.Context, m Model) (Model, error) {
	got, err := h.addModel(ctx, m)
	if err != nil {
		for _, name := range []string{m.Alias, m.Ref, m.Path, m.SHA256} {
			if name != "" {
				return Model{}, fmt.Errorf("add model %s: %w", name, err)
			}
		}
		return Model{}, fmt.Errorf("add model: %w", err)
	}
	return got, nil
}

func (h *HiveDB) addModel(ctx context.Context, m Model) (Model, error) {
	sum := normSHA(m.SHA256)
	if b, err := hex.DecodeString(sum); err != nil || len(b) != 32 {
		return Model{}, fmt.Errorf("sha256 %q is not 64 hex digits", m.SHA256)
	}
	m.SHA256 = sum
	id := ModelID(sum)
	if m.ID != "" && m.ID != id {
		return Model{}, fmt.Errorf("id %q does not match sha256 (want %s)", m.ID, id)
	}
	m.ID = id
	if m.Alias != "" {
		if err := ValidAlias(m.Alias); err != nil {
			return Model{}, err
		}
	}
	if m.Path != "" && !filepath.IsAbs(m.Path) {
		return Model{}, fmt.Errorf("path %q is not absolute", m.Path)
	}

	tx, err := h.db.BeginTx(ctx, nil)
	if err != nil {
		return Model{}, err
	}
	defer tx.Rollback()
	if m.Alias != "" {
		var other string
		err := tx.QueryRowContext(ctx, `SELECT id FROM models WHERE alias = ? AND sha256 != ?`, m.Alias, sum).Scan(&other)
		switch {
		case err == nil:
			return Model{}, fmt.Errorf("alias %q belongs to %s: %w", m.Alias, other, ErrExists)
		case !errors.Is(err, sql.ErrNoRows):
			return Model{}, err
		}
	}
	if m.Path != "" {
		// A path holds one content: an entry for what the file held before
		// it was changed in place is stale. Its alias is the person's name
		// for the file and carries over.
		if m.Alias == "" {
			var alias sql.NullString
			err := tx.QueryRowContext(ctx, `SELECT alias FROM models WHERE path = ? AND sha256 != ? AND alias IS NOT NULL AND alias != ''`, m.Path, sum).Scan(&alias)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return Model{}, err
			}
			m.Alias = alias.String
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM models WHERE path = ? AND sha256 != ?`, m.Path, sum); err != nil {
			return Model{}, err
		}
	}
	old, err := scanModel(tx.QueryRowContext(ctx, `SELECT `+modelCols+` FROM models WHERE sha256 = ?`, sum))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if m.Path == "" {
			return Model{}, errors.New("empty path")
		}
		var other string
		err := tx.QueryRowContext(ctx, `SELECT sha256 FROM models WHERE id = ?`, id).Scan(&other)
		if err == nil {
			return Model{}, fmt.Errorf("id %s already taken by sha256 %s", id, other)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return Model{}, err
		}
		m.Added = orNow(m.Added)
		if _, err := tx.ExecContext(ctx, `INSERT INTO models(`+modelCols+`) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
			modelArgs(m)...); err != nil {
			return Model{}, err
		}
	case err != nil:
		return Model{}, err
	default:
		m = mergeModel(old, m)
		if _, err := tx.ExecContext(ctx, `UPDATE models SET ref = ?, alias = ?, path = ?, size = ?, format = ?,
			arch = ?, quant = ?, params = ?, ctx_train = ?, weights_bytes = ?, kv_bytes_per_tok = ?,
			added_at = ?, last_used_at = ? WHERE id = ?`, append(modelArgs(m)[2:], m.ID)...); err != nil {
			return Model{}, err
		}
	}
	// Return what SQLite holds, times truncated to milliseconds as later reads will see them.
	got, err := scanModel(tx.QueryRowContext(ctx, `SELECT `+modelCols+` FROM models WHERE id = ?`, id))
	if err != nil {
		return Model{}, err
	}
	return got, tx.Commit()
}

// mergeModel lays the set fields of m over old.
func mergeModel(old, m Model) Model {
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	setU := func(dst *uint64, v uint64) {
		if v != 0 {
			*dst = v
		}
	}
	set(&old.Ref, m.Ref)
	set(&old.Alias, m.Alias)
	set(&old.Path, m.Path)
	set(&old.Format, m.Format)
	set(&old.Arch, m.Arch)
	set(&old.Quant, m.Quant)
	if m.Size != 0 {
		old.Size = m.Size
	}
	if m.CtxTrain != 0 {
		old.CtxTrain = m.CtxTrain
	}
	setU(&old.Params, m.Params)
	setU(&old.WeightsBytes, m.WeightsBytes)
	setU(&old.KVBytesPerTok, m.KVBytesPerTok)
	if m.LastUsed.After(old.LastUsed) {
		old.LastUsed = m.LastUsed
	}
	return old
}

// modelArgs is in modelCols order.
func modelArgs(m Model) []any {
	var alias any
	if m.Alias != "" {
		alias = m.Alias
	}
	// uint64 is stored bit for bit in SQLite's int64; real sizes never reach the sign bit.
	return []any{m.ID, m.SHA256, m.Ref, alias, m.Path, m.Size, m.Format, m.Arch, m.Quant,
		int64(m.Params), m.CtxTrain, int64(m.WeightsBytes), int64(m.KVBytesPerTok),
		toMS(m.Added), toMS(m.LastUsed)}
}

func scanModel(s scanner) (Model, error) {
	var m Model
	var alias sql.NullString
	var params, weights, kv int64
	var added, used sql.NullInt64
	err := s.Scan(&m.ID, &m.SHA256, &m.Ref, &alias, &m.Path, &m.Size, &m.Format, &m.Arch, &m.Quant,
		&params, &m.CtxTrain, &weights, &kv, &added, &used)
	m.Alias = alias.String
	m.Params, m.WeightsBytes, m.KVBytesPerTok = uint64(params), uint64(weights), uint64(kv)
	m.Added, m.LastUsed = fromMS(added), fromMS(used)
	return m, err
}

// lookupModel is the query behind Model: the first match by ID, full SHA-256,
// alias, ref, then path; among several models with one ref or path, the most
// recently used.
const lookupModel = `SELECT ` + modelCols + ` FROM models
	WHERE id = ?1 OR sha256 = ?2 OR alias = ?1 OR ref = ?1 OR path = ?1
	ORDER BY CASE WHEN id = ?1 THEN 0 WHEN sha256 = ?2 THEN 1 WHEN alias = ?1 THEN 2 WHEN ref = ?1 THEN 3 ELSE 4 END,
		last_used_at DESC, added_at DESC, id
	LIMIT 1`

func findModel(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, key string) (Model, error) {
	if key == "" {
		return Model{}, ErrNotFound
	}
	sum := normSHA(key)
	m, err := scanModel(q.QueryRowContext(ctx, lookupModel, key, sum))
	if errors.Is(err, sql.ErrNoRows) {
		return Model{}, ErrNotFound
	}
	return m, err
}

// Model finds a model by ID, full SHA-256 (with or without "sha256:"), alias,
// ref or path, tried in that order. It returns ErrNotFound if none matches.
func (h *HiveDB) Model(ctx context.Context, key string) (Model, error) {
	m, err := findModel(ctx, h.db, key)
	if err != nil {
		return Model{}, fmt.Errorf("get model %s: %w", key, err)
	}
	return m, nil
}

// Models returns every model, most recently used first; never-used models
// last, newest first.
func (h *HiveDB) Models(ctx context.Context) ([]Model, error) {
	rows, err := h.db.QueryContext(ctx, `SELECT `+modelCols+` FROM models
		ORDER BY last_used_at DESC, added_at DESC, id`)
	if err != nil {
		return nil, fmt.Errorf("list models: %w", err)
	}
	var ms []Model
	for rows.Next() {
		m, err := scanModel(rows)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("list models: %w", err)
		}
		ms = append(ms, m)
	}
	if err := closeRows(rows); err != nil {
		return nil, fmt.Errorf("list models: %w", err)
	}
	return ms, nil
}

// RemoveModel removes the model key finds (as Model does) and returns it.
// The file itself is the caller's to delete.
func (h *HiveDB) RemoveModel(ctx context.Context, key string) (Model, error) {
	m, err := h.removeModel(ctx, key)
	if err != nil {
		return Model{}, fmt.Errorf("remove model %s: %w", key, err)
	}
	return m, nil
}

func (h *HiveDB) removeModel(ctx context.Context, key string) (Model, error) {
	tx, err := h.db.BeginTx(ctx, nil)
	if err != nil {
		return Model{}, err
	}
	defer tx.Rollback()
	m, err := findModel(ctx, tx, key)
	if err != nil {
		return Model{}, err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM models WHERE id = ?`, m.ID); err != nil {
		return Model{}, err
	}
	return m, tx.Commit()
}

// TouchModel sets the model's LastUsed to at.
func (h *HiveDB) TouchModel(ctx context.Context, id string, at time.Time) error {
	res, err := h.db.ExecContext(ctx, `UPDATE models SET last_used_at = ? WHERE id = ?`, toMS(at), id)
	if err == nil {
		err = notFoundIfNone(res)
	}
	if err != nil {
		return fmt.Errorf("touch model %s: %w", id, err)
	}
	return nil
}
