package catalog

import (
	"github.com/rbee-dev/rbee"

	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Queen is the queen's hive catalog. It is safe for concurrent use, and
// several processes may open the same file.
type Queen struct {
	db *sql.DB
}

// Hive is a machine the queen manages, with what it last reported.
type Hive struct {
	Name         string // primary key, e.g. "localhost", "gpu-box"
	Kind         string // "local" or "ssh"
	Host         string // "" for local
	Port         int
	User         string
	Status       string // "unknown", "online", "offline", "degraded"
	StatusReason string
	AgentVersion string
	Added        time.Time
	LastSeen     time.Time
	DevicesAt    time.Time // when Devices were last probed (zero = never)
	Devices      []rbee.Device
	Capabilities map[string]string // free-form: os, arch, protocol, ...
}

// StatusUnknown is the status of a hive nothing has been heard from yet.
const StatusUnknown = "unknown"

// OpenQueen opens the hive catalog at path, creating it (and its directory)
// if needed.
func OpenQueen(ctx context.Context, path string) (*Queen, error) {
	db, err := open(ctx, path, "queen")
	if err != nil {
		return nil, err
	}
	return &Queen{db: db}, nil
}

// Close closes the catalog.
func (q *Queen) Close() error { return q.db.Close() }

const hiveCols = `name, kind, host, port, ssh_user, status, status_reason, agent_version, added_at, last_seen_at, devices_at`

// Devices come back GPUs first by index, then other kinds, the CPU last.
const deviceCols = `hive_name, id, kind, idx, name, total_bytes, free_bytes, compute_cap, cores`
const deviceOrder = `CASE kind WHEN 'gpu' THEN 0 WHEN 'cpu' THEN 2 ELSE 1 END, kind, idx, id`

// AddHive adds a new hive with its devices and capabilities. It returns
// ErrExists if the name is taken. A zero Added is set to now, an empty Status
// to "unknown".
func (q *Queen) AddHive(ctx context.Context, h Hive) error {
	if err := q.addHive(ctx, h); err != nil {
		return fmt.Errorf("add hive %s: %w", h.Name, err)
	}
	return nil
}

func (q *Queen) addHive(ctx context.Context, h Hive) error {
	if err := checkHive(h); err != nil {
		return err
	}
	tx, err := q.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if h.Status == "" {
		h.Status = StatusUnknown
	}
	h.Added = orNow(h.Added)
	res, err := tx.ExecContext(ctx, `INSERT INTO hives(`+hiveCols+`) VALUES(?,?,?,?,?,?,?,?,?,?,?)
		ON CONFLICT(name) DO NOTHING`, hiveArgs(h)...)
	if err != nil {
		return err
	}
	if notFoundIfNone(res) != nil {
		return ErrExists
	}
	if err := insertDevices(ctx, tx, h.Name, h.Devices); err != nil {
		return err
	}
	if err := insertCapabilities(ctx, tx, h.Name, h.Capabilities); err != nil {
		return err
	}
	return tx.Commit()
}

// UpsertHive inserts h or updates the hive of that name. On update Kind,
// Host, Port and User are overwritten; Status (with StatusReason),
// AgentVersion and LastSeen only when set; Added is kept. Devices (with
// DevicesAt) are replaced only when h.Devices != nil, Capabilities only when
// h.Capabilities != nil.
func (q *Queen) UpsertHive(ctx context.Context, h Hive) error {
	if err := q.upsertHive(ctx, h); err != nil {
		return fmt.Errorf("upsert hive %s: %w", h.Name, err)
	}
	return nil
}

func (q *Queen) upsertHive(ctx context.Context, h Hive) error {
	if err := checkHive(h); err != nil {
		return err
	}
	tx, err := q.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	old, err := scanHive(tx.QueryRowContext(ctx, `SELECT `+hiveCols+` FROM hives WHERE name = ?`, h.Name))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if h.Status == "" {
			h.Status = StatusUnknown
		}
		h.Added = orNow(h.Added)
		if h.Devices == nil {
			h.DevicesAt = time.Time{}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO hives(`+hiveCols+`) VALUES(?,?,?,?,?,?,?,?,?,?,?)`, hiveArgs(h)...); err != nil {
			return err
		}
	case err != nil:
		return err
	default:
		h.Added = old.Added
		if h.Status == "" {
			h.Status, h.StatusReason = old.Status, old.StatusReason
		}
		if h.AgentVersion == "" {
			h.AgentVersion = old.AgentVersion
		}
		if h.LastSeen.IsZero() {
			h.LastSeen = old.LastSeen
		}
		if h.Devices == nil {
			h.DevicesAt = old.DevicesAt
		}
		if _, err := tx.ExecContext(ctx, `UPDATE hives SET kind = ?, host = ?, port = ?, ssh_user = ?,
			status = ?, status_reason = ?, agent_version = ?, added_at = ?, last_seen_at = ?, devices_at = ?
			WHERE name = ?`,
			h.Kind, h.Host, h.Port, h.User, h.Status, h.StatusReason, h.AgentVersion,
			toMS(h.Added), toMS(h.LastSeen), toMS(h.DevicesAt), h.Name); err != nil {
			return err
		}
	}
	if h.Devices != nil {
		if _, err := tx.ExecContext(ctx, `DELETE FROM hive_devices WHERE hive_name = ?`, h.Name); err != nil {
			return err
		}
		if err := insertDevices(ctx, tx, h.Name, h.Devices); err != nil {
			return err
		}
	}
	if h.Capabilities != nil {
		if _, err := tx.ExecContext(ctx, `DELETE FROM hive_capabilities WHERE hive_name = ?`, h.Name); err != nil {
			return err
		}
		if err := insertCapabilities(ctx, tx, h.Name, h.Capabilities); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// Hive returns the named hive with its devices and capabilities, or ErrNotFound.
func (q *Queen) Hive(ctx context.Context, name string) (Hive, error) {
	if name == "" {
		return Hive{}, fmt.Errorf("get hive: empty name: %w", ErrNotFound)
	}
	hs, err := q.hives(ctx, name)
	if err != nil {
		return Hive{}, fmt.Errorf("get hive %s: %w", name, err)
	}
	if len(hs) == 0 {
		return Hive{}, fmt.Errorf("get hive %s: %w", name, ErrNotFound)
	}
	return hs[0], nil
}

// Hives returns every hive, sorted by name, with devices and capabilities.
func (q *Queen) Hives(ctx context.Context) ([]Hive, error) {
	hs, err := q.hives(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("list hives: %w", err)
	}
	return hs, nil
}

// hives reads one hive (name != "") or all of them in one read transaction,
// so devices and capabilities match the hive rows.
func (q *Queen) hives(ctx context.Context, name string) ([]Hive, error) {
	tx, err := q.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	where, args := "", []any{}
	if name != "" {
		where, args = " WHERE name = ?", []any{name}
	}
	var hs []Hive
	byName := map[string]int{}
	rows, err := tx.QueryContext(ctx, `SELECT `+hiveCols+` FROM hives`+where+` ORDER BY name`, args...)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		h, err := scanHive(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		byName[h.Name] = len(hs)
		hs = append(hs, h)
	}
	if err := closeRows(rows); err != nil {
		return nil, err
	}
	if len(hs) == 0 {
		return nil, nil
	}
	where = ""
	if name != "" {
		where = " WHERE hive_name = ?"
	}
	rows, err = tx.QueryContext(ctx, `SELECT `+deviceCols+` FROM hive_devices`+where+` ORDER BY hive_name, `+deviceOrder, args...)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var hive string
		var d rbee.Device
		var total, free int64
		if err := rows.Scan(&hive, &d.ID, &d.Kind, &d.Index, &d.Name, &total, &free, &d.ComputeCap, &d.Cores); err != nil {
			rows.Close()
			return nil, err
		}
		d.TotalBytes, d.FreeBytes = uint64(total), uint64(free)
		if i, ok := byName[hive]; ok {
			hs[i].Devices = append(hs[i].Devices, d)
		}
	}
	if err := closeRows(rows); err != nil {
		return nil, err
	}
	rows, err = tx.QueryContext(ctx, `SELECT hive_name, key, value FROM hive_capabilities`+where, args...)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var hive, k, v string
		if err := rows.Scan(&hive, &k, &v); err != nil {
			rows.Close()
			return nil, err
		}
		if i, ok := byName[hive]; ok {
			if hs[i].Capabilities == nil {
				hs[i].Capabilities = map[string]string{}
			}
			hs[i].Capabilities[k] = v
		}
	}
	if err := closeRows(rows); err != nil {
		return nil, err
	}
	return hs, nil
}

// RemoveHive removes the hive with its devices and capabilities, or returns ErrNotFound.
func (q *Queen) RemoveHive(ctx context.Context, name string) error {
	res, err := q.db.ExecContext(ctx, `DELETE FROM hives WHERE name = ?`, name)
	if err == nil {
		err = notFoundIfNone(res)
	}
	if err != nil {
		return fmt.Errorf("remove hive %s: %w", name, err)
	}
	return nil
}

// SetDevices replaces the hive's devices in one transaction and sets
// DevicesAt to at. Device IDs must be unique.
func (q *Queen) SetDevices(ctx context.Context, name string, devs []rbee.Device, at time.Time) error {
	if err := q.setDevices(ctx, name, devs, at); err != nil {
		return fmt.Errorf("set devices of hive %s: %w", name, err)
	}
	return nil
}

func (q *Queen) setDevices(ctx context.Context, name string, devs []rbee.Device, at time.Time) error {
	if err := checkDevices(devs); err != nil {
		return err
	}
	tx, err := q.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `UPDATE hives SET devices_at = ? WHERE name = ?`, toMS(at), name)
	if err != nil {
		return err
	}
	if err := notFoundIfNone(res); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM hive_devices WHERE hive_name = ?`, name); err != nil {
		return err
	}
	if err := insertDevices(ctx, tx, name, devs); err != nil {
		return err
	}
	return tx.Commit()
}

// SetStatus records the hive's status and why. A zero seen leaves LastSeen as it is.
func (q *Queen) SetStatus(ctx context.Context, name, status, reason string, seen time.Time) error {
	res, err := q.db.ExecContext(ctx, `UPDATE hives SET status = ?, status_reason = ?,
		last_seen_at = coalesce(?, last_seen_at) WHERE name = ?`, status, reason, toMS(seen), name)
	if err == nil {
		err = notFoundIfNone(res)
	}
	if err != nil {
		return fmt.Errorf("set status of hive %s: %w", name, err)
	}
	return nil
}

// CountHives returns the number of hives.
func (q *Queen) CountHives(ctx context.Context) (int, error) {
	var n int
	if err := q.db.QueryRowContext(ctx, `SELECT count(*) FROM hives`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count hives: %w", err)
	}
	return n, nil
}

func checkHive(h Hive) error {
	if h.Name == "" {
		return errors.New("empty name")
	}
	return checkDevices(h.Devices)
}

func checkDevices(devs []rbee.Device) error {
	seen := make(map[string]bool, len(devs))
	for _, d := range devs {
		if d.ID == "" {
			return errors.New("device with empty id")
		}
		if seen[d.ID] {
			return fmt.Errorf("duplicate device id %q", d.ID)
		}
		seen[d.ID] = true
	}
	return nil
}

func hiveArgs(h Hive) []any {
	return []any{h.Name, h.Kind, h.Host, h.Port, h.User, h.Status, h.StatusReason, h.AgentVersion,
		toMS(h.Added), toMS(h.LastSeen), toMS(h.DevicesAt)}
}

type scanner interface{ Scan(...any) error }

func scanHive(s scanner) (Hive, error) {
	var h Hive
	var added, seen, devs sql.NullInt64
	err := s.Scan(&h.Name, &h.Kind, &h.Host, &h.Port, &h.User, &h.Status, &h.StatusReason, &h.AgentVersion,
		&added, &seen, &devs)
	h.Added, h.LastSeen, h.DevicesAt = fromMS(added), fromMS(seen), fromMS(devs)
	return h, err
}

func insertDevices(ctx context.Context, tx *sql.Tx, hive string, devs []rbee.Device) error {
	if len(devs) == 0 {
		return nil
	}
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO hive_devices(`+deviceCols+`) VALUES(?,?,?,?,?,?,?,?,?)`)
	if err != nil {
		return err
	}
	defer stmt.Close()
	for _, d := range devs {
		// uint64 is stored bit for bit in SQLite's int64; real sizes never reach the sign bit.
		if _, err := stmt.ExecContext(ctx, hive, d.ID, d.Kind, d.Index, d.Name,
			int64(d.TotalBytes), int64(d.FreeBytes), d.ComputeCap, d.Cores); err != nil {
			return fmt.Errorf("device %s: %w", d.ID, err)
		}
	}
	return nil
}

func insertCapabilities(ctx context.Context, tx *sql.Tx, hive string, caps map[string]string) error {
	for k, v := range caps {
		if _, err := tx.ExecContext(ctx, `INSERT INTO hive_capabilities(hive_name, key, value) VALUES(?,?,?)`,
			hive, k, v); err != nil {
			return fmt.Errorf("capability %s: %w", k, err)
		}
	}
	return nil
}

func closeRows(rows *sql.Rows) error {
	err := rows.Err()
	if cerr := rows.Close(); err == nil {
		err = cerr
	}
	return err
}
