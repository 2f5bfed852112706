package gpu

import (
	"github.com/rbee-dev/rbee"

	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// mockGPU is one device of a mock NVML; ret, when set, is returned by the
// query named in fail.
type mockGPU struct {
	name  string
	total uint64
	free  uint64
	fail  string // "handle", "name", "uuid", "memory", "compute"
	ret   nvml.Return
}

func (g mockGPU) device() *mock.Device {
	retFor := func(q string) nvml.Return {
		if g.fail == q {
			return g.ret
		}
		return nvml.SUCCESS
	}
	return &mock.Device{
		GetNameFunc: func() (string, nvml.Return) { return g.name, retFor("name") },
		GetUUIDFunc: func() (string, nvml.Return) { return "GPU-" + g.name, retFor("uuid") },
		GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
			return nvml.Memory{Total: g.total, Free: g.free, Used: g.total - g.free}, retFor("memory")
		},
		GetCudaComputeCapabilityFunc: func() (int, int, nvml.Return) { return 8, 9, retFor("compute") },
	}
}

// mockNVML returns an NVML whose calls are recorded by the mock; functions
// a test does not expect stay nil, so that calling one panics.
func mockNVML(gpus []mockGPU) *mock.Interface {
	devs := make([]*mock.Device, len(gpus))
	for i, g := range gpus {
		devs[i] = g.device()
	}
	return &mock.Interface{
		InitFunc:                   func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc:               func() nvml.Return { return nvml.SUCCESS },
		SystemGetDriverVersionFunc: func() (string, nvml.Return) { return "550.54", nvml.SUCCESS },
		DeviceGetCountFunc:         func() (int, nvml.Return) { return len(gpus), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			if gpus[i].fail == "handle" {
				return nil, gpus[i].ret
			}
			return devs[i], nvml.SUCCESS
		},
	}
}

func mockDevice(i int, g mockGPU) rbee.Device {
	return rbee.Device{
		ID:         fmt.Sprintf("gpu%d", i),
		Kind:       rbee.DeviceGPU,
		Index:      i,
		Name:       g.name,
		UUID:       "GPU-" + g.name,
		TotalBytes: g.total,
		FreeBytes:  g.free,
		ComputeCap: "8.9",
	}
}

