package agent

import (
	"context"
	"strings"

	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/modelfile"
)

// size chooses a new worker's slots and context per slot from the room on
// its device (modelfile.Size: docs/worker.md) and grows the job's
// reservation to what that worker will really allocate, so the VRAM
// checker's books match the process. Without a reservation, or when the
// room cannot be read, the worker gets one slot of the configured context:
// what the queen reserved for.
func (a *Agent) size(ctx context.Context, m catalog.Model, device, reservation string) (slots, ctxPerSlot int) {
	want := a.cfg.CtxSize
	if m.CtxTrain > 0 {
		want = min(want, m.CtxTrain) // what the model's estimate (and the queen) counted
	}
	slots, ctxPerSlot = 1, want
	if reservation == "" {
		return slots, ctxPerSlot
	}
	devs, err := a.detect(ctx)
	if err != nil {
		return slots, ctxPerSlot
	}
	for _, d := range devs.Devices {
		if d.ID != device {
			continue
		}
		held := a.vram.bytesOf(reservation)
		sz := modelfile.Size(modelfile.SizeRequest{Free: d.RoomBytes + held, GPU: strings.HasPrefix(device, "gpu"),
			WeightsBytes: m.WeightsBytes, KVBytesPerTok: m.KVBytesPerTok, CtxTrain: m.CtxTrain, CtxPerSlot: want})
		if sz.Slots > 1 && a.vram.grow(reservation, sz.Bytes, d.TotalBytes, d.FreeBytes) {
			return sz.Slots, sz.CtxPerSlot
		}
	}
	return slots, ctxPerSlot
}
