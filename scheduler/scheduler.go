package scheduler

import (
	"cmp"
	"fmt"
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
		for _, d := range h.Devices {
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

func kindRank(d rbee.Device) int {
	if d.Kind == "gpu" {
		return 0
	}
	return 1
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
