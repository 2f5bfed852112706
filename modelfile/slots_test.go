package modelfile

import "testing"

func TestSize(t *testing.T) {
	const (
		mib = 1 << 20
		gib = 1 << 30
	)
	// A 4 GiB model with 128 KiB of KV per token (4096 tokens = 512 MiB),
	// overhead 5% of the weights (about 205 MiB).
	base := SizeRequest{WeightsBytes: 4 * gib, KVBytesPerTok: 128 << 10, CtxTrain: 8192}
	overhead := uint64(4*gib) / 100 * 5
	tests := []struct {
		name      string
		mod       func(*SizeRequest)
		slots     int
		ctx       int
		wantBytes uint64
	}{
		{"unknown free: one slot", func(r *SizeRequest) {}, 1, 4096, 4*gib + 512*mib + overhead},
		{"cpu, plenty: capped at 4", func(r *SizeRequest) { r.Free = 64 * gib }, 4, 4096, 4*gib + 4*512*mib + overhead},
		{"gpu, plenty: capped at 8", func(r *SizeRequest) { r.Free = 64 * gib; r.GPU = true }, 8, 4096, 4*gib + 8*512*mib + overhead},
		// room = 6 GiB − 4 GiB − 205 MiB ≈ 1843 MiB; half is 921 MiB: one 512 MiB slot.
		{"gpu, tight: one slot", func(r *SizeRequest) { r.Free = 6 * gib; r.GPU = true }, 1, 4096, 4*gib + 512*mib + overhead},
		// room ≈ 307 MiB; half is 153 MiB: 1224 tokens → 1024.
		{"too tight: context shrinks", func(r *SizeRequest) { r.Free = 4*gib + 512*mib; r.GPU = true }, 1, 1024, 4*gib + 128*mib + overhead},
		{"nothing left: 512 floor", func(r *SizeRequest) { r.Free = 4 * gib }, 1, 512, 4*gib + 64*mib + overhead},
		{"short training context", func(r *SizeRequest) { r.CtxTrain = 2048 }, 1, 2048, 4*gib + 256*mib + overhead},
		{"explicit values kept", func(r *SizeRequest) { r.Free = 4 * gib; r.Slots = 3; r.CtxPerSlot = 8192 }, 3, 8192, 4*gib + 3*1024*mib + overhead},
		{"explicit slots, chosen ctx", func(r *SizeRequest) { r.Free = 64 * gib; r.Slots = 2 }, 2, 4096, 4*gib + 2*512*mib + overhead},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := base
			tt.mod(&r)
			got := Size(r)
			if got.Slots != tt.slots || got.CtxPerSlot != tt.ctx || got.Bytes != tt.wantBytes {
				t.Errorf("got %d slots × %d tokens, %d MiB; want %d × %d, %d MiB",
					got.Slots, got.CtxPerSlot, got.Bytes/mib, tt.slots, tt.ctx, tt.wantBytes/mib)
			}
		})
	}
}

// A header claiming absurd KV sizes never makes sizing panic or wrap.
func TestSizeHugeKV(t *testing.T) {
	t.Parallel()
	for _, kv := range []uint64{1 << 52, 1<<52 + 1, 1 << 63, ^uint64(0)} {
		sz := Size(SizeRequest{Free: 8 << 30, GPU: true, KVBytesPerTok: kv})
		if sz.Slots != 1 {
			t.Errorf("KV %d bytes/token: %d slots, want 1", kv, sz.Slots)
		}
	}
}
