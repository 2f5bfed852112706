package split

import (
	"strings"
	"testing"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/queen/fleet"
	"github.com/rbee-dev/rbee/queenapi"
)

func TestValidateSplit(t *testing.T) {
	tests := []struct {
		name string
		req  queenapi.JobRequest
		want string // "" = accepted
	}{
		{"none", queenapi.JobRequest{}, ""},
		{"two", queenapi.JobRequest{Split: []string{"a", "b"}}, ""},
		{"one", queenapi.JobRequest{Split: []string{"a"}}, "at least two"},
		{"twice", queenapi.JobRequest{Split: []string{"a", "b", "a"}}, "hive a named twice"},
		{"empty name", queenapi.JobRequest{Split: []string{"a", ""}}, "empty hive name"},
		{"with --hive", queenapi.JobRequest{Split: []string{"a", "b"}, Hive: "a"}, "--hive"},
		{"with --device", queenapi.JobRequest{Split: []string{"a", "b"}, Device: "gpu0"}, "--device"},
		{"with --worker-type", queenapi.JobRequest{Split: []string{"a", "b"}, WorkerType: "x"}, "--worker-type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.req)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got %v, want accepted", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || rbee.CodeOf(err) != rbee.CodeBadRequest):
				t.Errorf("got %v, want a bad request naming %q", err, tt.want)
			}
		})
	}
}

func TestSplitKeyIgnoresOrder(t *testing.T) {
	spec := &fleet.ModelSpec{SHA256: "abc"}
	if a, b := splitKey(spec, []string{"h2", "h1", "localhost"}), splitKey(spec, []string{"localhost", "h1", "h2"}); a != b {
		t.Errorf("keys differ: %q %q", a, b)
	}
	if a, b := splitKey(spec, []string{"h1", "h2"}), splitKey(spec, []string{"h1", "h3"}); a == b {
		t.Errorf("different hives, same key %q", a)
	}
}

type recEvents struct{ evs []rbee.Event }

func (r *recEvents) Send(ev rbee.Event) { r.evs = append(r.evs, ev) }
func (r *recEvents) Narrate(action, msg string) {
	r.evs = append(r.evs, rbee.Narrate(me, action, msg))
}

// A model no device holds and the hives together do not either: the job
// fails with both sets of numbers, and --explain says why, before any hive
// is touched (the Splitter here has no fleet: touching one would panic).
func TestAutoSplitNoRoom(t *testing.T) {
	const gib = 1 << 30
	cpu := func(free uint64) fleet.Snapshot {
		return fleet.Snapshot{Devices: []rbee.Device{{ID: "cpu", Kind: rbee.DeviceCPU, Name: "CPU", TotalBytes: free, FreeBytes: free}}}
	}
	spec := &fleet.ModelSpec{Raw: "/m/big.gguf", Need: 40 * gib, Weights: 38 * gib, Layers: 40}
	cause := rbee.Errorf(rbee.CodeNoRoom, "no device has room for the model (needs 40.0 GiB)")
	ev := &recEvents{}
	sp := &Splitter{}
	err := sp.Auto(t.Context(), "job-1", queenapi.JobRequest{Explain: true}, spec, map[string]fleet.Snapshot{"a": cpu(16 * gib), "b": cpu(20 * gib)}, cause, ev)
	if rbee.CodeOf(err) != rbee.CodeNoRoom || !strings.Contains(err.Error(), "needs 40.0 GiB") || !strings.Contains(err.Error(), "all 2 hives together have 36.0 GiB free") {
		t.Errorf("got %v, want no_room with the fleet's numbers", err)
	}
	explained := false
	for _, e := range ev.evs {
		explained = explained || e.Action == "explain" && strings.Contains(e.Message, "split:")
	}
	if !explained {
		t.Errorf("--explain said nothing of the split: %+v", ev.evs)
	}
	// One hive: no split to propose, the cause stands.
	if err := sp.Auto(t.Context(), "job-2", queenapi.JobRequest{}, spec, map[string]fleet.Snapshot{"a": cpu(16 * gib)}, cause, ev); err != cause {
		t.Errorf("one hive: got %v, want the cause", err)
	}
}
