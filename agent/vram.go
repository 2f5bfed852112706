package agent

import (
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"
	"time"

	"github.com/rbee-dev/rbee/supervisor"
)

// reservation holds room on a device for a worker being started.
type reservation struct {
	id      string
	device  string
	bytes   uint64
	created time.Time
	worker  string // set when a worker is started with it
	loaded  bool   // the worker is ready: its memory shows in the device's free figure
}

// vram is the VRAM checker's book of reservations. A device's room is
// min(detected free − reservations still loading, total − all live
// reservations): the first term trusts the driver once a worker's memory is
// really allocated, the second keeps concurrent spawns (and devices whose
// free figure does not move) from being oversubscribed.
type vram struct {
	mu  sync.Mutex
	res map[string]*reservation
	ttl time.Duration // an unattached reservation expires after this
	now func() time.Time
}

func newVRAM(ttl time.Duration) *vram {
	return &vram{res: map[string]*reservation{}, ttl: ttl, now: time.Now}
}

func (v *vram) expireLocked() {
	for id, r := range v.res {
		if r.worker == "" && v.now().Sub(r.created) > v.ttl {
			delete(v.res, id)
		}
	}
}

// room returns what may still be reserved on a device.
func (v *vram) room(device string, total, free uint64) uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.roomLocked(device, total, free)
}

func (v *vram) roomLocked(device string, total, free uint64) uint64 {
	v.expireLocked()
	var pending, all uint64
	for _, r := range v.res {
		if r.device != device {
			continue
		}
		all += r.bytes
		if !r.loaded {
			pending += r.bytes
		}
	}
	return min(sub(free, pending), sub(total, all))
}

func sub(a, b uint64) uint64 {
	if b > a {
		return 0
	}
	return a - b
}

// reserve grants bytes on device or reports the room there is.
func (v *vram) reserve(device string, bytes, total, free uint64) (id string, room uint64, ok bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	room = v.roomLocked(device, total, free)
	if bytes > room {
		return "", room, false
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	id = "res-" + hex.EncodeToString(b[:])
	v.res[id] = &reservation{id: id, device: device, bytes: bytes, created: v.now()}
	return id, room, true
}

// vram is the supervisor's book of reservations.
var _ supervisor.Reservations = (*vram)(nil)

// Attach ties a reservation to a worker; it lives as long as the worker.
func (v *vram) Attach(id, worker string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, id := range resParts(id) {
		if r, ok := v.res[id]; ok {
			r.worker = worker
		}
	}
}

// resParts are the reservations behind an id: a split across a host's
// GPUs holds one a device, joined with "+".
func resParts(id string) []string { return strings.Split(id, "+") }

// Loaded marks the worker's reservation as allocated for real.
func (v *vram) Loaded(worker string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, r := range v.res {
		if r.worker == worker {
			r.loaded = true
		}
	}
}

// Restore charges an adopted worker's memory (what its reservations held
// under the agent before this one) on its device, as loaded.
func (v *vram) Restore(worker, device string, bytes uint64) {
	if bytes == 0 {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	id := "res-adopted-" + worker
	v.res[id] = &reservation{id: id, device: device, bytes: bytes, created: v.now(), worker: worker, loaded: true}
}

// WorkerBytes returns what a worker's reservations hold.
func (v *vram) WorkerBytes(worker string) uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	var n uint64
	for _, r := range v.res {
		if r.worker == worker {
			n += r.bytes
		}
	}
	return n
}

// bytesOf returns what a reservation holds (0 when it is gone).
func (v *vram) bytesOf(id string) uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	var n uint64
	for _, id := range resParts(id) {
		if r, ok := v.res[id]; ok {
			n += r.bytes
		}
	}
	return n
}

// grow sets a reservation to bytes when the device has that much room
// besides what the reservation already holds.
func (v *vram) grow(id string, bytes, total, free uint64) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, ok := v.res[id]
	if !ok {
		return false
	}
	if bytes <= r.bytes {
		return true
	}
	if v.roomLocked(r.device, total, free)+r.bytes < bytes {
		return false
	}
	r.bytes = bytes
	return true
}

// release drops a reservation by id.
func (v *vram) release(id string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	ok := false
	for _, id := range resParts(id) {
		if _, there := v.res[id]; there {
			ok = true
		}
		delete(v.res, id)
	}
	return ok
}

// ReleaseWorker drops the reservations of a worker that stopped.
func (v *vram) ReleaseWorker(worker string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for id, r := range v.res {
		if r.worker == worker {
			delete(v.res, id)
		}
	}
}
