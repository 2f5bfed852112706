package catalog

import (
	"github.com/rbee-dev/rbee"

	"context"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func newQueen(t *testing.T) *Queen {
	t.Helper()
	return openQueen(t, filepath.Join(t.TempDir(), "queen.db"))
}

func assertHive(t *testing.T, got, want Hive) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("hive:\ngot  %+v\nwant %+v", got, want)
	}
}

func gpuBox() Hive {
	return Hive{
		Name: "gpu-box", Kind: "ssh", Host: "gpu-box.lan", Port: 2222, User: "vince",
		Status: "online", StatusReason: "handshake ok", AgentVersion: "0.1.0",
		Added: ms(1_700_000_000_000), LastSeen: ms(1_700_000_001_000), DevicesAt: ms(1_700_000_002_000),
		// Deliberately out of order: the catalog sorts them.
		Devices: []rbee.Device{
			{ID: "cpu", Kind: "cpu", Name: "Ryzen 9", TotalBytes: 64 << 30, FreeBytes: 40 << 30, Cores: 16},
			{ID: "gpu1", Kind: "gpu", Index: 1, Name: "RTX 3060", TotalBytes: 12 << 30, FreeBytes: 11 << 30, ComputeCap: "8.6"},
			{ID: "gpu0", Kind: "gpu", Index: 0, Name: "RTX 3090", TotalBytes: 24 << 30, FreeBytes: 23 << 30, ComputeCap: "8.6"},
		},
		Capabilities: map[string]string{"os": "linux", "arch": "amd64", "protocol": "1"},
	}
}

// sortedDevices is gpuBox's devices in the catalog's order.
func sortedDevices(h Hive) []rbee.Device {
	return []rbee.Device{h.Devices[2], h.Devices[1], h.Devices[0]}
}

func TestHiveRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	q := newQueen(t)
	in := gpuBox()
	if err := q.AddHive(ctx, in); err != nil {
		t.Fatal(err)
	}
	want := in
	want.Devices = sortedDevices(in)
	got, err := q.Hive(ctx, "gpu-box")
	if err != nil {
		t.Fatal(err)
	}
	assertHive(t, got, want)

	hs, err := q.Hives(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) != 1 {
		t.Fatalf("hives: got %d, want 1", len(hs))
	}
	assertHive(t, hs[0], want)
}

func TestAddHiveDefaults(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	q := newQueen(t)
	before := time.Now().Truncate(time.Millisecond)
	if err := q.AddHive(ctx, Hive{Name: "localhost", Kind: "local"}); err != nil {
		t.Fatal(err)
	}
	got, err := q.Hive(ctx, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != StatusUnknown {
		t.Errorf("status: got %q, want %q", got.Status, StatusUnknown)
	}
	if got.Added.Before(before) || got.Added.After(time.Now()) {
		t.Errorf("added: got %v, want about now", got.Added)
	}
	if !got.LastSeen.IsZero() || !got.DevicesAt.IsZero() || got.Devices != nil || got.Capabilities != nil {
		t.Errorf("got %+v, want no last seen, devices or capabilities", got)
	}
}

func TestAddHiveExists(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	q := newQueen(t)
	if err := q.AddHive(ctx, gpuBox()); err != nil {
		t.Fatal(err)
	}
	other := Hive{Name: "gpu-box", Kind: "local", Devices: []rbee.Device{{ID: "cpu", Kind: "cpu"}}}
	err := q.AddHive(ctx, other)
	if !errors.Is(err, ErrExists) {
		t.Fatalf("second add: got %v, want ErrExists", err)
	}
	if !strings.Contains(err.Error(), "gpu-box") {
		t.Errorf("error %q does not name the hive", err)
	}
	got, err := q.Hive(ctx, "gpu-box")
	if err != nil {
		t.Fatal(err)
	}
	want := gpuBox()
	want.Devices = sortedDevices(want)
	assertHive(t, got, want)
}

func TestHiveNotFound(t *testing.T) {
	t.Parallel()
	q := newQueen(t)
	if err := q.AddHive(t.Context(), Hive{Name: "other"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"Hive", func(ctx context.Context) error { _, err := q.Hive(ctx, "nope"); return err }},
		{"Hive empty name", func(ctx context.Context) error { _, err := q.Hive(ctx, ""); return err }},
		{"RemoveHive", func(ctx context.Context) error { return q.RemoveHive(ctx, "nope") }},
		{"SetDevices", func(ctx context.Context) error { return q.SetDevices(ctx, "nope", nil, time.Now()) }},
		{"SetStatus", func(ctx context.Context) error { return q.SetStatus(ctx, "nope", "online", "", time.Now()) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call(t.Context())
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("got %v, want ErrNotFound", err)
			}
			if tt.name != "Hive empty name" && !strings.Contains(err.Error(), "nope") {
				t.Errorf("error %q does not name the hive", err)
			}
		})
	}
}

