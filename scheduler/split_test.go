package scheduler

import (
	"strings"
	"testing"

	"github.com/rbee-dev/rbee"
)

func gpuHive(name string, free uint64) Hive {
	return Hive{Name: name, Devices: []rbee.Device{
		{ID: "gpu0", Kind: "gpu", Name: "GPU", TotalBytes: free + gib, FreeBytes: free},
		{ID: "cpu", Kind: "cpu", Name: "CPU", TotalBytes: 64 * gib, FreeBytes: 60 * gib},
	}}
}

func cpuHive(name string, free uint64) Hive {
	return Hive{Name: name, Devices: []rbee.Device{{ID: "cpu", Kind: "cpu", Name: "CPU", TotalBytes: free + gib, FreeBytes: free}}}
}

func parts(p SplitPlan) string {
	var s []string
	for _, pt := range p.Parts {
		x := pt.Hive + "/" + pt.Device.ID
		if pt.Main {
			x += "*"
		}
		s = append(s, x)
	}
	return strings.Join(s, ",")
}

func TestPlanSplit(t *testing.T) {
	tests := []struct {
		name     string
		req      SplitRequest
		hives    []Hive
		want     string // parts, main starred
		layers   []int
		wantCode string
		wantMsg  []string
	}{
		{
			name:   "fewest roomiest GPUs",
			req:    SplitRequest{Need: 30 * gib, Weights: 28 * gib, Layers: 40},
			hives:  []Hive{gpuHive("a", 10*gib), gpuHive("b", 22*gib), gpuHive("c", 20*gib), gpuHive("d", 4*gib)},
			want:   "b/gpu0*,c/gpu0",
			layers: []int{21, 19},
		},
		{
			name:   "named hives all take part",
			req:    SplitRequest{Need: 3 * gib, Layers: 22, Hives: []string{"x", "y", "z"}},
			hives:  []Hive{cpuHive("x", 10*gib), cpuHive("y", 10*gib), cpuHive("z", 10*gib)},
			want:   "x/cpu*,y/cpu,z/cpu",
			layers: []int{8, 7, 7},
		},
		{
			name:   "named: the roomiest runs the main worker",
			req:    SplitRequest{Need: 3 * gib, Layers: 20, Hives: []string{"x", "y", "z"}},
			hives:  []Hive{cpuHive("x", 10*gib), cpuHive("y", 30*gib), cpuHive("z", 9900*1<<20)},
			want:   "y/cpu*,x/cpu,z/cpu",
			layers: []int{12, 4, 4},
		},
		{
			name:   "named: near-equal room, the first named is main",
			req:    SplitRequest{Need: 3 * gib, Layers: 20, Hives: []string{"z", "x"}},
			hives:  []Hive{cpuHive("x", 10*gib), cpuHive("z", 9900*1<<20)},
			want:   "z/cpu*,x/cpu",
			layers: []int{10, 10},
		},
		{
			name:     "no room anywhere",
			req:      SplitRequest{Need: 100 * gib, Layers: 40},
			hives:    []Hive{gpuHive("a", 10*gib), gpuHive("b", 20*gib)},
			wantCode: rbee.CodeNoRoom,
			wantMsg:  []string{"needs 100.0 GiB", "a/gpu0 10.0 GiB", "b/gpu0 20.0 GiB"},
		},
		{
			name:     "a named hive too small for its share",
			req:      SplitRequest{Need: 20 * gib, Layers: 10, Hives: []string{"a", "b"}},
			hives:    []Hive{cpuHive("a", 30*gib), cpuHive("b", 1*gib)},
			wantCode: rbee.CodeNoRoom,
			wantMsg:  []string{"b/cpu needs", "1.0 GiB free"},
		},
		{
			name:     "a named hive unreachable",
			req:      SplitRequest{Need: gib, Hives: []string{"a", "gone"}},
			hives:    []Hive{cpuHive("a", 30*gib)},
			wantCode: rbee.CodeHiveDown,
			wantMsg:  []string{"gone"},
		},
		{
			name:     "one hive is no split",
			req:      SplitRequest{Need: gib},
			hives:    []Hive{cpuHive("a", 30*gib)},
			wantCode: rbee.CodeNoRoom,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := PlanSplit(tt.req, tt.hives)
			if tt.wantCode != "" {
				if rbee.CodeOf(err) != tt.wantCode {
					t.Fatalf("got %v (%s), want code %s", err, rbee.CodeOf(err), tt.wantCode)
				}
				for _, m := range tt.wantMsg {
					if !strings.Contains(err.Error(), m) {
						t.Errorf("error %q lacks %q", err, m)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := parts(p); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
			sum := 0
			for i, pt := range p.Parts {
				sum += pt.Layers
				if i < len(tt.layers) && pt.Layers != tt.layers[i] {
					t.Errorf("%s: got %d layers, want %d", pt.Hive, pt.Layers, tt.layers[i])
				}
				if pt.Bytes > pt.Device.FreeBytes || pt.Bytes < splitOverhead {
					t.Errorf("%s: share %d bytes of %d free", pt.Hive, pt.Bytes, pt.Device.FreeBytes)
				}
			}
			if sum != tt.req.Layers {
				t.Errorf("layers sum to %d, want %d", sum, tt.req.Layers)
			}
			sh := p.Shares()
			for i, pt := range p.Parts {
				want := float64(pt.Layers)
				if i == len(p.Parts)-1 {
					want++ // the output layer goes with the last device
				}
				if sh[i] != want {
					t.Errorf("shares %v: part %d got %v, want %v", sh, i, sh[i], want)
				}
			}
			if ex := p.Explain(); !strings.Contains(ex, "(main worker)") || !strings.Contains(ex, "(RPC server)") {
				t.Errorf("explain:\n%s", ex)
			}
		})
	}
}

// A split worker is not a warm worker for an ordinary job.
func TestBasicPlanSkipsSplitWorkers(t *testing.T) {
	h := cpuHive("a", 30*gib)
	h.ModelID = "m1"
	h.Workers = []rbee.WorkerInfo{{ID: "w-1", ModelID: "m1", Device: "cpu", State: "ready", RPC: []string{"127.0.0.1:5000"}}}
	p, err := Basic{}.Plan(Request{Need: gib}, []Hive{h})
	if err != nil {
		t.Fatal(err)
	}
	if p.Warm != nil {
		t.Errorf("the split worker was picked as warm: %+v", p.Warm)
	}
}
