package split

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/queen/fleet"
	"github.com/rbee-dev/rbee/queenapi"
)

const gib = 1 << 30

// fakeHive is a hive's snapshot in memory; it counts the looks.
type fakeHive struct {
	name string
	snap fleet.Snapshot

	mu    sync.Mutex
	looks int
}

func (h *fakeHive) Name() string { return h.name }
func (h *fakeHive) Snapshot(context.Context, fleet.Events) (fleet.Snapshot, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.looks++
	return h.snap, nil
}
func (h *fakeHive) Model(context.Context, *fleet.ModelSpec, fleet.Snapshot, fleet.Events) (hiveapi.Model, error) {
	return hiveapi.Model{}, errors.New("planning touches no model")
}
func (h *fakeHive) Reserve(context.Context, hiveapi.ReserveRequest) (string, error) {
	return "", errors.New("planning reserves nothing")
}
func (h *fakeHive) Release(context.Context, string) error { return nil }
func (h *fakeHive) Infer(context.Context, hiveapi.InferRequest, func(string, []byte) error) error {
	return errors.New("planning runs nothing")
}

// fakeFleet is the split's Fleet over fake hives; reaching a hive for
// real (Conn, Relay) fails the test.
type fakeFleet struct {
	t     *testing.T
	hives map[string]*fakeHive
}

func (f *fakeFleet) Resolve(_ context.Context, name string) error {
	if f.hives[name] == nil {
		return rbee.Errorf(rbee.CodeHiveUnknown, "no hive named %q", name)
	}
	return nil
}
func (f *fakeFleet) Live(name string, _ bool) fleet.Hive { return f.hives[name] }
func (f *fakeFleet) Conn(context.Context, string, fleet.Events) (*fleet.Conn, error) {
	f.t.Error("planning connected to a hive")
	return nil, errors.New("no connection in a unit test")
}
func (f *fakeFleet) Snapshots(ctx context.Context, hives []fleet.Hive, ev fleet.Events) (map[string]fleet.Snapshot, error) {
	out := map[string]fleet.Snapshot{}
	for _, h := range hives {
		s, err := h.Snapshot(ctx, ev)
		if err != nil {
			return nil, err
		}
		out[h.Name()] = s
	}
	return out, nil
}
func (f *fakeFleet) Estimate(context.Context, *fleet.ModelSpec, map[string]fleet.Snapshot) error {
	return nil
}
func (f *fakeFleet) Relay(context.Context, fleet.Hive, hiveapi.InferRequest, fleet.Events) error {
	f.t.Error("planning relayed a job")
	return errors.New("no relay in a unit test")
}

func cpuHive(name string, free uint64) *fakeHive {
	return &fakeHive{name: name, snap: fleet.Snapshot{Devices: []rbee.Device{{ID: "cpu", Kind: rbee.DeviceCPU, Name: "CPU", TotalBytes: free, FreeBytes: free}}}}
}

