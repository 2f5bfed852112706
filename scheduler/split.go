package scheduler

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/rbee-dev/rbee"
)

// SplitRequest asks for one model spread over several hives with
// llama.cpp's RPC backend.
type SplitRequest struct {
	Need    uint64 // the whole model's estimate: weights + KV cache + overhead
	Weights uint64
	Layers  int // the model's block count; 0 = unknown (fractions only)
	// Hives, when set, are the hives the user named (--split): each takes
	// part, in this order of preference for the main worker. Otherwise
	// the fewest hives with the most room are picked.
	Hives []string
}

// SplitPart is one hive's share of a split.
type SplitPart struct {
	Hive     string
	Device   rbee.Device
	Main     bool    // the hive that runs the worker itself
	Fraction float64 // of the layers (and of the KV cache)
	Layers   int     // 0 when the model's block count is unknown
	Bytes    uint64  // the estimate of this device's share
}

// SplitPlan is a split: the main hive first.
type SplitPlan struct {
	Parts []SplitPart
}

// Hives names the parts' hives, the main first.
func (p SplitPlan) Hives() []string {
	out := make([]string, len(p.Parts))
	for i, pt := range p.Parts {
		out[i] = pt.Hive
	}
	return out
}

// Shares are the parts' shares of the layers, main first: what
// rbee-worker --tensor-split takes. With the block count known they are
// whole layers, and the last part counts the output layer too, which
// llama.cpp places on the last device: each part then gets exactly the
// layers the plan gave it.
func (p SplitPlan) Shares() []float64 {
	out := make([]float64, len(p.Parts))
	whole := true
	for i, pt := range p.Parts {
		out[i] = pt.Fraction
		if pt.Layers > 0 {
			out[i] = float64(pt.Layers)
		} else {
			whole = false
		}
	}
	if whole && len(out) > 0 {
		out[len(out)-1]++
	}
	return out
}

// Explain is the plan in lines, for --explain and narration.
func (p SplitPlan) Explain() string {
	var b strings.Builder
	fmt.Fprintf(&b, "split across %d hives:", len(p.Parts))
	for _, pt := range p.Parts {
		role := "RPC server"
		if pt.Main {
			role = "main worker"
		}
		layers := ""
		if pt.Layers > 0 {
			layers = fmt.Sprintf("%d layers, ", pt.Layers)
		}
		fmt.Fprintf(&b, "\n  %s/%s (%s): %s%.0f%%, about %s of %s free", pt.Hive, pt.Device.ID, role, layers, 100*pt.Fraction,
			rbee.Bytes(pt.Bytes), rbee.Bytes(pt.Device.FreeBytes))
	}
	return b.String()
}

// splitOverhead is each part's own compute buffers and runtime: a split
// costs every host this much on top of its share of the weights.
const splitOverhead = 64 << 20

