package agent

import (
	"testing"
	"time"
)

type timeT = time.Time

const mib = 1 << 20

func TestVRAMReservations(t *testing.T) {
	v := newVRAM(60e9)
	total, free := uint64(1000*mib), uint64(800*mib)
	id1, _, ok := v.reserve("gpu0", 500*mib, total, free)
	if !ok {
		t.Fatal("first reservation refused")
	}
	// A concurrent spawn cannot take what the first one holds.
	if _, room, ok := v.reserve("gpu0", 400*mib, total, free); ok || room != 300*mib {
		t.Fatalf("second reservation: ok=%v room=%d MiB, want refused with 300 MiB", ok, room/mib)
	}
	// Other devices are unaffected.
	if _, _, ok := v.reserve("cpu", 400*mib, total, free); !ok {
		t.Fatal("reservation on another device refused")
	}
	// Once the worker has loaded, the driver's free figure holds its memory:
	// the reservation no longer counts against free, only against total.
	v.Attach(id1, "w-1")
	v.Loaded("w-1")
	if room := v.room("gpu0", total, 300*mib); room != 300*mib {
		t.Errorf("room after load = %d MiB, want 300", room/mib)
	}
	// A device whose free figure never moves is still bounded by total.
	if room := v.room("gpu0", total, total); room != 500*mib {
		t.Errorf("room on a static device = %d MiB, want 500", room/mib)
	}
	v.ReleaseWorker("w-1")
	if room := v.room("gpu0", total, free); room != free {
		t.Errorf("room after the worker stopped = %d MiB, want %d", room/mib, free/mib)
	}
	if v.release("nope") {
		t.Error("released a reservation that does not exist")
	}
}

func TestVRAMExpiry(t *testing.T) {
	v := newVRAM(10)
	now := v.now()
	v.now = func() timeT { return now }
	id, _, _ := v.reserve("gpu0", 10, 100, 100)
	v.now = func() timeT { return now.Add(20) }
	if room := v.room("gpu0", 100, 100); room != 100 {
		t.Errorf("room = %d, want 100: an unattached reservation past its TTL must expire", room)
	}
	_ = id
}

// A reservation grows to what the sized worker will allocate only when the
// device has that room besides the reservation itself.
func TestVRAMGrow(t *testing.T) {
	v := newVRAM(time.Minute)
	id, _, ok := v.reserve("gpu0", 4<<30, 24<<30, 10<<30)
	if !ok {
		t.Fatal("reserve refused")
	}
	if !v.grow(id, 9<<30, 24<<30, 10<<30) || v.bytesOf(id) != 9<<30 {
		t.Errorf("grow to 9 GiB of 10 free: held %d", v.bytesOf(id))
	}
	if v.grow(id, 11<<30, 24<<30, 10<<30) || v.bytesOf(id) != 9<<30 {
		t.Errorf("grow beyond the free memory was granted: held %d", v.bytesOf(id))
	}
	if v.grow("res-gone", 1, 24<<30, 10<<30) {
		t.Error("grow of an unknown reservation was granted")
	}
}