func TestProbe(t *testing.T) {
	a := mockGPU{name: "RTX 4090", total: 24 << 30, free: 20 << 30}
	b := mockGPU{name: "RTX 4060", total: 8 << 30, free: 7 << 30}
	failing := func(g mockGPU, q string, ret nvml.Return) mockGPU {
		g.fail, g.ret = q, ret
		return g
	}

	tests := []struct {
		name         string
		gpus         []mockGPU
		setup        func(*mock.Interface)
		want         []rbee.Device
		wantNotes    []string
		wantShutdown int
	}{
		{
			name:         "two gpus",
			gpus:         []mockGPU{a, b},
			want:         []rbee.Device{mockDevice(0, a), mockDevice(1, b)},
			wantNotes:    []string{"driver 550.54"},
			wantShutdown: 1,
		},
		{
			name:         "memory info fails on one gpu",
			gpus:         []mockGPU{a, failing(b, "memory", nvml.ERROR_GPU_IS_LOST)},
			want:         []rbee.Device{mockDevice(0, a)},
			wantNotes:    []string{"driver 550.54", "gpu1 skipped: get memory info: ERROR_GPU_IS_LOST"},
			wantShutdown: 1,
		},
		{
			name: "every query can skip a gpu",
			gpus: []mockGPU{
				failing(a, "handle", nvml.ERROR_NO_PERMISSION),
				failing(b, "name", nvml.ERROR_UNKNOWN),
				failing(a, "uuid", nvml.ERROR_NOT_SUPPORTED),
				failing(b, "compute", nvml.ERROR_TIMEOUT),
				a,
			},
			want: []rbee.Device{mockDevice(4, a)},
			wantNotes: []string{
				"driver 550.54",
				"gpu0 skipped: get handle: ERROR_NO_PERMISSION",
				"gpu1 skipped: get name: ERROR_UNKNOWN",
				"gpu2 skipped: get uuid: ERROR_NOT_SUPPORTED",
				"gpu3 skipped: get compute capability: ERROR_TIMEOUT",
			},
			wantShutdown: 1,
		},
		{
			name: "init fails",
			gpus: []mockGPU{a},
			setup: func(m *mock.Interface) {
				// Anything but Init panics.
				*m = mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_DRIVER_NOT_LOADED }}
			},
			wantNotes: []string{"init: ERROR_DRIVER_NOT_LOADED"},
		},
		{
			name: "driver version fails",
			gpus: []mockGPU{a},
			setup: func(m *mock.Interface) {
				m.SystemGetDriverVersionFunc = func() (string, nvml.Return) { return "", nvml.ERROR_NOT_SUPPORTED }
			},
			want:         []rbee.Device{mockDevice(0, a)},
			wantNotes:    []string{"driver version: ERROR_NOT_SUPPORTED"},
			wantShutdown: 1,
		},
		{
			name: "device count fails",
			gpus: []mockGPU{a},
			setup: func(m *mock.Interface) {
				m.DeviceGetCountFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_UNKNOWN }
			},
			wantNotes:    []string{"driver 550.54", "device count: ERROR_UNKNOWN"},
			wantShutdown: 1,
		},
		{
			name: "shutdown fails",
			gpus: []mockGPU{a},
			setup: func(m *mock.Interface) {
				m.ShutdownFunc = func() nvml.Return { return nvml.ERROR_UNKNOWN }
			},
			want:         []rbee.Device{mockDevice(0, a)},
			wantNotes:    []string{"driver 550.54", "shutdown: ERROR_UNKNOWN"},
			wantShutdown: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mockNVML(tt.gpus)
			if tt.setup != nil {
				tt.setup(m)
			}
			got, notes, err := probe(context.Background(), m, nil)
			if err != nil {
				t.Fatalf("probe: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got devices\n%+v\nwant\n%+v", got, tt.want)
			}
			if !reflect.DeepEqual(notes, tt.wantNotes) {
				t.Errorf("got notes %q, want %q", notes, tt.wantNotes)
			}
			if n := len(m.InitCalls()); n != 1 {
				t.Errorf("got %d Init calls, want 1", n)
			}
			if n := len(m.ShutdownCalls()); n != tt.wantShutdown {
				t.Errorf("got %d Shutdown calls, want %d", n, tt.wantShutdown)
			}
		})
	}
}

func TestProbeCanceled(t *testing.T) {
	m := mockNVML([]mockGPU{{name: "RTX 4090", total: 1, free: 1}})
	ctx, cancel := context.WithCancel(context.Background())
	m.DeviceGetCountFunc = func() (int, nvml.Return) {
		cancel() // the caller gives up while NVML is busy
		return 1, nvml.SUCCESS
	}
	_, _, err := probe(ctx, m, nil)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("got error %v, want %v", err, context.Canceled)
	}
	if n := len(m.DeviceGetHandleByIndexCalls()); n != 0 {
		t.Errorf("got %d device queries after cancel, want 0", n)
	}
	if n := len(m.ShutdownCalls()); n != 1 {
		t.Errorf("got %d Shutdown calls, want 1", n)
	}
}

func TestRetName(t *testing.T) {
	tests := []struct {
		ret  nvml.Return
		want string
	}{
		{nvml.SUCCESS, "SUCCESS"},
		{nvml.ERROR_DRIVER_NOT_LOADED, "ERROR_DRIVER_NOT_LOADED"},
		{nvml.ERROR_UNKNOWN, "ERROR_UNKNOWN"},
		{nvml.Return(77), "ERROR_77"},
	}
	for _, tt := range tests {
		if got := retName(tt.ret); got != tt.want {
			t.Errorf("retName(%d): got %q, want %q", int32(tt.ret), got, tt.want)
		}
	}
}