// PlanSplit spreads req over hives: on each hive its roomiest device (GPUs
// before the CPU), shares in proportion to free memory (what llama.cpp's
// layer split does), each share with its own overhead. The main worker
// goes to the hive with the most room. With req.Hives every named hive
// takes part, and among hives within 5% of the most room the first named
// runs the main worker; otherwise hives are added, roomiest first, until
// the model fits. A hive whose share does not fit fails the plan with the numbers.
func PlanSplit(req SplitRequest, hives []Hive) (SplitPlan, error) {
	byName := map[string]Hive{}
	for _, h := range hives {
		byName[h.Name] = h
	}
	type cand struct {
		hive string
		dev  rbee.Device
	}
	var cs []cand
	if len(req.Hives) > 0 {
		for _, n := range req.Hives {
			h, ok := byName[n]
			if !ok {
				return SplitPlan{}, rbee.Errorf(rbee.CodeHiveDown, "split: hive %s is not reachable", n)
			}
			d, ok := roomiest(h.Devices)
			if !ok {
				return SplitPlan{}, rbee.Errorf(rbee.CodeNoRoom, "split: hive %s has no device", n)
			}
			cs = append(cs, cand{n, d})
		}
	} else {
		for _, h := range hives {
			if d, ok := roomiest(h.Devices); ok {
				cs = append(cs, cand{h.Name, d})
			}
		}
	}
	if len(req.Hives) > 0 {
		// The main worker goes to the roomiest; among hives within 5% of
		// it, to the one named first.
		best := 0
		for i, c := range cs {
			if kindRank(c.dev) < kindRank(cs[best].dev) || kindRank(c.dev) == kindRank(cs[best].dev) && c.dev.FreeBytes > cs[best].dev.FreeBytes {
				best = i
			}
		}
		for i, c := range cs {
			if kindRank(c.dev) == kindRank(cs[best].dev) && float64(c.dev.FreeBytes) >= 0.95*float64(cs[best].dev.FreeBytes) {
				best = i
				break
			}
		}
		cs = append([]cand{cs[best]}, slices.Delete(slices.Clone(cs), best, best+1)...)
	} else {
		slices.SortStableFunc(cs, func(a, b cand) int {
			if c := cmp.Compare(kindRank(a.dev), kindRank(b.dev)); c != 0 {
				return c
			}
			return cmp.Compare(b.dev.FreeBytes, a.dev.FreeBytes)
		})
	}
	if len(req.Hives) == 0 {
		// The fewest hives that hold it: add the roomiest until they do.
		var sum uint64
		n := 0
		for n < len(cs) && (n < 2 || sum < req.Need+uint64(n)*splitOverhead) {
			sum += cs[n].dev.FreeBytes
			n++
		}
		if n < 2 || sum < req.Need+uint64(n)*splitOverhead {
			return SplitPlan{}, noRoomSplit(req, cs, func(c cand) (string, rbee.Device) { return c.hive, c.dev })
		}
		cs = cs[:n]
	}
	if len(cs) < 2 {
		return SplitPlan{}, rbee.Errorf(rbee.CodeBadRequest, "split: name at least two hives")
	}
	var total uint64
	for _, c := range cs {
		total += c.dev.FreeBytes
	}
	p := SplitPlan{}
	for i, c := range cs {
		f := 1 / float64(len(cs))
		if total > 0 {
			f = float64(c.dev.FreeBytes) / float64(total)
		}
		p.Parts = append(p.Parts, SplitPart{Hive: c.hive, Device: c.dev, Main: i == 0, Fraction: f})
	}
	assignLayers(p.Parts, req.Layers)
	var short []string
	for i := range p.Parts {
		pt := &p.Parts[i]
		share := pt.Fraction
		if req.Layers > 0 {
			share = float64(pt.Layers) / float64(req.Layers)
		}
		pt.Bytes = uint64(float64(req.Need)*share) + splitOverhead
		if pt.Bytes > pt.Device.FreeBytes {
			short = append(short, fmt.Sprintf("%s/%s needs %s, has %s free", pt.Hive, pt.Device.ID, rbee.Bytes(pt.Bytes), rbee.Bytes(pt.Device.FreeBytes)))
		}
	}
	if len(short) > 0 {
		return p, rbee.Errorf(rbee.CodeNoRoom, "no room for a split of the model (needs %s in all): %s", rbee.Bytes(req.Need), strings.Join(short, "; "))
	}
	return p, nil
}

// assignLayers gives each part its whole number of layers, in proportion
// to its fraction (largest remainders first), at least one each when
// there are enough.
func assignLayers(parts []SplitPart, layers int) {
	if layers <= 0 {
		return
	}
	type rem struct {
		i int
		r float64
	}
	var rs []rem
	given := 0
	for i := range parts {
		x := parts[i].Fraction * float64(layers)
		parts[i].Layers = int(x)
		given += parts[i].Layers
		rs = append(rs, rem{i, x - float64(int(x))})
	}
	slices.SortStableFunc(rs, func(a, b rem) int { return cmp.Compare(b.r, a.r) })
	for k := 0; given < layers; k++ {
		parts[rs[k%len(rs)].i].Layers++
		given++
	}
	if layers < len(parts) {
		return
	}
	// Every part holds a layer: one with none would carry bytes for nothing.
	for i := range parts {
		for parts[i].Layers == 0 {
			j := slices.IndexFunc(parts, func(p SplitPart) bool { return p.Layers > 1 })
			if j < 0 {
				return
			}
			for k := range parts { // take from the one with the most
				if parts[k].Layers > parts[j].Layers {
					j = k
				}
			}
			parts[j].Layers--
			parts[i].Layers++
		}
	}
}

// roomiest is a hive's device with the most free memory, GPUs first.
func roomiest(ds []rbee.Device) (rbee.Device, bool) {
	if len(ds) == 0 {
		return rbee.Device{}, false
	}
	best := ds[0]
	for _, d := range ds[1:] {
		if kindRank(d) < kindRank(best) || kindRank(d) == kindRank(best) && d.FreeBytes > best.FreeBytes {
			best = d
		}
	}
	return best, true
}

func noRoomSplit[T any](req SplitRequest, cs []T, get func(T) (string, rbee.Device)) error {
	var sum uint64
	var parts []string
	for _, c := range cs {
		h, d := get(c)
		sum += d.FreeBytes
		parts = append(parts, fmt.Sprintf("%s/%s %s", h, d.ID, rbee.Bytes(d.FreeBytes)))
	}
	return rbee.Errorf(rbee.CodeNoRoom, "no device has room for the model (needs %s), and all %d hives together have %s free (%s), short of %s with %s overhead per hive",
		rbee.Bytes(req.Need), len(cs), rbee.Bytes(sum), strings.Join(parts, ", "), rbee.Bytes(req.Need+uint64(len(cs))*splitOverhead), rbee.Bytes(splitOverhead))
}
