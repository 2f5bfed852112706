package scheduler

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/rbee-dev/rbee"
)

// Request is what a job needs.
type Request struct {
	ModelSHA256 string // identifies the model across hives
	Need        uint64 // estimated bytes: weights + KV cache + overhead
	Hive        string // pinned hive ("" = any)
	Device      string // pinned device ("" = any)
	WorkerType  string // "" = rbee-worker; else an external worker type
}

// Hive is what the scheduler knows of one hive.
type Hive struct {
	Name     string
	Devices  []rbee.Device
	Workers  []rbee.WorkerInfo // running workers
	HasModel bool              // the model file is already on this hive
	ModelID  string            // the model's id in this hive's catalog
}

// Option is a device to try.
type Option struct {
	Hive   string
	Device rbee.Device
	Reason string // why it ranks where it does
}

// Plan is the scheduler's answer: Warm, or Options to try in order.
type Plan struct {
	Warm       *rbee.WorkerInfo
	WarmReason string
	Options    []Option
	Candidates []rbee.Candidate // every device considered, for --explain
}

// Scheduler picks where a job runs.
type Scheduler interface {
	Plan(req Request, hives []Hive) (Plan, error)
}

// Basic is the basic scheduler: a warm worker that holds the model wins;
// else the strongest device (most memory, then compute capability; GPUs
// before the CPU; a hive that has the model file first) whose free memory
// fits the estimate.
type Basic struct{}

