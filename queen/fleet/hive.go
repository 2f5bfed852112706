package fleet

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/hiveapi"
)

// Hive is what placing and running a job needs of one hive. The queen's
// hives talk to agents through its connection pool; tests use fakes.
type Hive interface {
	Name() string
	// Snapshot connects if needed (narrated to ev) and reads the hive's
	// devices (with free memory), workers and models. ctx bounds it.
	Snapshot(ctx context.Context, ev Events) (Snapshot, error)
	// Model makes the job's model available on the hive (already there,
	// pushed, copied from a peer or downloaded) and returns its entry.
	Model(ctx context.Context, spec *ModelSpec, snap Snapshot, ev Events) (hiveapi.Model, error)
	// Reserve asks the hive's VRAM checker for room; a refusal is an
	// *rbee.Error with CodeNoRoom.
	Reserve(ctx context.Context, r hiveapi.ReserveRequest) (string, error)
	// Release gives a reservation back.
	Release(ctx context.Context, id string) error
	// Infer runs the prompt and hands every event of the hive's stream to
	// relay undecoded.
	Infer(ctx context.Context, r hiveapi.InferRequest, relay func(evType string, data []byte) error) error
}

// Snapshot is one look at a hive, taken once per job.
type Snapshot struct {
	Devices []rbee.Device
	Workers []rbee.WorkerInfo
	Models  []hiveapi.Model
}

// Find returns the hive's catalog entry for the job's model, by sha256 or
// by reference.
func (s Snapshot) Find(spec *ModelSpec) (hiveapi.Model, bool) {
	for _, m := range s.Models {
		if spec.SHA256 != "" && m.SHA256 == spec.SHA256 {
			return m, true
		}
		if spec.Ref != nil && (m.Ref == spec.Raw || (spec.Resolved != "" && m.Ref == spec.Resolved)) {
			return m, true
		}
	}
	return hiveapi.Model{}, false
}

// Events is how a step reports to the job's stream: events as they are,
// and narration (one human-readable line).
type Events interface {
	Send(ev rbee.Event)
	Narrate(action, msg string)
}

// liveHive is a hive reached through the queen's pool.
type liveHive struct {
	f    *Fleet
	name string
	// many: one of several candidates. A hive known to be down is left
	// out at once rather than waited on.
	many bool
}

func (h *liveHive) Name() string { return h.name }

func (h *liveHive) conn(ctx context.Context) (*Conn, error) {
	return h.f.hiveConn(ctx, h.name, Quiet{})
}

// Snapshot reads devices, workers and models within the pool's timeout. A
// connection that looked alive but did not answer in time is a stalled
// host: it is dropped, and the hive marked offline with the reason. A
// local agent that went away is started again, once.
func (h *liveHive) Snapshot(ctx context.Context, ev Events) (Snapshot, error) {
	if h.many {
		if err := h.f.pool.down(h.name); err != nil {
			return Snapshot{}, rbee.Errorf(rbee.CodeHiveDown, "offline (%w)", err)
		}
	}
	for try := 0; ; try++ {
		hc, err := h.f.hiveConn(ctx, h.name, ev)
		if err != nil {
			return Snapshot{}, err
		}
		s, step, err := h.read(ctx, hc)
		if err == nil {
			h.f.seen(ctx, h.name, hc, s)
			return s, nil
		}
		if ctx.Err() != nil {
			return Snapshot{}, h.f.pool.stepError(h.name, step, ctx.Err())
		}
		var ae *hiveapi.APIError
		if errors.As(err, &ae) {
			return Snapshot{}, HiveError(err)
		}
		reason := h.f.pool.stepError(h.name, step, err)
		h.f.pool.fail(h.name, hc, reason)
		if try > 0 || errors.Is(err, context.DeadlineExceeded) {
			return Snapshot{}, reason
		}
	}
}

func (h *liveHive) read(ctx context.Context, hc *Conn) (s Snapshot, step string, err error) {
	ctx, cancel := context.WithTimeout(ctx, h.f.pool.timeout)
	defer cancel()
	snap, err := hc.client.Snapshot(ctx)
	if err != nil {
		return s, "the agent's snapshot (devices, workers, models)", err
	}
	return Snapshot{Devices: snap.Devices.Devices, Workers: snap.Workers, Models: snap.Models}, "", nil
}

