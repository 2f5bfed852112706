package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/scheduler"
)

const gib = 1 << 30

// fakeHive is a hive in memory: devices with a VRAM checker that really
// accounts (so two jobs can race for one GPU), workers, models, and knobs
// for a hive that stalls or breaks.
type fakeHive struct {
	name    string
	devices []rbee.Device
	workers []rbee.WorkerInfo
	models  []hiveapi.Model

	stall    bool            // Snapshot blocks until its ctx ends
	gate     *sync.WaitGroup // Snapshot waits for the others of a race
	downAt   string          // "model": Model fails as if the host went away
	refuseAt map[string]bool // devices whose checker refuses everything

	mu        sync.Mutex
	reserved  map[string]uint64 // by device
	snapshots int
	modelsFor []string // ModelSpec.Raw per Model call
	reserves  []string // devices asked
	released  []string
}

func (f *fakeHive) Name() string { return f.name }

func (f *fakeHive) Snapshot(ctx context.Context, ev Events) (Snapshot, error) {
	f.mu.Lock()
	f.snapshots++
	f.mu.Unlock()
	if f.stall {
		<-ctx.Done()
		return Snapshot{}, ctx.Err()
	}
	f.mu.Lock()
	var devs []rbee.Device
	for _, d := range f.devices {
		d.FreeBytes -= f.reserved[d.ID]
		devs = append(devs, d)
	}
	f.mu.Unlock()
	if f.gate != nil {
		f.gate.Done()
		f.gate.Wait()
	}
	return Snapshot{Devices: devs, Workers: f.workers, Models: f.models}, nil
}

func (f *fakeHive) Model(ctx context.Context, spec *ModelSpec, snap Snapshot, ev Events) (hiveapi.Model, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.modelsFor = append(f.modelsFor, spec.Raw)
	if f.downAt == "model" {
		return hiveapi.Model{}, rbee.Errorf(rbee.CodeHiveDown, "hive %s: the SSH connection broke", f.name)
	}
	return hiveapi.Model{ID: catalog.ModelID(spec.SHA256), Ref: spec.Raw, SHA256: spec.SHA256, EstimateBytes: spec.Need}, nil
}

func (f *fakeHive) Reserve(ctx context.Context, r hiveapi.ReserveRequest) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reserves = append(f.reserves, r.Device)
	if f.reserved == nil {
		f.reserved = map[string]uint64{}
	}
	for _, d := range f.devices {
		if d.ID != r.Device {
			continue
		}
		room := d.FreeBytes - f.reserved[d.ID]
		if f.refuseAt[d.ID] || room < r.Bytes {
			return "", rbee.Errorf(rbee.CodeNoRoom, "%s has %s free, %s requested", d.ID, rbee.Bytes(room), rbee.Bytes(r.Bytes))
		}
		f.reserved[d.ID] += r.Bytes
		return f.name + "/" + d.ID + "/" + r.Purpose, nil
	}
	return "", rbee.Errorf(rbee.CodeDeviceUnknown, "no device %s", r.Device)
}

func (f *fakeHive) Release(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.released = append(f.released, id)
	return nil
}

func (f *fakeHive) Infer(context.Context, hiveapi.InferRequest, func(string, []byte) error) error {
	return errors.New("not in these tests")
}

func (f *fakeHive) calls() (models []string, reserves []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.modelsFor...), append([]string(nil), f.reserves...)
}

func gpu(id string, free uint64) rbee.Device {
	return rbee.Device{ID: id, Kind: rbee.DeviceGPU, Name: "GPU " + id, TotalBytes: free, FreeBytes: free, ComputeCap: "8.6"}
}

func cpu(free uint64) rbee.Device {
	return rbee.Device{ID: "cpu", Kind: rbee.DeviceCPU, Name: "CPU", TotalBytes: free, FreeBytes: free, Cores: 8}
}

// recorder collects a job's events.
type recorder struct {
	mu  sync.Mutex
	evs []rbee.Event
}

func (r *recorder) Send(ev rbee.Event) {
	r.mu.Lock()
	r.evs = append(r.evs, ev)
	r.mu.Unlock()
}

func (r *recorder) Narrate(action, msg string) { r.Send(rbee.Narrate(me, action, msg)) }

func (r *recorder) text() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, ev := range r.evs {
		b.WriteString(ev.Message + "\n")
	}
	return b.String()
}

func testPlanner(bound time.Duration) *planner {
	return &planner{sched: scheduler.Basic{}, bound: bound,
		estimate: func(context.Context, *ModelSpec, map[string]Snapshot) error { return nil }}
}

func spec(need uint64) *ModelSpec {
	return &ModelSpec{Raw: "/models/m.gguf", Path: "/models/m.gguf", SHA256: strings.Repeat("ab", 32), Need: need, CtxSize: 4096}
}