// A split over named hives is planned from one look at each: every layer
// placed, the shares in proportion to the room, the roomiest hive runs
// the worker; a hive that is not known stops it before any hive is asked.
func TestPlanNamed(t *testing.T) {
	t.Parallel()
	f := &fakeFleet{t: t, hives: map[string]*fakeHive{"a": cpuHive("a", 12*gib), "b": cpuHive("b", 24*gib), "c": cpuHive("c", 2*gib)}}
	sp := New(f, nil, 0)
	spec := &fleet.ModelSpec{Raw: "/m/big.gguf", SHA256: "ab", Need: 30 * gib, Weights: 28 * gib, Layers: 30}
	ev := &recEvents{}
	plan, err := sp.planNamed(t.Context(), queenapi.JobRequest{Split: []string{"a", "b"}, Explain: true}, spec, ev)
	if err != nil {
		t.Fatal(err)
	}
	if got := plan.Hives(); len(got) != 2 || got[0] != "b" || got[1] != "a" {
		t.Fatalf("hives %v, want b (roomiest, main) then a", got)
	}
	layers, bytes := 0, uint64(0)
	for _, pt := range plan.Parts {
		layers += pt.Layers
		bytes += pt.Bytes
		if pt.Bytes > pt.Device.FreeBytes {
			t.Errorf("part %s takes %d bytes of %d free", pt.Hive, pt.Bytes, pt.Device.FreeBytes)
		}
	}
	if layers != 30 || !plan.Parts[0].Main || plan.Parts[0].Layers <= plan.Parts[1].Layers {
		t.Errorf("parts %+v: want all 30 layers, the main hive with the larger share", plan.Parts)
	}
	if !strings.Contains(ev.text(), "b/cpu") {
		t.Errorf("--explain said %q, want the plan", ev.text())
	}
	if f.hives["c"].looks != 0 {
		t.Error("a hive the split does not name was asked")
	}

	_, err = sp.planNamed(t.Context(), queenapi.JobRequest{Split: []string{"a", "nope", "b"}}, spec, &recEvents{})
	if rbee.CodeOf(err) != rbee.CodeHiveUnknown {
		t.Errorf("an unknown hive: got %v, want hive_unknown", err)
	}
	if n := f.hives["a"].looks; n != 1 {
		t.Errorf("hive a was asked %d times, want once (the unknown hive stops the job before any look)", n)
	}

	_, err = sp.planNamed(t.Context(), queenapi.JobRequest{Split: []string{"a", "c"}}, spec, &recEvents{})
	if rbee.CodeOf(err) != rbee.CodeNoRoom {
		t.Errorf("a and c hold 14 GiB of 30: got %v, want no_room", err)
	}
}

func (r *recEvents) text() string {
	var b strings.Builder
	for _, e := range r.evs {
		b.WriteString(e.Message + "\n")
	}
	return b.String()
}

// The table of live splits: only a split whose worker runs, not lost and
// not ended, is warm for its key; a loss is recorded once (the first),
// aborts a worker still starting, tears the split down and takes it out
// of the table, and the worker's failure then names the lost hive.
func TestSplitBookkeeping(t *testing.T) {
	t.Parallel()
	sp := New(&fakeFleet{t: t}, nil, 0)
	mk := func(key, worker string) *split {
		ctx, cancel := context.WithCancel(context.Background())
		s := &split{owner: sp, key: key, job: "job-" + key, main: "h0", worker: worker, leases: map[string]*hiveapi.RPCLease{},
			ctx: ctx, cancel: cancel, lost: make(chan struct{}), done: make(chan struct{})}
		sp.add(s)
		return s
	}
	starting := mk("k", "")
	running := mk("k", "w1")
	other := mk("k2", "w2")
	if got := sp.warm("k"); got != running {
		t.Fatalf("warm(k) = %v, want the split whose worker runs", got)
	}

	aborted := 0
	starting.abortStart = func() { aborted++ }
	starting.lose("h1", errors.New("the RPC server went away"))
	starting.lose("h2", errors.New("a later loss"))
	select {
	case <-starting.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the lost split was not torn down")
	}
	if hive, why, ok := starting.lostNow(); !ok || hive != "h1" || !strings.Contains(why.Error(), "RPC server went away") {
		t.Errorf("loss %s %v %v, want the first: h1", hive, why, ok)
	}
	if aborted != 1 {
		t.Errorf("the start was aborted %d times, want 1", aborted)
	}
	ev := starting.explain(rbee.Fail(me, rbee.CodeWorkerFailed, "worker exited"))
	if ev.Code != rbee.CodeWorkerCrashed || !strings.Contains(ev.Message, "the split lost hive h1") || !strings.Contains(ev.Hint, "hive h1") {
		t.Errorf("explained %+v, want worker_crashed naming h1", ev)
	}

	sp.mu.Lock()
	_, still := sp.m[starting]
	n := len(sp.m)
	sp.mu.Unlock()
	if still || n != 2 {
		t.Errorf("the table holds the lost split: %v, %d splits", still, n)
	}
	if sp.warm("k2") != other {
		t.Error("another key's split went with the loss")
	}
	// An ended split is never warm.
	running.mu.Lock()
	running.ended = true
	running.mu.Unlock()
	if sp.warm("k") != nil {
		t.Error("an ended split is warm")
	}
}
