package scheduler

import (
	"errors"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee"
)

const gib = 1 << 30

func devs() []rbee.Device {
	return []rbee.Device{
		{ID: "gpu0", Kind: "gpu", Name: "RTX 3060", TotalBytes: 12 * gib, FreeBytes: 11 * gib, ComputeCap: "8.6"},
		{ID: "gpu1", Kind: "gpu", Name: "RTX 3090", TotalBytes: 24 * gib, FreeBytes: 2 * gib, ComputeCap: "8.6"},
		{ID: "gpu2", Kind: "gpu", Name: "RTX 4060", TotalBytes: 12 * gib, FreeBytes: 11 * gib, ComputeCap: "8.9"},
		{ID: "cpu", Kind: "cpu", Name: "Xeon", TotalBytes: 64 * gib, FreeBytes: 60 * gib, Cores: 16},
	}
}

// driven are devs() with an engine backend on each GPU.
func driven() []rbee.Device {
	ds := devs()
	for i := range ds[:3] {
		ds[i].Backend = "CUDA" + ds[i].ID[3:]
	}
	return ds
}

func ids(opts []Option) string {
	var s []string
	for _, o := range opts {
		s = append(s, o.Hive+"/"+o.Device.ID)
	}
	return strings.Join(s, ",")
}

