package llm

import (
	"slices"
	"strings"
	"testing"

	"github.com/hybridgroup/yzma/pkg/llama"
)

// The expected placements on a local CPU were read from llama.cpp's own
// load_tensors log ("layer N assigned to device …") for random-75m (22
// layers) with the same parameters; the local GPU's follows llama.cpp's
// formula (no GPU here to read it from).
func TestPlanSplit(t *testing.T) {
	cpu := Device{Name: "CPU", Type: "cpu", FreeBytes: 1 << 30}
	gpu := Device{Name: "CUDA0", Type: "gpu", FreeBytes: 1 << 30}
	rpc := []Device{
		{Name: "RPC0", Type: "gpu", Endpoint: "127.0.0.1:50301", FreeBytes: 1 << 30},
		{Name: "RPC1", Type: "gpu", Endpoint: "127.0.0.1:50302", FreeBytes: 1 << 30},
	}
	handles := []llama.GGMLBackendDevice{11, 12}
	pl := func(dev, ep string, layers int, out bool) Placement {
		return Placement{Device: dev, Endpoint: ep, Layers: layers, Output: out}
	}
	tests := []struct {
		name     string
		local    Device
		localDev llama.GGMLBackendDevice
		shares   []float64
		wantNGPU int32
		wantDevs []llama.GGMLBackendDevice
		want     []Placement
		wantErr  string
	}{
		{name: "thirds", local: cpu, shares: []float64{1, 1, 1}, wantNGPU: 16, wantDevs: []llama.GGMLBackendDevice{11, 12, 0},
			want: []Placement{pl("CPU", "", 7, false), pl("RPC0", rpc[0].Endpoint, 8, false), pl("RPC1", rpc[1].Endpoint, 7, true)}},
		{name: "by free memory", local: cpu, wantNGPU: 16, wantDevs: []llama.GGMLBackendDevice{11, 12, 0},
			want: []Placement{pl("CPU", "", 7, false), pl("RPC0", rpc[0].Endpoint, 8, false), pl("RPC1", rpc[1].Endpoint, 7, true)}},
		{name: "servers only", local: cpu, shares: []float64{0, 1, 3}, wantNGPU: 23, wantDevs: []llama.GGMLBackendDevice{11, 12, 0},
			want: []Placement{pl("CPU", "", 0, false), pl("RPC0", rpc[0].Endpoint, 6, false), pl("RPC1", rpc[1].Endpoint, 16, true)}},
		{name: "uneven", local: cpu, shares: []float64{2, 1, 0.5}, wantNGPU: 10, wantDevs: []llama.GGMLBackendDevice{11, 12, 0},
			want: []Placement{pl("CPU", "", 13, false), pl("RPC0", rpc[0].Endpoint, 7, false), pl("RPC1", rpc[1].Endpoint, 2, true)}},
		{name: "local gpu", local: gpu, localDev: 7, shares: []float64{2, 1, 1}, wantNGPU: 999, wantDevs: []llama.GGMLBackendDevice{7, 11, 12, 0},
			want: []Placement{pl("CUDA0", "", 12, false), pl("RPC0", rpc[0].Endpoint, 6, false), pl("RPC1", rpc[1].Endpoint, 4, true)}},
		{name: "wrong count", local: cpu, shares: []float64{1, 1}, wantErr: "2 shares for 3 devices (CPU, RPC0, RPC1)"},
		{name: "negative", local: cpu, shares: []float64{1, -1, 1}, wantErr: "not a number ≥ 0"},
		{name: "all zero", local: cpu, shares: []float64{0, 0, 0}, wantErr: "every share is 0"},
		{name: "servers zero", local: cpu, shares: []float64{1, 0, 0}, wantErr: "the rpc servers' shares are all 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := planSplit(22, tt.local, tt.localDev, rpc, handles, tt.shares)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.nGPU != tt.wantNGPU {
				t.Errorf("n_gpu_layers: got %d, want %d", p.nGPU, tt.wantNGPU)
			}
			if !slices.Equal(p.devices, tt.wantDevs) {
				t.Errorf("devices: got %v, want %v", p.devices, tt.wantDevs)
			}
			if len(p.split) != len(p.devices)-1 {
				t.Errorf("tensor_split: got %v for %d devices", p.split, len(p.devices)-1)
			}
			if !slices.Equal(p.placement, tt.want) {
				t.Errorf("placement:\n got %+v\nwant %+v", p.placement, tt.want)
			}
		})
	}
}

func TestParseEndpoints(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{in: "127.0.0.1:50052", want: []string{"127.0.0.1:50052"}},
		{in: "127.0.0.1:1, localhost:2", want: []string{"127.0.0.1:1", "localhost:2"}},
		{in: "127.0.0.1", wantErr: "want HOST:PORT"},
		{in: ":50052", wantErr: "want HOST:PORT with an IPv4 address"},
		{in: "[::1]:50052", wantErr: "takes no IPv6"},
		{in: "127.0.0.1:0", wantErr: "not a number from 1 to 65535"},
		{in: "127.0.0.1:http", wantErr: "not a number from 1 to 65535"},
		{in: "127.0.0.1:1,127.0.0.1:1", wantErr: "given twice"},
		{in: "127.0.0.1:1,", wantErr: `rpc server "": want HOST:PORT`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseEndpoints(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, %v; want an error with %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:C476": "127.0.0.1:50294",
		"0F02000A:0016": "10.0.2.15:22",
		"0100007F":      "",
		"XX00007F:0016": "",
	} {
		got, ok := procAddr(in)
		if got != want || ok != (want != "") {
			t.Errorf("procAddr(%q): got %q, %v; want %q", in, got, ok, want)
		}
	}
}
