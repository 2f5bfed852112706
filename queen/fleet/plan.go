package fleet

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/internal/watchdog"
	"github.com/rbee-dev/rbee/scheduler"
)

// Placement is the decision a job carries from planning to the run: the
// hive, and either a warm worker or a device with its reservation.
type Placement struct {
	Hive        Hive
	Model       hiveapi.Model // the hive's catalog entry (ID only, on the warm path)
	Worker      string        // a warm worker
	Device      string
	Reservation string
}

// PlaceJob is what planning needs of a job.
type PlaceJob struct {
	ID         string
	Spec       *ModelSpec
	Device     string
	WorkerType string
	Explain    bool
	Fleet      bool // the hive was not named: say which one was picked and why
	// Snaps, when set, are snapshots the caller already took of hives
	// (the front door, to find the model by name): not taken again.
	Snaps map[string]Snapshot
	// Exclude are devices ("hive/device") the job may not use: a
	// deployment's next replica goes to a device without one.
	Exclude map[string]bool
	// Embeddings: the worker serves /v1/embeddings (a warm worker must
	// too).
	Embeddings bool
}

// planner plans a job once across its candidate hives and admits it.
type planner struct {
	sched scheduler.Scheduler
	bound time.Duration // one hive's snapshot
	// estimate fills a reference's Need once the snapshots are in (a hive
	// that holds the model answers without the network).
	estimate func(ctx context.Context, spec *ModelSpec, snaps map[string]Snapshot) error
	// seen reports a hive's first contact (its devices are news).
	fresh func(name string) bool
}

// place takes one snapshot of each candidate (in parallel, each within
// the bound: a stalled hive is left out and said so), plans once across
// all of them, and admits on the chosen device, moving on down the plan —
// to the next device or the next hive — when a hive refuses (409). The
// model reaches a hive only once the hive is chosen.
func (p *planner) place(ctx context.Context, job PlaceJob, hives []Hive, ev Events) (Placement, error) {
	snaps := job.Snaps
	if snaps == nil {
		var err error
		if snaps, err = p.snapshots(ctx, hives, ev); err != nil {
			return Placement{}, err
		}
	}
	if err := p.estimate(ctx, job.Spec, snaps); err != nil {
		return Placement{}, err
	}
	byName := map[string]Hive{}
	var sh []scheduler.Hive
	for _, h := range hives {
		s, ok := snaps[h.Name()]
		if !ok {
			continue
		}
		byName[h.Name()] = h
		id, has := ModelID(job.Spec, s)
		if h.Name() == LocalHive && job.Spec.Path != "" {
			has = true // a local file is already on this machine
		}
		devs, workers := s.Devices, s.Workers
		if len(job.Exclude) > 0 || job.Embeddings || hasEmbeddings(workers) {
			devs, workers = nil, nil
			for _, d := range s.Devices {
				if !job.Exclude[h.Name()+"/"+d.ID] {
					devs = append(devs, d)
				}
			}
			for _, w := range s.Workers {
				if !job.Exclude[h.Name()+"/"+w.Device] && w.Embeddings == job.Embeddings {
					workers = append(workers, w)
				}
			}
		}
		sh = append(sh, scheduler.Hive{Name: h.Name(), Devices: devs, Workers: workers, HasModel: has, ModelID: id})
	}
	sort.Slice(sh, func(i, j int) bool { return sh[i].Name < sh[j].Name })
	plan, err := p.sched.Plan(scheduler.Request{ModelSHA256: job.Spec.SHA256, Need: job.Spec.Need, Device: job.Device, WorkerType: job.WorkerType}, sh)
	if job.Explain {
		prefix := ""
		if job.Fleet {
			prefix = "fleet "
		}
		// One event a line: narration is one line (a keeper escapes a
		// newline); the first carries the candidates for --json.
		ev.Send(rbee.Event{Type: rbee.EventNarration, Actor: me, Action: "explain", Message: prefix + "candidates:", Candidates: plan.Candidates})
		for _, row := range explainRows(plan.Candidates) {
			ev.Send(rbee.Event{Type: rbee.EventNarration, Actor: me, Action: "explain", Message: row})
		}
	}
	if err != nil {
		if rbee.CodeOf(err) == rbee.CodeNoRoom && job.Spec.Ref != nil && job.Spec.Checked {
			return Placement{}, p.noRoomBeforeFetch(job.Spec, sh, err)
		}
		return Placement{}, err
	}
	if plan.Warm != nil {
		w := plan.Warm
		if job.Fleet {
			ev.Narrate("hive_picked", fmt.Sprintf("fleet: hive %s, %s", w.Hive, plan.WarmReason))
		}
		ev.Narrate("device_picked", "scheduler: "+plan.WarmReason)
		return Placement{Hive: byName[w.Hive], Model: hiveapi.Model{ID: w.ModelID}, Worker: w.ID, Device: w.Device}, nil
	}
	return p.admit(ctx, job, plan.Options, byName, snaps, ev)
}