// Plan implements Scheduler.
func (Basic) Plan(req Request, hives []Hive) (Plan, error) {
	var p Plan
	for _, h := range hives {
		if req.Hive != "" && h.Name != req.Hive {
			continue
		}
		for _, w := range h.Workers {
			// A split worker is the queen's to route to: it lives only as
			// long as its forwards and RPC servers.
			if h.ModelID == "" || w.ModelID != h.ModelID || w.State != "ready" || w.Type != req.WorkerType || len(w.RPC) > 0 {
				continue
			}
			if req.Device != "" && w.Device != req.Device {
				continue
			}
			if p.Warm == nil || w.Busy < p.Warm.Busy {
				ww := w
				ww.Hive = h.Name
				p.Warm = &ww
			}
		}
	}
	type cand struct {
		hive     string
		has      bool
		dev      rbee.Device
		fits     bool
		rejected string
	}
	var cs []cand
	pinnedFound := req.Device == ""
	for _, h := range hives {
		if req.Hive != "" && h.Name != req.Hive {
			continue
		}
		devs := h.Devices
		if g, ok := gpuGroup(h.Devices, req); ok {
			devs = append(slices.Clone(devs), g)
		}
		for _, d := range devs {
			c := cand{hive: h.Name, has: h.HasModel, dev: d, fits: d.FreeBytes >= req.Need}
			switch {
			case req.Device != "" && d.ID != req.Device:
				c.rejected = fmt.Sprintf("not the pinned device %s", req.Device)
			case !c.fits:
				c.rejected = fmt.Sprintf("needs %s, has %s free", rbee.Bytes(req.Need), rbee.Bytes(d.FreeBytes))
			}
			if req.Device != "" && d.ID == req.Device {
				pinnedFound = true
			}
			cs = append(cs, c)
		}
	}
	if !pinnedFound {
		return p, rbee.Errorf(rbee.CodeDeviceUnknown, "no device %q on %s; devices: %s", req.Device, hiveNames(req, hives), deviceList(hives, req.Hive))
	}
	slices.SortStableFunc(cs, func(a, b cand) int {
		if c := cmp.Compare(kindRank(a.dev), kindRank(b.dev)); c != 0 {
			return c
		}
		if c := cmp.Compare(b.dev.TotalBytes, a.dev.TotalBytes); c != 0 {
			return c
		}
		if c := cmp.Compare(capValue(b.dev.ComputeCap), capValue(a.dev.ComputeCap)); c != 0 {
			return c
		}
		if a.has != b.has {
			if a.has {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.hive+a.dev.ID, b.hive+b.dev.ID)
	})
	rank := 0
	for _, c := range cs {
		rc := rbee.Candidate{Hive: c.hive, Device: c.dev.ID, Name: c.dev.Name, Free: c.dev.FreeBytes, Need: req.Need}
		switch {
		case c.rejected != "":
			rc.Rejected, rc.Verdict = true, c.rejected
		case p.Warm != nil && c.hive == p.Warm.Hive && c.dev.ID == p.Warm.Device:
			continue // the picked one, listed first: it did not lose to itself
		case p.Warm != nil:
			rank++
			rc.Rank = rank + 1
			rc.Verdict = fmt.Sprintf("fits, but warm worker %s on %s/%s already holds the model", p.Warm.ID, p.Warm.Hive, p.Warm.Device)
		default:
			rank++
			rc.Rank = rank
			reason := strength(c.dev) + fmt.Sprintf(", %s free ≥ %s needed", rbee.Bytes(c.dev.FreeBytes), rbee.Bytes(req.Need))
			if c.has {
				reason += ", has the model file"
			}
			if rank == 1 {
				rc.Verdict = "picked: " + reason
			} else {
				rc.Verdict = fmt.Sprintf("fallback #%d: %s", rank, reason)
			}
			p.Options = append(p.Options, Option{Hive: c.hive, Device: c.dev, Reason: reason})
		}
		p.Candidates = append(p.Candidates, rc)
	}
	if p.Warm != nil {
		p.WarmReason = fmt.Sprintf("warm worker %s on %s/%s already holds the model", p.Warm.ID, p.Warm.Hive, p.Warm.Device)
		p.Candidates = append([]rbee.Candidate{{Hive: p.Warm.Hive, Device: p.Warm.Device, Warm: p.Warm.ID, Rank: 1, Verdict: "picked: " + p.WarmReason}}, p.Candidates...)
		return p, nil
	}
	if len(p.Options) == 0 {
		return p, rbee.Errorf(rbee.CodeNoRoom, "no device has room for the model (needs %s): %s", rbee.Bytes(req.Need), rejections(p.Candidates))
	}
	return p, nil
}

// kindRank orders devices: a GPU, then several GPUs of one host sharing
// the model, then the CPU.
func kindRank(d rbee.Device) int {
	switch {
	case d.Kind == rbee.DeviceGPU && !strings.Contains(d.ID, ","):
		return 0
	case d.Kind == rbee.DeviceGPU:
		return 1
	}
	return 2
}

// gpuGroup is the candidate of one worker split across several GPUs of a
// host (llama.cpp's layer split): the GPUs req.Device names
// ("gpu0,gpu1"), else — when no single GPU of the host has room — the
// fewest GPUs of one backend, roomiest first, whose free memory together
// does. Only GPUs an engine backend drives can share a model.
func gpuGroup(devs []rbee.Device, req Request) (rbee.Device, bool) {
	var pick []rbee.Device
	if strings.Contains(req.Device, ",") {
		for id := range strings.SplitSeq(req.Device, ",") {
			i := slices.IndexFunc(devs, func(d rbee.Device) bool { return d.ID == id && d.Kind == rbee.DeviceGPU })
			if i < 0 {
				return rbee.Device{}, false
			}
			pick = append(pick, devs[i])
		}
	} else {
		if req.Device != "" || slices.ContainsFunc(devs, func(d rbee.Device) bool { return d.Kind == rbee.DeviceGPU && d.FreeBytes >= req.Need }) {
			return rbee.Device{}, false
		}
		byKind := map[string][]rbee.Device{}
		for _, d := range devs {
			if d.Kind == rbee.DeviceGPU && d.Backend != "" {
				k := strings.TrimRight(d.Backend, "0123456789")
				byKind[k] = append(byKind[k], d)
			}
		}
		for _, k := range slices.Sorted(maps.Keys(byKind)) {
			gs := byKind[k]
			slices.SortStableFunc(gs, func(a, b rbee.Device) int { return cmp.Compare(b.FreeBytes, a.FreeBytes) })
			var free uint64
			for i, g := range gs {
				free += g.FreeBytes
				if free >= req.Need && i > 0 {
					if pick == nil || i+1 < len(pick) {
						pick = slices.Clone(gs[:i+1])
					}
					break
				}
			}
		}
		if len(pick) < 2 {
			return rbee.Device{}, false
		}
		slices.SortFunc(pick, func(a, b rbee.Device) int { return cmp.Compare(a.Index, b.Index) })
	}
	g := rbee.Device{Kind: rbee.DeviceGPU}
	var ids, names, backends []string
	for _, d := range pick {
		ids, names, backends = append(ids, d.ID), append(names, d.Name), append(backends, d.Backend)
		g.TotalBytes += d.TotalBytes
		g.FreeBytes += d.FreeBytes
		g.Software = g.Software || d.Software
	}
	g.ID, g.Backend = strings.Join(ids, ","), strings.Join(backends, ",")
	g.Name = fmt.Sprintf("%d GPUs split by layers: %s", len(pick), strings.Join(names, " + "))
	return g, true
}

// capValue turns "8.6" into 86 for ordering.
func capValue(s string) int {
	maj, mnr, _ := strings.Cut(s, ".")
	a, _ := strconv.Atoi(maj)
	b, _ := strconv.Atoi(mnr)
	return a*10 + b
}

func strength(d rbee.Device) string {
	if d.Kind == "gpu" {
		s := fmt.Sprintf("%s with %s", d.Name, rbee.Bytes(d.TotalBytes))
		if d.ComputeCap != "" {
			s += ", compute " + d.ComputeCap
		}
		return s
	}
	return fmt.Sprintf("CPU %s (%d cores, %s RAM)", d.Name, d.Cores, rbee.Bytes(d.TotalBytes))
}

func rejections(cs []rbee.Candidate) string {
	var parts []string
	for _, c := range cs {
		parts = append(parts, fmt.Sprintf("%s/%s %s", c.Hive, c.Device, c.Verdict))
	}
	return strings.Join(parts, "; ")
}

func hiveNames(req Request, hives []Hive) string {
	if req.Hive != "" {
		return "hive " + req.Hive
	}
	return fmt.Sprintf("%d hives", len(hives))
}

func deviceList(hives []Hive, only string) string {
	var ids []string
	for _, h := range hives {
		if only != "" && h.Name != only {
			continue
		}
		for _, d := range h.Devices {
			ids = append(ids, d.ID)
		}
	}
	return strings.Join(ids, ", ")
}
