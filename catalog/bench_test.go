package catalog

import (
	"github.com/rbee-dev/rbee"

	"fmt"
	"testing"
)

func BenchmarkModelLookup(b *testing.B) {
	ctx := b.Context()
	h := newHive(b)
	for i := range 1000 {
		m := Model{Path: fmt.Sprintf("/models/%04d.gguf", i), SHA256: sha(i), Alias: fmt.Sprintf("model-%d", i),
			Ref: fmt.Sprintf("hf:org/repo/model-%d.gguf", i)}
		if _, err := h.AddModel(ctx, m); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := h.Model(ctx, "model-500"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSetDevices(b *testing.B) {
	ctx := b.Context()
	q := openQueen(b, b.TempDir()+"/queen.db")
	if err := q.AddHive(ctx, Hive{Name: "gpu-box", Kind: "ssh"}); err != nil {
		b.Fatal(err)
	}
	devs := []rbee.Device{{ID: "cpu", Kind: "cpu", TotalBytes: 64 << 30, Cores: 16}}
	for i := range 4 {
		devs = append(devs, rbee.Device{ID: fmt.Sprintf("gpu%d", i), Kind: "gpu", Index: i, Name: "RTX 3090",
			TotalBytes: 24 << 30, FreeBytes: 23 << 30, ComputeCap: "8.6"})
	}
	for i := 0; b.Loop(); i++ {
		if err := q.SetDevices(ctx, "gpu-box", devs, ms(int64(i+1))); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHive(b *testing.B) {
	ctx := b.Context()
	q := openQueen(b, b.TempDir()+"/queen.db")
	h := gpuBox()
	if err := q.AddHive(ctx, h); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := q.Hive(ctx, h.Name); err != nil {
			b.Fatal(err)
		}
	}
}
