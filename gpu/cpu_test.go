package gpu

import (
	"github.com/rbee-dev/rbee"

	"os"
	"runtime"
	"testing"
)

func TestCPU(t *testing.T) {
	tests := []struct {
		name      string
		cpuinfo   string
		meminfo   string
		wantName  string
		wantTotal uint64
		wantFree  uint64
		wantErr   bool
	}{
		{
			name:      "x86",
			cpuinfo:   x86CPUInfo,
			meminfo:   memInfo,
			wantName:  "AMD Ryzen 9 5950X 16-Core Processor",
			wantTotal: 32768000 * 1024,
			wantFree:  16384000 * 1024,
		},
		{
			name:      "raspberry pi prefers Model to Hardware",
			cpuinfo:   piCPUInfo,
			meminfo:   memInfo,
			wantName:  "Raspberry Pi 4 Model B Rev 1.4",
			wantTotal: 32768000 * 1024,
			wantFree:  16384000 * 1024,
		},
		{
			name:      "kernel without MemAvailable",
			cpuinfo:   x86CPUInfo,
			meminfo:   oldMemInfo,
			wantName:  "AMD Ryzen 9 5950X 16-Core Processor",
			wantTotal: 32768000 * 1024,
			wantFree:  (1000000 + 200000 + 3000000) * 1024,
		},
		{
			name:      "cpu without a name",
			cpuinfo:   "processor\t: 0\n\n",
			meminfo:   memInfo,
			wantName:  runtime.GOARCH + " CPU",
			wantTotal: 32768000 * 1024,
			wantFree:  16384000 * 1024,
		},
		{name: "no cpuinfo", meminfo: memInfo, wantErr: true},
		{name: "no meminfo", cpuinfo: x86CPUInfo, wantErr: true},
		{name: "no MemTotal", cpuinfo: x86CPUInfo, meminfo: "MemFree: 10 kB\n", wantErr: true},
		{name: "garbled meminfo", cpuinfo: x86CPUInfo, meminfo: "MemTotal: lots kB\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := CPU(fakeProc(t, tt.cpuinfo, tt.meminfo))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("CPU: %v", err)
			}
			want := rbee.Device{
				ID:         "cpu",
				Kind:       rbee.DeviceCPU,
				Name:       tt.wantName,
				TotalBytes: tt.wantTotal,
				FreeBytes:  tt.wantFree,
				Cores:      runtime.NumCPU(),
			}
			if got != want {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
}

func TestCPURealProc(t *testing.T) {
	if _, err := os.Stat("/proc/meminfo"); err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	got, err := CPU("")
	if err != nil {
		t.Fatalf("CPU: %v", err)
	}
	if got.ID != "cpu" || got.Kind != rbee.DeviceCPU || got.Index != 0 {
		t.Errorf("got id %q kind %q index %d, want cpu cpu 0", got.ID, got.Kind, got.Index)
	}
	if got.Name == "" {
		t.Error("got an empty name")
	}
	if got.TotalBytes == 0 || got.FreeBytes > got.TotalBytes {
		t.Errorf("got total %d free %d, want 0 < free <= total", got.TotalBytes, got.FreeBytes)
	}
	if got.Cores != runtime.NumCPU() {
		t.Errorf("got %d cores, want %d", got.Cores, runtime.NumCPU())
	}
	t.Logf("%+v", got)
}