func TestPlaceWarmWorkerWinsAcrossHives(t *testing.T) {
	t.Parallel()
	s := spec(2 * gib)
	h1 := &fakeHive{name: "h1", devices: []rbee.Device{gpu("gpu0", 24*gib), cpu(64 * gib)}}
	h2 := &fakeHive{name: "h2", devices: []rbee.Device{cpu(16 * gib)},
		workers: []rbee.WorkerInfo{{ID: "w-1", ModelID: catalog.ModelID(s.SHA256), Device: "cpu", State: "ready"}}}
	var ev recorder
	pl, err := testPlanner(time.Second).place(context.Background(), PlaceJob{ID: "j", Spec: s, Fleet: true}, []Hive{h1, h2}, &ev)
	if err != nil {
		t.Fatal(err)
	}
	if pl.Hive != h2 || pl.Worker != "w-1" || pl.Reservation != "" {
		t.Errorf("placed on %s worker %q reservation %q, want h2's warm worker w-1", pl.Hive.Name(), pl.Worker, pl.Reservation)
	}
	for _, h := range []*fakeHive{h1, h2} {
		if m, r := h.calls(); len(m)+len(r) > 0 {
			t.Errorf("%s: model calls %v, reservations %v; the warm path needs none", h.name, m, r)
		}
	}
	if !strings.Contains(ev.text(), "fleet: hive h2, warm worker") {
		t.Errorf("narration does not say why h2:\n%s", ev.text())
	}
}