func (h *liveHive) Model(ctx context.Context, spec *ModelSpec, snap Snapshot, ev Events) (hiveapi.Model, error) {
	if m, ok := snap.Find(spec); ok && (spec.Ref != nil || m.Path != "" && (h.name != LocalHive || m.Path == spec.Path)) {
		ev.Narrate("model_ready", fmt.Sprintf("%s is already on hive %s", ShownName(spec.Raw), h.name))
		return m, nil
	}
	hc, err := h.conn(ctx)
	if err != nil {
		return hiveapi.Model{}, err
	}
	defer h.f.changed() // the hive's catalog changes: the door looks again
	if spec.Ref != nil {
		// Another hive has it: copy across instead of downloading again.
		if m, ok, err := h.f.copyFromPeer(ctx, hc, spec.Raw, ev); err != nil || ok {
			return m, err
		}
		return h.f.pull(ctx, hc, spec, "", ev)
	}
	path := spec.Path
	if hc.remote != nil {
		if path, err = h.f.pushModel(ctx, hc, spec, ev); err != nil {
			return hiveapi.Model{}, err
		}
	}
	m, err := hc.client.AddModel(ctx, hiveapi.AddModelRequest{Path: path, Ref: spec.Raw})
	if err != nil {
		return hiveapi.Model{}, HiveError(err)
	}
	return m, nil
}

func (h *liveHive) Reserve(ctx context.Context, r hiveapi.ReserveRequest) (string, error) {
	hc, err := h.conn(ctx)
	if err != nil {
		return "", err
	}
	id, err := hc.client.Reserve(ctx, r)
	var ae *hiveapi.APIError
	if errors.As(err, &ae) && ae.Status == http.StatusConflict {
		return "", &rbee.Error{Code: rbee.CodeNoRoom, Message: ae.Body.Message, Err: err}
	}
	if err != nil {
		return "", HiveError(err)
	}
	return id, nil
}

func (h *liveHive) Release(ctx context.Context, id string) error {
	hc, err := h.conn(ctx)
	if err != nil {
		return err
	}
	return hc.client.Release(ctx, id)
}

func (h *liveHive) Infer(ctx context.Context, r hiveapi.InferRequest, relay func(evType string, data []byte) error) error {
	hc, err := h.conn(ctx)
	if err != nil {
		return err
	}
	err = hc.client.InferRaw(ctx, r, relay)
	if err == nil || ctx.Err() != nil {
		return err
	}
	if hc.remote != nil {
		select {
		case <-hc.remote.conn.Done():
			err = rbee.Errorf(rbee.CodeHiveDown, "hive %s: the SSH connection broke: %w", h.name, hc.remote.conn.Err())
		default:
		}
	}
	return HiveError(err)
}

// HiveError turns a hive API error into an rbee error with its code and
// hint.
func HiveError(err error) error {
	var ae *hiveapi.APIError
	if errors.As(err, &ae) {
		e := ae.Body
		e.Err = err
		return &e
	}
	var re *rbee.Error
	if errors.As(err, &re) {
		return err
	}
	return rbee.Errorf(rbee.CodeHiveDown, "%w", err)
}

// ModelID is the id the scheduler matches warm workers on: the hive's
// catalog entry when it has one, else the id the hive will give the file.
func ModelID(spec *ModelSpec, snap Snapshot) (id string, has bool) {
	if m, ok := snap.Find(spec); ok {
		return m.ID, true
	}
	if spec.SHA256 != "" {
		return catalog.ModelID(spec.SHA256), false
	}
	return "", false
}

func ShownName(s string) string {
	if filepath.IsAbs(s) {
		return filepath.Base(s)
	}
	return s
}

// SplitWorker is a worker that holds a model split across hives
// (llama.cpp's RPC): the split's main hive runs it. The front door routes
// to it as to any replica; the split lives as long as the worker.
type SplitWorker struct {
	Hive, Worker, Device, ModelID string
	Slots                         int
	Hives                         []string // every hive of the split, the main one first
}
