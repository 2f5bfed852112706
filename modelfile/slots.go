package modelfile

// Worker sizing: how many slots (parallel sequences) a worker runs and how
// many context tokens each gets, from the device's free memory and the
// model's weights and KV cache size. The hive reserves Sizing.Bytes and
// starts the worker with --slots Sizing.Slots --ctx-size Sizing.CtxPerSlot;
// a worker started with --slots 0 applies the same rule itself. See
// docs/worker.md.
const (
	// DefaultCtxPerSlot is the context a slot gets when the model trained
	// on at least as much.
	DefaultCtxPerSlot = 4096
	// MinCtxPerSlot is the least context a slot is shrunk to.
	MinCtxPerSlot = 512
	// MaxSlotsCPU and MaxSlotsGPU cap the chosen slots: a CPU gains little
	// from batching more sequences than this; a GPU decodes 8 in about the
	// time of one.
	MaxSlotsCPU = 4
	MaxSlotsGPU = 8
	// kvSharePercent is the share of the memory left after the weights and
	// compute buffers that the KV cache of the chosen slots may take; the
	// rest stays free for other processes and allocator slack.
	kvSharePercent = 50
	ctxStep        = 256 // contexts are shrunk in whole steps of this
)

// SizeRequest is what Size needs; Slots and CtxPerSlot 0 mean "choose".
type SizeRequest struct {
	Free          uint64 // free bytes on the device; 0 = unknown
	GPU           bool
	WeightsBytes  uint64
	KVBytesPerTok uint64
	CtxTrain      int // 0 = unknown
	Slots         int // 0 = choose
	CtxPerSlot    int // 0 = choose
}

// Sizing is a worker's slots, context per slot, and the bytes to reserve
// for it (Estimate of Slots × CtxPerSlot tokens).
type Sizing struct {
	Slots      int    `json:"slots"`
	CtxPerSlot int    `json:"ctx_per_slot"`
	Bytes      uint64 `json:"bytes"`
}

// Size applies the rule:
//
//  1. ctx per slot: as asked, else min(CtxTrain, 4096).
//  2. room = Free − weights − compute overhead (Estimate's); the KV cache
//     may take half of it.
//  3. slots: as asked, else as many slots of that context as fit the KV
//     share, between 1 and 4 (CPU) or 8 (GPU). Unknown free memory gives 1.
//  4. A context that was not asked for shrinks (in steps of 256 tokens, not
//     below 512) until one slot's KV fits the share.
//  5. Bytes = weights + Slots × CtxPerSlot × KV per token + overhead.
//
// The request's explicit values are never changed.
func Size(r SizeRequest) Sizing {
	ctx := r.CtxPerSlot
	if ctx <= 0 {
		ctx = DefaultCtxPerSlot
		if r.CtxTrain > 0 {
			ctx = min(r.CtxTrain, DefaultCtxPerSlot)
		}
	}
	info := Info{WeightsBytes: r.WeightsBytes, KVBytesPerTok: r.KVBytesPerTok}
	share := uint64(0)
	if fixed := info.Estimate(1) - r.KVBytesPerTok; r.Free > fixed {
		share = (r.Free - fixed) / 100 * kvSharePercent
	}
	if r.CtxPerSlot <= 0 && r.Free > 0 && r.KVBytesPerTok > 0 {
		for ctx > MinCtxPerSlot && satMul(uint64(ctx), r.KVBytesPerTok) > share {
			ctx = max(MinCtxPerSlot, (ctx-1)/ctxStep*ctxStep)
		}
	}
	slots := r.Slots
	if slots <= 0 {
		slots = 1
		if r.Free > 0 && r.KVBytesPerTok > 0 {
			most := MaxSlotsCPU
			if r.GPU {
				most = MaxSlotsGPU
			}
			// Saturating: KV bytes per token come from an untrusted header.
			fit := share / max(satMul(uint64(ctx), r.KVBytesPerTok), 1)
			slots = int(min(uint64(most), max(fit, 1)))
		}
	}
	return Sizing{Slots: slots, CtxPerSlot: ctx, Bytes: info.Estimate(slots * ctx)}
}

// Sizing sizes a worker for this model on a device with free bytes (see the
// package function Size); slots and ctxPerSlot 0 mean "choose".
func (i Info) Sizing(free uint64, gpu bool, slots, ctxPerSlot int) Sizing {
	return Size(SizeRequest{Free: free, GPU: gpu, WeightsBytes: i.WeightsBytes, KVBytesPerTok: i.KVBytesPerTok,
		CtxTrain: i.CtxTrain, Slots: slots, CtxPerSlot: ctxPerSlot})
}