func TestPlaceStrongestDeviceAndModelOnlyThere(t *testing.T) {
	t.Parallel()
	h1 := &fakeHive{name: "h1", devices: []rbee.Device{cpu(64 * gib)}}
	h2 := &fakeHive{name: "h2", devices: []rbee.Device{gpu("gpu0", 24*gib), cpu(16 * gib)}}
	pl, err := testPlanner(time.Second).place(context.Background(), PlaceJob{ID: "j", Spec: spec(4 * gib)}, []Hive{h1, h2}, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	if pl.Hive != h2 || pl.Device != "gpu0" || pl.Reservation == "" {
		t.Errorf("placed on %s/%s (reservation %q), want h2/gpu0 reserved", pl.Hive.Name(), pl.Device, pl.Reservation)
	}
	if m, _ := h1.calls(); len(m) != 0 {
		t.Errorf("the model went to h1 too: %v", m)
	}
	if m, _ := h2.calls(); len(m) != 1 {
		t.Errorf("model calls on h2 = %v, want one", m)
	}
}

// A refusal (409) on the chosen hive moves the job to the next candidate,
// on another hive; the model is sent only where the room was granted.
func TestPlaceRefusalMovesToTheNextHive(t *testing.T) {
	t.Parallel()
	h1 := &fakeHive{name: "h1", devices: []rbee.Device{gpu("gpu0", 48*gib)}, refuseAt: map[string]bool{"gpu0": true}}
	h2 := &fakeHive{name: "h2", devices: []rbee.Device{gpu("gpu0", 24*gib)}}
	var ev recorder
	pl, err := testPlanner(time.Second).place(context.Background(), PlaceJob{ID: "j", Spec: spec(8 * gib)}, []Hive{h1, h2}, &ev)
	if err != nil {
		t.Fatalf("%v\n%s", err, ev.text())
	}
	if pl.Hive != h2 || pl.Device != "gpu0" {
		t.Errorf("placed on %s/%s, want h2/gpu0", pl.Hive.Name(), pl.Device)
	}
	if m, r := h1.calls(); len(m) != 0 || len(r) != 1 {
		t.Errorf("h1: model calls %v, reservations %v; want none and one", m, r)
	}
	if !strings.Contains(ev.text(), "hive h1 refused gpu0") || !strings.Contains(ev.text(), "trying the next candidate h2/gpu0") {
		t.Errorf("narration:\n%s", ev.text())
	}
}

// A hive that goes away between reservation and model push gives its
// reservation back, and the job goes on to the next hive.
func TestPlaceHiveLostMidAdmission(t *testing.T) {
	t.Parallel()
	h1 := &fakeHive{name: "h1", devices: []rbee.Device{gpu("gpu0", 48*gib)}, downAt: "model"}
	h2 := &fakeHive{name: "h2", devices: []rbee.Device{cpu(32 * gib)}}
	pl, err := testPlanner(time.Second).place(context.Background(), PlaceJob{ID: "j", Spec: spec(8 * gib)}, []Hive{h1, h2}, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	if pl.Hive != h2 {
		t.Errorf("placed on %s, want h2", pl.Hive.Name())
	}
	h1.mu.Lock()
	defer h1.mu.Unlock()
	if len(h1.released) != 1 {
		t.Errorf("h1 released %v, want its one reservation back", h1.released)
	}
}

// A hive that does not answer is left out within the bound, and said so;
// the others serve the job.
func TestPlaceStalledHiveLeftOut(t *testing.T) {
	t.Parallel()
	h1 := &fakeHive{name: "h1", devices: []rbee.Device{gpu("gpu0", 48*gib)}, stall: true}
	h2 := &fakeHive{name: "h2", devices: []rbee.Device{cpu(32 * gib)}}
	var ev recorder
	pl, err := testPlanner(50*time.Millisecond).place(context.Background(), PlaceJob{ID: "j", Spec: spec(gib), Fleet: true}, []Hive{h1, h2}, &ev)
	if err != nil {
		t.Fatal(err)
	}
	if pl.Hive != h2 {
		t.Errorf("placed on %s, want h2", pl.Hive.Name())
	}
	if !strings.Contains(ev.text(), "hive h1 is unreachable, left out of this job") {
		t.Errorf("narration does not say h1 was left out:\n%s", ev.text())
	}
}

// With one candidate, its failure is the job's, with its code.
func TestPlaceOnlyHiveStalled(t *testing.T) {
	t.Parallel()
	h1 := &fakeHive{name: "h1", stall: true}
	_, err := testPlanner(50*time.Millisecond).place(context.Background(), PlaceJob{ID: "j", Spec: spec(gib)}, []Hive{h1}, &recorder{})
	if rbee.CodeOf(err) != rbee.CodeHiveDown || !strings.Contains(err.Error(), "hive h1") {
		t.Errorf("err = %v (%s), want hive_unreachable naming h1", err, rbee.CodeOf(err))
	}
}

// Nothing fits: refused with the numbers before any model moves or any
// room is asked for.
func TestPlaceNoRoomAnywhere(t *testing.T) {
	t.Parallel()
	h1 := &fakeHive{name: "h1", devices: []rbee.Device{gpu("gpu0", 8*gib), cpu(4 * gib)}}
	_, err := testPlanner(time.Second).place(context.Background(), PlaceJob{ID: "j", Spec: spec(16 * gib)}, []Hive{h1}, &recorder{})
	if rbee.CodeOf(err) != rbee.CodeNoRoom {
		t.Fatalf("err = %v, want no_room", err)
	}
	if m, r := h1.calls(); len(m)+len(r) > 0 {
		t.Errorf("model calls %v, reservations %v; want none", m, r)
	}
}

// Two jobs race for one GPU that fits one model: both see it free, both
// plan it, the VRAM checker grants one; the other moves on to the CPU.
func TestPlaceTwoJobsOneGPU(t *testing.T) {
	t.Parallel()
	gate := &sync.WaitGroup{}
	gate.Add(2) // both snapshots are taken before either job reserves
	h := &fakeHive{name: "h1", devices: []rbee.Device{gpu("gpu0", 10*gib), cpu(64 * gib)}, gate: gate}
	p := testPlanner(5 * time.Second)
	var wg sync.WaitGroup
	got := make([]Placement, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = p.place(context.Background(), PlaceJob{ID: fmt.Sprintf("j%d", i), Spec: spec(8 * gib)}, []Hive{h}, &recorder{})
		}()
	}
	wg.Wait()
	devs := map[string]int{}
	for i := range 2 {
		if errs[i] != nil {
			t.Fatalf("job %d: %v", i, errs[i])
		}
		devs[got[i].Device]++
	}
	if devs["gpu0"] != 1 || devs["cpu"] != 1 {
		t.Errorf("devices %v, want one job on gpu0 and one on the cpu", devs)
	}
	if _, r := h.calls(); len(r) != 3 {
		t.Errorf("reservations asked %v, want gpu0, gpu0, cpu", r)
	}
}

// A reference already on a hive is planned from that hive's catalog: no
// estimate from the network.
func TestEstimateFromAHiveThatHasIt(t *testing.T) {
	t.Parallel()
	f := &Fleet{}
	s := &ModelSpec{Raw: "hf:org/repo/m.gguf"}
	ref, _ := parseRefForTest(s.Raw)
	s.Ref = &ref
	snaps := map[string]Snapshot{"h2": {Models: []hiveapi.Model{{ID: "sha256:1", Ref: "hf:org/repo/m.gguf", EstimateBytes: 3 * gib, CtxSize: 2048}}}}
	if err := f.Estimate(context.Background(), s, snaps); err != nil {
		t.Fatal(err)
	}
	if s.Need != 3*gib || s.CtxSize != 2048 {
		t.Errorf("need %d ctx %d, want the hive's 3 GiB at 2048", s.Need, s.CtxSize)
	}
}

func parseRefForTest(s string) (download.Ref, error) { return download.ParseRef(s) }

// --explain is one narration line per candidate (a keeper prints a line
// as one line: a newline inside was shown as a literal \n), the first
// carrying the candidates for --json.
func TestExplainIsOneLineEach(t *testing.T) {
	t.Parallel()
	h1 := &fakeHive{name: "h1", devices: []rbee.Device{cpu(64 * gib)}}
	h2 := &fakeHive{name: "h2", devices: []rbee.Device{gpu("gpu0", 24*gib), cpu(16 * gib)}}
	var ev recorder
	if _, err := testPlanner(time.Second).place(context.Background(), PlaceJob{ID: "j", Spec: spec(4 * gib), Explain: true, Fleet: true}, []Hive{h1, h2}, &ev); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, e := range ev.evs {
		if e.Action != "explain" {
			continue
		}
		if strings.Contains(e.Message, "\n") {
			t.Errorf("an explain event holds a newline: %q", e.Message)
		}
		if len(lines) == 0 && len(e.Candidates) != 3 {
			t.Errorf("the first explain event carries %d candidates, want 3", len(e.Candidates))
		}
		lines = append(lines, e.Message)
	}
	if len(lines) != 5 || lines[0] != "fleet candidates:" || !strings.HasPrefix(lines[1], "  DEVICE   NAME ") || !strings.HasPrefix(lines[2], "  h2/gpu0  GPU gpu0  picked:") {
		t.Errorf("explain lines %q, want a title, a table header, then a row a candidate, h2/gpu0 first, in columns", lines)
	}
}

func TestNaturalCompare(t *testing.T) {
	t.Parallel()
	names := []string{"h10", "h2", "localhost", "h1", "gpu-box", "h02", "h100", "a"}
	slices.SortFunc(names, naturalCompare)
	want := []string{"a", "gpu-box", "h1", "h02", "h2", "h10", "h100", "localhost"}
	if !slices.Equal(names, want) {
		t.Errorf("sorted %v, want %v", names, want)
	}
}

// A fleet job sums its candidates up in one line, however many there are
// and however fresh: no line per hive (91 of them at 100 hosts), except a
// warning for each hive left out.
func TestPlaceCandidatesOneLine(t *testing.T) {
	t.Parallel()
	var hives []Hive
	for i := range 40 {
		hives = append(hives, &fakeHive{name: fmt.Sprintf("h%d", i), devices: []rbee.Device{cpu(32 * gib)}})
	}
	hives = append(hives, &fakeHive{name: "gpubox", devices: []rbee.Device{gpu("gpu0", 48*gib), cpu(32 * gib)}},
		&fakeHive{name: "stalled", devices: []rbee.Device{cpu(32 * gib)}, stall: true})
	pl := testPlanner(50 * time.Millisecond)
	pl.fresh = func(string) bool { return true }
	var ev recorder
	if _, err := pl.place(context.Background(), PlaceJob{ID: "j", Spec: spec(gib), Fleet: true}, hives, &ev); err != nil {
		t.Fatal(err)
	}
	text := ev.text()
	if n := strings.Count(text, "candidates:"); n != 1 || !strings.Contains(text, "candidates: 42 hives, 41 answered (1 GPU(s), 41 CPU(s)), 1 unreachable and left out\n") {
		t.Errorf("%d candidates lines, want one with the counts:\n%s", n, text)
	}
	if strings.Contains(text, "device(s):") {
		t.Errorf("a line per hive's devices:\n%s", text)
	}
	if n := len(lines(text)); n > 6 {
		t.Errorf("%d lines of narration for a fleet job:\n%s", n, text)
	}
}

func lines(s string) []string { return strings.Split(strings.TrimSuffix(s, "\n"), "\n") }

// blockingEvents is a caller's stream that stops reading: Send blocks
// until block closes.
type blockingEvents struct {
	block   chan struct{}
	entered chan struct{}
}

func (b *blockingEvents) Send(rbee.Event) {
	select {
	case b.entered <- struct{}{}:
	default:
	}
	<-b.block
}

func (b *blockingEvents) Narrate(string, string) {}

// A caller whose stream stops reading does not stall a connect attempt:
// its progress events pass others by (the upload reports them from its
// reading goroutines; they waited on that caller's stream).
func TestDialProgressPassesAStalledStream(t *testing.T) {
	t.Parallel()
	d := &dial{done: make(chan struct{})}
	b := &blockingEvents{block: make(chan struct{}), entered: make(chan struct{}, 1)}
	leave := d.join(&narrator{ev: b})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.Narrate("step", "a line the stalled stream does not take")
	}()
	<-b.entered
	sent := make(chan struct{})
	go func() {
		d.Send(rbee.Event{Type: rbee.EventProgress, BytesDone: 1, BytesTotal: 2})
		close(sent)
	}()
	select {
	case <-sent:
	case <-time.After(10 * time.Second): // a hang detector, not a speed bound
		t.Error("a progress event waited on a stream that does not read")
	}
	close(b.block)
	wg.Wait()
	<-sent
	leave()
}