func TestBasicPlan(t *testing.T) {
	warm := rbee.WorkerInfo{ID: "w-1", ModelID: "m1", Device: "gpu0", State: "ready"}
	tests := []struct {
		name     string
		req      Request
		hives    []Hive
		want     string // option order
		wantWarm string
		wantCode string
		explain  string // a verdict that must appear
	}{
		{name: "strongest that fits, then by compute capability",
			req: Request{Need: 1 * gib}, hives: []Hive{{Name: "a", Devices: devs()}},
			want: "a/gpu1,a/gpu2,a/gpu0,a/cpu", explain: "picked: RTX 3090 with 24.0 GiB"},
		{name: "too big for the strongest",
			req: Request{Need: 4 * gib}, hives: []Hive{{Name: "a", Devices: devs()}},
			want: "a/gpu2,a/gpu0,a/cpu", explain: "needs 4.0 GiB, has 2.0 GiB free"},
		{name: "only the CPU fits",
			req: Request{Need: 20 * gib}, hives: []Hive{{Name: "a", Devices: devs()}}, want: "a/cpu"},
		{name: "too big for one GPU: split across the fewest, roomiest of the host, before the CPU",
			req: Request{Need: 20 * gib}, hives: []Hive{{Name: "a", Devices: driven()}},
			want: "a/gpu0,gpu2,a/cpu", explain: "picked: 2 GPUs split by layers: RTX 3060 + RTX 4060 with 24.0 GiB, 22.0 GiB free ≥ 20.0 GiB needed"},
		{name: "no split when one GPU fits",
			req: Request{Need: 4 * gib}, hives: []Hive{{Name: "a", Devices: driven()}}, want: "a/gpu2,a/gpu0,a/cpu"},
		{name: "no split of GPUs no engine drives",
			req: Request{Need: 20 * gib}, hives: []Hive{{Name: "a", Devices: devs()}}, want: "a/cpu"},
		{name: "no split across hosts",
			req:   Request{Need: 20 * gib},
			hives: []Hive{{Name: "a", Devices: driven()[:1]}, {Name: "b", Devices: driven()[2:]}}, want: "b/cpu"},
		{name: "a pinned split",
			req: Request{Need: 1 * gib, Device: "gpu0,gpu1"}, hives: []Hive{{Name: "a", Devices: driven()}}, want: "a/gpu0,gpu1"},
		{name: "nothing fits",
			req: Request{Need: 100 * gib}, hives: []Hive{{Name: "a", Devices: devs()}}, wantCode: rbee.CodeNoRoom},
		{name: "warm worker wins",
			req:   Request{Need: 1 * gib},
			hives: []Hive{{Name: "a", Devices: devs(), Workers: []rbee.WorkerInfo{warm}, ModelID: "m1"}}, wantWarm: "w-1",
			explain: "warm worker w-1"},
		{name: "a worker of another model is not warm",
			req:   Request{Need: 1 * gib},
			hives: []Hive{{Name: "a", Devices: devs(), Workers: []rbee.WorkerInfo{warm}, ModelID: "m2"}}, want: "a/gpu1,a/gpu2,a/gpu0,a/cpu"},
		{name: "a starting worker is not warm",
			req:   Request{Need: 1 * gib},
			hives: []Hive{{Name: "a", Devices: devs(), Workers: []rbee.WorkerInfo{{ID: "w-2", ModelID: "m1", Device: "gpu0", State: "starting"}}, ModelID: "m1"}},
			want:  "a/gpu1,a/gpu2,a/gpu0,a/cpu"},
		{name: "pinned device",
			req: Request{Need: 1 * gib, Device: "gpu0"}, hives: []Hive{{Name: "a", Devices: devs()}}, want: "a/gpu0",
			explain: "not the pinned device gpu0"},
		{name: "pinned device unknown",
			req: Request{Need: 1 * gib, Device: "gpu9"}, hives: []Hive{{Name: "a", Devices: devs()}}, wantCode: rbee.CodeDeviceUnknown},
		{name: "pinned hive",
			req:   Request{Need: 1 * gib, Hive: "b"},
			hives: []Hive{{Name: "a", Devices: devs()}, {Name: "b", Devices: devs()[3:]}}, want: "b/cpu"},
		{name: "hive with the model file first among equals",
			req:   Request{Need: 1 * gib},
			hives: []Hive{{Name: "a", Devices: devs()[3:]}, {Name: "b", Devices: devs()[3:], HasModel: true}}, want: "b/cpu,a/cpu"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Basic{}.Plan(tt.req, tt.hives)
			if tt.wantCode != "" {
				var re *rbee.Error
				if !errors.As(err, &re) || re.Code != tt.wantCode {
					t.Fatalf("got %v, want code %s", err, tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantWarm != "" {
				if p.Warm == nil || p.Warm.ID != tt.wantWarm {
					t.Errorf("warm = %+v, want %s", p.Warm, tt.wantWarm)
				}
			} else if got := ids(p.Options); got != tt.want {
				t.Errorf("options = %s, want %s", got, tt.want)
			}
			if tt.explain != "" {
				found := false
				for _, c := range p.Candidates {
					found = found || strings.Contains(c.Verdict, tt.explain)
				}
				if !found {
					t.Errorf("no candidate verdict contains %q: %+v", tt.explain, p.Candidates)
				}
			}
			if len(p.Candidates) == 0 {
				t.Error("no candidates for --explain")
			}
		})
	}
}

// With a warm worker, its device is listed once, as the pick: it did not
// also lose to itself ("fits, but warm worker … on the same device").
func TestWarmListedOnce(t *testing.T) {
	warm := rbee.WorkerInfo{ID: "w-1", ModelID: "m1", Device: "gpu0", State: "ready"}
	p, err := Basic{}.Plan(Request{Need: gib}, []Hive{{Name: "a", Devices: devs(), Workers: []rbee.WorkerInfo{warm}, ModelID: "m1"}})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range p.Candidates {
		if c.Hive == "a" && c.Device == "gpu0" {
			n++
			if !strings.HasPrefix(c.Verdict, "picked: ") {
				t.Errorf("a/gpu0: %q, want the pick", c.Verdict)
			}
		}
	}
	if n != 1 || len(p.Candidates) != len(devs()) {
		t.Errorf("a/gpu0 listed %d times among %d candidates (want once among %d): %+v", n, len(p.Candidates), len(devs()), p.Candidates)
	}
}
