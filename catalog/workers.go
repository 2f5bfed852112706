package catalog

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// WorkerBinary is an installed worker binary or engine bundle.
type WorkerBinary struct {
	ID           string // "<type>-<version>", primary key
	Type         string // "rbee-worker", "engine-llama.cpp", or an external type name
	Version      string
	Path         string   // binary path, or bundle directory
	SHA256       string   // of the binary, or of the bundle manifest
	Capabilities []string // backends: "cpu", "cuda", ...
	Added        time.Time
	LastUsed     time.Time
}

// WorkerBinaryID is the catalog ID of a worker type's version.
func WorkerBinaryID(typ, version string) string { return typ + "-" + version }

const workerCols = `id, type, version, path, sha256, capabilities, added_at, last_used_at`

// AddWorkerBinary records w, replacing the entry with the same ID (which it
// derives from Type and Version when empty). A replaced entry keeps its Added,
// and its LastUsed unless w's is later.
func (h *HiveDB) AddWorkerBinary(ctx context.Context, w WorkerBinary) error {
	if err := h.addWorkerBinary(ctx, w); err != nil {
		return fmt.Errorf("add worker binary %s: %w", WorkerBinaryID(w.Type, w.Version), err)
	}
	return nil
}

func (h *HiveDB) addWorkerBinary(ctx context.Context, w WorkerBinary) error {
	if w.Type == "" || w.Version == "" {
		return errors.New("type and version are required")
	}
	if w.Path == "" {
		return errors.New("empty path")
	}
	id := WorkerBinaryID(w.Type, w.Version)
	if w.ID != "" && w.ID != id {
		return fmt.Errorf("id %q does not match type and version (want %s)", w.ID, id)
	}
	caps := w.Capabilities
	if caps == nil {
		caps = []string{}
	}
	capsJSON, err := json.Marshal(caps)
	if err != nil {
		return err
	}
	_, err = h.db.ExecContext(ctx, `INSERT INTO worker_binaries(`+workerCols+`) VALUES(?,?,?,?,?,?,?,?)
		ON CONFLICT(id) DO UPDATE SET path = excluded.path, sha256 = excluded.sha256,
			capabilities = excluded.capabilities,
			last_used_at = CASE WHEN worker_binaries.last_used_at IS NULL OR excluded.last_used_at > worker_binaries.last_used_at
				THEN excluded.last_used_at ELSE worker_binaries.last_used_at END`,
		id, w.Type, w.Version, w.Path, w.SHA256, string(capsJSON), toMS(orNow(w.Added)), toMS(w.LastUsed))
	return err
}

// WorkerBinaries returns every worker binary, sorted by type, the most
// recently added of each type first.
func (h *HiveDB) WorkerBinaries(ctx context.Context) ([]WorkerBinary, error) {
	rows, err := h.db.QueryContext(ctx, `SELECT `+workerCols+` FROM worker_binaries
		ORDER BY type, added_at DESC, rowid DESC`)
	if err != nil {
		return nil, fmt.Errorf("list worker binaries: %w", err)
	}
	var ws []WorkerBinary
	for rows.Next() {
		w, err := scanWorker(rows)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("list worker binaries: %w", err)
		}
		ws = append(ws, w)
	}
	if err := closeRows(rows); err != nil {
		return nil, fmt.Errorf("list worker binaries: %w", err)
	}
	return ws, nil
}

// RemoveWorkerBinary removes the entry; the files are the caller's to delete.
func (h *HiveDB) RemoveWorkerBinary(ctx context.Context, id string) error {
	res, err := h.db.ExecContext(ctx, `DELETE FROM worker_binaries WHERE id = ?`, id)
	if err == nil {
		err = notFoundIfNone(res)
	}
	if err != nil {
		return fmt.Errorf("remove worker binary %s: %w", id, err)
	}
	return nil
}

// TouchWorkerBinary sets the entry's LastUsed to at.
func (h *HiveDB) TouchWorkerBinary(ctx context.Context, id string, at time.Time) error {
	res, err := h.db.ExecContext(ctx, `UPDATE worker_binaries SET last_used_at = ? WHERE id = ?`, toMS(at), id)
	if err == nil {
		err = notFoundIfNone(res)
	}
	if err != nil {
		return fmt.Errorf("touch worker binary %s: %w", id, err)
	}
	return nil
}

func scanWorker(s scanner) (WorkerBinary, error) {
	var w WorkerBinary
	var caps string
	var added, used sql.NullInt64
	if err := s.Scan(&w.ID, &w.Type, &w.Version, &w.Path, &w.SHA256, &caps, &added, &used); err != nil {
		return WorkerBinary{}, err
	}
	if err := json.Unmarshal([]byte(caps), &w.Capabilities); err != nil {
		return WorkerBinary{}, fmt.Errorf("capabilities of %s: %w", w.ID, err)
	}
	if len(w.Capabilities) == 0 {
		w.Capabilities = nil
	}
	w.Added, w.LastUsed = fromMS(added), fromMS(used)
	return w, nil
}