func TestHiveInvalid(t *testing.T) {
	t.Parallel()
	q := newQueen(t)
	tests := []struct {
		name string
		h    Hive
	}{
		{"empty name", Hive{}},
		{"empty device id", Hive{Name: "a", Devices: []rbee.Device{{Kind: "cpu"}}}},
		{"duplicate device id", Hive{Name: "a", Devices: []rbee.Device{{ID: "gpu0"}, {ID: "gpu0"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := q.AddHive(t.Context(), tt.h); err == nil {
				t.Errorf("AddHive: got no error")
			}
			if err := q.UpsertHive(t.Context(), tt.h); err == nil {
				t.Errorf("UpsertHive: got no error")
			}
		})
	}
	if n, err := q.CountHives(t.Context()); err != nil || n != 0 {
		t.Errorf("count: got %d, %v; want 0", n, err)
	}
}

func TestUpsertHive(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	q := newQueen(t)
	orig := gpuBox()

	// Insert.
	if err := q.UpsertHive(ctx, orig); err != nil {
		t.Fatal(err)
	}
	want := orig
	want.Devices = sortedDevices(orig)
	got, err := q.Hive(ctx, orig.Name)
	if err != nil {
		t.Fatal(err)
	}
	assertHive(t, got, want)

	// Update from the inventory: connection fields only. Devices, capabilities,
	// status, agent version and times stay.
	err = q.UpsertHive(ctx, Hive{Name: orig.Name, Kind: "ssh", Host: "10.0.0.9", Port: 22, User: "root", Added: ms(5)})
	if err != nil {
		t.Fatal(err)
	}
	want.Host, want.Port, want.User = "10.0.0.9", 22, "root"
	got, err = q.Hive(ctx, orig.Name)
	if err != nil {
		t.Fatal(err)
	}
	assertHive(t, got, want)

	// Update with status, devices and capabilities: those replace.
	upd := Hive{Name: orig.Name, Kind: "ssh", Host: "10.0.0.9", Port: 22, User: "root",
		Status: "degraded", StatusReason: "gpu1 missing", AgentVersion: "0.2.0", LastSeen: ms(1_800_000_000_000),
		DevicesAt:    ms(1_800_000_000_001),
		Devices:      []rbee.Device{{ID: "cpu", Kind: "cpu", Cores: 8}},
		Capabilities: map[string]string{"os": "linux"},
	}
	if err := q.UpsertHive(ctx, upd); err != nil {
		t.Fatal(err)
	}
	want = upd
	want.Added = orig.Added
	got, err = q.Hive(ctx, orig.Name)
	if err != nil {
		t.Fatal(err)
	}
	assertHive(t, got, want)

	// Empty but non-nil devices and capabilities clear them.
	upd.Devices, upd.Capabilities, upd.DevicesAt = []rbee.Device{}, map[string]string{}, ms(1_800_000_000_002)
	if err := q.UpsertHive(ctx, upd); err != nil {
		t.Fatal(err)
	}
	got, err = q.Hive(ctx, orig.Name)
	if err != nil {
		t.Fatal(err)
	}
	if got.Devices != nil || got.Capabilities != nil || !got.DevicesAt.Equal(upd.DevicesAt) {
		t.Errorf("got devices %v, capabilities %v, devices at %v; want none, none, %v",
			got.Devices, got.Capabilities, got.DevicesAt, upd.DevicesAt)
	}
}

func TestSetDevices(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	q := newQueen(t)
	h := gpuBox()
	if err := q.AddHive(ctx, h); err != nil {
		t.Fatal(err)
	}

	newDevs := []rbee.Device{
		{ID: "cpu", Kind: "cpu", TotalBytes: 32 << 30, Cores: 8},
		{ID: "npu0", Kind: "npu", Index: 0},
		{ID: "gpu2", Kind: "gpu", Index: 2, TotalBytes: 80 << 30, ComputeCap: "9.0"},
		{ID: "gpu10", Kind: "gpu", Index: 10, TotalBytes: 1<<64 - 1}, // survives the int64 column
	}
	at := ms(1_900_000_000_000)
	if err := q.SetDevices(ctx, h.Name, newDevs, at); err != nil {
		t.Fatal(err)
	}
	got, err := q.Hive(ctx, h.Name)
	if err != nil {
		t.Fatal(err)
	}
	wantDevs := []rbee.Device{newDevs[2], newDevs[3], newDevs[1], newDevs[0]}
	if !reflect.DeepEqual(got.Devices, wantDevs) {
		t.Errorf("devices:\ngot  %+v\nwant %+v", got.Devices, wantDevs)
	}
	if !got.DevicesAt.Equal(at) {
		t.Errorf("devices at: got %v, want %v", got.DevicesAt, at)
	}

	// A bad list changes nothing.
	bad := []rbee.Device{{ID: "gpu0", Kind: "gpu"}, {ID: "gpu0", Kind: "gpu"}}
	if err := q.SetDevices(ctx, h.Name, bad, ms(1)); err == nil {
		t.Fatal("duplicate ids: got no error")
	}
	got, err = q.Hive(ctx, h.Name)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Devices, wantDevs) || !got.DevicesAt.Equal(at) {
		t.Errorf("after failed set: got %+v at %v, want %+v at %v", got.Devices, got.DevicesAt, wantDevs, at)
	}

	// nil clears.
	if err := q.SetDevices(ctx, h.Name, nil, ms(2)); err != nil {
		t.Fatal(err)
	}
	got, err = q.Hive(ctx, h.Name)
	if err != nil {
		t.Fatal(err)
	}
	if got.Devices != nil || !got.DevicesAt.Equal(ms(2)) {
		t.Errorf("after clearing: got %+v at %v, want none at %v", got.Devices, got.DevicesAt, ms(2))
	}
}

func TestSetStatus(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	q := newQueen(t)
	if err := q.AddHive(ctx, Hive{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		status, reason string
		seen           time.Time
		wantSeen       time.Time
	}{
		{"online", "", ms(100), ms(100)},
		{"degraded", "gpu0 gone", ms(200), ms(200)},
		{"offline", "ssh: connection refused", time.Time{}, ms(200)}, // zero keeps the last sighting
	}
	for _, tt := range tests {
		if err := q.SetStatus(ctx, "a", tt.status, tt.reason, tt.seen); err != nil {
			t.Fatal(err)
		}
		got, err := q.Hive(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != tt.status || got.StatusReason != tt.reason || !got.LastSeen.Equal(tt.wantSeen) {
			t.Errorf("got %q %q %v, want %q %q %v", got.Status, got.StatusReason, got.LastSeen,
				tt.status, tt.reason, tt.wantSeen)
		}
	}
}

func TestRemoveHiveCascades(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	q := newQueen(t)
	keep := Hive{Name: "keep", Devices: []rbee.Device{{ID: "cpu", Kind: "cpu"}}, Capabilities: map[string]string{"os": "linux"}}
	for _, h := range []Hive{gpuBox(), keep} {
		if err := q.AddHive(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.RemoveHive(ctx, "gpu-box"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Hive(ctx, "gpu-box"); !errors.Is(err, ErrNotFound) {
		t.Errorf("get removed hive: got %v, want ErrNotFound", err)
	}
	for _, table := range []string{"hive_devices", "hive_capabilities"} {
		var n int
		if err := q.db.QueryRowContext(ctx, `SELECT count(*) FROM `+table+` WHERE hive_name = 'gpu-box'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%s rows of removed hive: got %d, want 0", table, n)
		}
	}
	got, err := q.Hive(ctx, "keep")
	if err != nil {
		t.Fatal(err)
	}
	keep.Added, keep.Status = got.Added, StatusUnknown
	assertHive(t, got, keep)
	if err := q.RemoveHive(ctx, "gpu-box"); !errors.Is(err, ErrNotFound) {
		t.Errorf("remove twice: got %v, want ErrNotFound", err)
	}
}

func TestHivesSortedAndCounted(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	q := newQueen(t)
	if n, err := q.CountHives(ctx); err != nil || n != 0 {
		t.Fatalf("count empty: got %d, %v; want 0", n, err)
	}
	hs, err := q.Hives(ctx)
	if err != nil || len(hs) != 0 {
		t.Fatalf("list empty: got %v, %v; want none", hs, err)
	}
	for _, name := range []string{"zeta", "alpha", "mid"} {
		h := Hive{Name: name, Devices: []rbee.Device{{ID: "cpu", Kind: "cpu", Name: name}}}
		if err := q.AddHive(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	hs, err = q.Hives(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, h := range hs {
		names = append(names, h.Name)
		if len(h.Devices) != 1 || h.Devices[0].Name != h.Name {
			t.Errorf("hive %s: got devices %+v, want its own cpu", h.Name, h.Devices)
		}
	}
	if want := []string{"alpha", "mid", "zeta"}; !reflect.DeepEqual(names, want) {
		t.Errorf("names: got %v, want %v", names, want)
	}
	if n, err := q.CountHives(ctx); err != nil || n != 3 {
		t.Errorf("count: got %d, %v; want 3", n, err)
	}
}