func hasEmbeddings(ws []rbee.WorkerInfo) bool {
	for _, w := range ws {
		if w.Embeddings {
			return true
		}
	}
	return false
}

// snapshots asks every candidate at once; each answer is bounded. With
// one candidate its failure is the job's; with several, the unreachable
// are left out (and said so) unless none answers.
func (p *planner) snapshots(ctx context.Context, hives []Hive, ev Events) (map[string]Snapshot, error) {
	var (
		mu    sync.Mutex
		wg    sync.WaitGroup
		snaps = map[string]Snapshot{}
		errs  = map[string]error{}
	)
	for _, h := range hives {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Bounded by silence, not total time: an agent uploaded
			// inside the job takes as long as the link needs.
			sctx, cancel := watchdog.WithSilence(ctx, p.bound)
			defer cancel()
			hev := ev
			if len(hives) > 1 {
				hev = Quiet{} // a fleet's connects are not narrated one by one
			}
			s, err := h.Snapshot(sctx, hev)
			if err == nil && sctx.Err() != nil {
				err = sctx.Err()
			}
			if re := (*rbee.Error)(nil); errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil && !errors.As(err, &re) {
				err = rbee.Errorf(rbee.CodeHiveDown, "hive %s did not answer within %s", h.Name(), p.bound)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs[h.Name()] = err
				return
			}
			snaps[h.Name()] = s
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(hives) == 1 {
		if err := errs[hives[0].Name()]; err != nil {
			return nil, err
		}
	}
	names := make([]string, 0, len(hives))
	for _, h := range hives {
		names = append(names, h.Name())
	}
	sort.Strings(names)
	if len(hives) > 1 {
		ev.Send(candidatesLine(names, snaps, errs))
	}
	for _, n := range names {
		if err, ok := errs[n]; ok {
			w := rbee.Narrate(me, "hive_skipped", fmt.Sprintf("hive %s is unreachable, left out of this job: %v", n, err))
			w.Level = "warn"
			ev.Send(w)
		}
		if s, ok := snaps[n]; ok && len(hives) == 1 && p.fresh != nil && p.fresh(n) {
			ev.Narrate("devices_detected", fmt.Sprintf("hive %s has %s", n, describeDevices(s.Devices)))
		}
	}
	if len(snaps) == 0 {
		return nil, rbee.Errorf(rbee.CodeHiveDown, "no hive is reachable")
	}
	return snaps, nil
}

// admit goes down the plan: the option's hive reserves room on the device
// (its VRAM checker), then the model reaches that hive (once per hive). A
// refusal moves to the next option, whichever hive it is on; so does a
// hive that cannot be reached any more.
func (p *planner) admit(ctx context.Context, job PlaceJob, opts []scheduler.Option, byName map[string]Hive, snaps map[string]Snapshot, ev Events) (Placement, error) {
	models := map[string]hiveapi.Model{}
	failed := map[string]error{}
	var refusals []string
	for i, opt := range opts {
		h := byName[opt.Hive]
		if _, bad := failed[opt.Hive]; bad {
			continue
		}
		switch {
		case i == 0 && job.Fleet:
			ev.Narrate("hive_picked", fmt.Sprintf("fleet: hive %s, %s/%s: %s", opt.Hive, opt.Hive, opt.Device.ID, opt.Reason))
			fallthrough
		case i == 0:
			ev.Narrate("device_picked", fmt.Sprintf("scheduler picked %s/%s: %s", opt.Hive, opt.Device.ID, opt.Reason))
		default:
			ev.Narrate("device_picked", fmt.Sprintf("trying the next candidate %s/%s: %s", opt.Hive, opt.Device.ID, opt.Reason))
		}
		res, err := h.Reserve(ctx, hiveapi.ReserveRequest{Device: opt.Device.ID, Bytes: job.Spec.Need, Purpose: job.ID})
		if rbee.CodeOf(err) == rbee.CodeNoRoom {
			refusals = append(refusals, err.Error())
			w := rbee.Narrate(me, "room_refused", fmt.Sprintf("hive %s refused %s: %v", opt.Hive, opt.Device.ID, err))
			w.Level = "warn"
			ev.Send(w)
			continue
		}
		if err != nil {
			if p.skip(ctx, job, opt.Hive, byName, failed, err, ev) {
				continue
			}
			return Placement{}, err
		}
		ev.Narrate("room_checked", fmt.Sprintf("hive %s reserved %s on %s", opt.Hive, rbee.Bytes(job.Spec.Need), opt.Device.ID))
		m, ok := models[opt.Hive]
		if !ok {
			if job.Spec.Ref != nil && job.Spec.Checked {
				if _, there := snaps[opt.Hive].Find(job.Spec); !there {
					ev.Narrate("model_fits", fmt.Sprintf("%s needs about %s: fits %s/%s (%s free), checked from its header before downloading",
						job.Spec.Raw, rbee.Bytes(job.Spec.Need), opt.Hive, opt.Device.ID, rbee.Bytes(opt.Device.FreeBytes)))
				}
			}
			m, err = h.Model(ctx, job.Spec, snaps[opt.Hive], ev)
			if err != nil {
				_ = h.Release(context.WithoutCancel(ctx), res)
				if p.skip(ctx, job, opt.Hive, byName, failed, err, ev) {
					continue
				}
				return Placement{}, err
			}
			models[opt.Hive] = m
			ev.Narrate("model_ready", fmt.Sprintf("model %s: %s %s, %s on disk, needs about %s with a %d-token context",
				ShownName(m.Ref), m.Arch, m.Quant, rbee.Bytes(uint64(m.Size)), rbee.Bytes(job.Spec.Need), max(m.CtxSize, job.Spec.CtxSize)))
		}
		return Placement{Hive: h, Model: m, Device: opt.Device.ID, Reservation: res}, nil
	}
	if len(refusals) == 0 && len(failed) > 0 {
		errs := make([]error, 0, len(failed))
		for _, e := range failed {
			errs = append(errs, e)
		}
		return Placement{}, &rbee.Error{Code: rbee.CodeHiveDown, Message: fmt.Sprintf("no hive could take the model: %v", errors.Join(errs...)), Err: errs[0]}
	}
	return Placement{}, rbee.Errorf(rbee.CodeNoRoom, "no device has room for %s (needs %s): %s", ShownName(job.Spec.Raw),
		rbee.Bytes(job.Spec.Need), strings.Join(refusals, "; "))
}

// skip decides whether a hive that failed mid-admission is left for the
// next one: only when it became unreachable and others remain.
func (p *planner) skip(ctx context.Context, job PlaceJob, name string, byName map[string]Hive, failed map[string]error, err error, ev Events) bool {
	if ctx.Err() != nil || len(byName) == 1 || rbee.CodeOf(err) != rbee.CodeHiveDown {
		return false
	}
	failed[name] = err
	w := rbee.Narrate(me, "hive_skipped", fmt.Sprintf("hive %s: %v; trying the next hive", name, err))
	w.Level = "warn"
	ev.Send(w)
	return true
}

// noRoomBeforeFetch explains a reference no device can hold, with the
// numbers, before anything was downloaded.
func (p *planner) noRoomBeforeFetch(spec *ModelSpec, hives []scheduler.Hive, cause error) error {
	var best rbee.Device
	bestHive := ""
	for _, h := range hives {
		for _, d := range h.Devices {
			if d.FreeBytes > best.FreeBytes {
				best, bestHive = d, h.Name
			}
		}
	}
	return (&rbee.Error{Code: rbee.CodeNoRoom, Err: cause,
		Message: fmt.Sprintf("%s needs about %s (weights %s + KV cache for %d tokens); the roomiest device, %s/%s, has %s free: nothing was downloaded",
			spec.Raw, rbee.Bytes(spec.Need), rbee.Bytes(spec.Weights), spec.CtxSize, bestHive, best.ID, rbee.Bytes(best.FreeBytes))}).
		WithHint("pick a smaller quantization (hf:ORG/REPO:Q4_K_M) or another hive")
}

func describeDevices(ds []rbee.Device) string {
	var parts []string
	for _, d := range ds {
		if d.Kind == rbee.DeviceGPU {
			note := rbee.Bytes(d.TotalBytes)
			if dr := d.Driven(); dr != "" {
				note += ", " + dr
			}
			parts = append(parts, fmt.Sprintf("%s %s (%s)", d.ID, d.Name, note))
		} else {
			parts = append(parts, fmt.Sprintf("cpu %s (%d cores, %s RAM)", d.Name, d.Cores, rbee.Bytes(d.TotalBytes)))
		}
	}
	return fmt.Sprintf("%d device(s): %s", len(ds), strings.Join(parts, "; "))
}

// explainRows lays the candidates out as a table under a header, a row a
// line: device, its name, the verdict.
func explainRows(cs []rbee.Candidate) []string {
	wd, wn := len("DEVICE"), len("NAME")
	for _, c := range cs {
		wd = max(wd, utf8.RuneCountInString(c.Hive+"/"+c.Device))
		wn = max(wn, utf8.RuneCountInString(c.Name))
	}
	out := []string{fmt.Sprintf("  %-*s  %-*s  %s", wd, "DEVICE", wn, "NAME", "VERDICT")}
	for _, c := range cs {
		out = append(out, fmt.Sprintf("  %-*s  %-*s  %s", wd, c.Hive+"/"+c.Device, wn, c.Name, c.Verdict))
	}
	return out
}

// candidatesLine sums a fleet job's candidates up in one line: how many
// answered, with what devices, and how many were left out (each of those
// has its warning). At a hundred hosts, a line per hive buried the job's.
func candidatesLine(names []string, snaps map[string]Snapshot, errs map[string]error) rbee.Event {
	cpus, gpus := 0, 0
	for _, s := range snaps {
		for _, d := range s.Devices {
			if d.Kind == rbee.DeviceGPU {
				gpus++
			} else {
				cpus++
			}
		}
	}
	msg := fmt.Sprintf("candidates: %d hives, %d answered (%d GPU(s), %d CPU(s))", len(names), len(snaps), gpus, cpus)
	if len(errs) > 0 {
		msg += fmt.Sprintf(", %d unreachable and left out", len(errs))
	}
	return rbee.Narrate(me, "candidates", msg)
}

// Quiet drops every event (a fleet's per-hive connects, background work).
type Quiet struct{}

// Send drops ev.
func (Quiet) Send(rbee.Event) {}

// Narrate drops the line.
func (Quiet) Narrate(string, string) {}
