package split

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/queen/fleet"
	"github.com/rbee-dev/rbee/queenapi"
	"github.com/rbee-dev/rbee/scheduler"
)

// Job runs a job over the hives --split names: each must be known
// (checked before anything reaches a hive) and reachable now.
func (sp *Splitter) Job(ctx context.Context, id string, req queenapi.JobRequest, spec *fleet.ModelSpec, ev fleet.Events) error {
	plan, err := sp.planNamed(ctx, req, spec, ev)
	if err != nil {
		return err
	}
	return sp.runSplit(ctx, id, req, spec, plan, ev)
}

// planNamed plans a split over the hives req names, from one snapshot of
// each; --explain hears the plan or why there is none.
func (sp *Splitter) planNamed(ctx context.Context, req queenapi.JobRequest, spec *fleet.ModelSpec, ev fleet.Events) (scheduler.SplitPlan, error) {
	hives := make([]fleet.Hive, 0, len(req.Split))
	for _, n := range req.Split {
		if err := sp.fleet.Resolve(ctx, n); err != nil {
			return scheduler.SplitPlan{}, err
		}
		// many: a hive known to be down is left out at once (and the
		// plan then says it is not reachable).
		hives = append(hives, sp.fleet.Live(n, true))
	}
	snaps, err := sp.fleet.Snapshots(ctx, hives, ev)
	if err != nil {
		return scheduler.SplitPlan{}, err
	}
	if err := sp.fleet.Estimate(ctx, spec, snaps); err != nil {
		return scheduler.SplitPlan{}, err
	}
	plan, err := scheduler.PlanSplit(splitRequest(spec, req.Split), schedHives(spec, snaps))
	sp.explainSplit(req, plan, err, ev)
	return plan, err
}

// Auto proposes a split when no single device has room (cause): the
// fewest hives, roomiest first, that hold the model together.
func (sp *Splitter) Auto(ctx context.Context, id string, req queenapi.JobRequest, spec *fleet.ModelSpec, snaps map[string]fleet.Snapshot, cause error, ev fleet.Events) error {
	if len(snaps) < 2 || spec.Need == 0 {
		return cause
	}
	plan, err := scheduler.PlanSplit(splitRequest(spec, nil), schedHives(spec, snaps))
	sp.explainSplit(req, plan, err, ev)
	if err != nil {
		return &rbee.Error{Code: rbee.CodeNoRoom, Message: fmt.Sprintf("%v; %v", cause, err), Err: err,
			Hint: "pick a smaller quantization, or free memory on the hives"}
	}
	ev.Narrate("split_proposed", fmt.Sprintf("no single device has room for %s (needs %s): spreading it over %d hives", fleet.ShownName(spec.Raw), rbee.Bytes(spec.Need), len(plan.Parts)))
	return sp.runSplit(ctx, id, req, spec, plan, ev)
}

func (sp *Splitter) explainSplit(req queenapi.JobRequest, plan scheduler.SplitPlan, err error, ev fleet.Events) {
	if !req.Explain {
		return
	}
	var lines []string
	if err != nil {
		lines = append(lines, "split: "+err.Error())
	}
	if len(plan.Parts) > 0 {
		lines = append(lines, strings.Split(plan.Explain(), "\n")...)
	}
	for _, l := range lines { // one event a line: narration is one line
		ev.Send(rbee.Event{Type: rbee.EventNarration, Actor: me, Action: "explain", Message: strings.TrimSpace(l)})
	}
}

func splitRequest(spec *fleet.ModelSpec, hives []string) scheduler.SplitRequest {
	return scheduler.SplitRequest{Need: spec.Need, Weights: spec.Weights, Layers: spec.Layers, Hives: hives}
}

func schedHives(spec *fleet.ModelSpec, snaps map[string]fleet.Snapshot) []scheduler.Hive {
	out := make([]scheduler.Hive, 0, len(snaps))
	for n, s := range snaps {
		id, has := fleet.ModelID(spec, s)
		out = append(out, scheduler.Hive{Name: n, Devices: s.Devices, Workers: s.Workers, HasModel: has, ModelID: id})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Serve is the front door's split: a model no single device of the fleet
// holds (cause is the planner's no-room error) served by one worker whose
// layers spread over several hives, as Auto does for a job — a warm split
// of the same model and hives first, else one set up now. Only devices
// named device (when one is) take part. The worker is kept loaded for
// deployment when one is given; the split ends when the worker does.
func (sp *Splitter) Serve(ctx context.Context, spec *fleet.ModelSpec, snaps map[string]fleet.Snapshot, device, deployment string, cause error) (fleet.SplitWorker, error) {
	if len(snaps) < 2 || spec.Need == 0 {
		return fleet.SplitWorker{}, cause
	}
	hives := schedHives(spec, snaps)
	if device != "" {
		for i := range hives {
			hives[i].Devices = slices.DeleteFunc(slices.Clone(hives[i].Devices), func(d rbee.Device) bool { return d.ID != device })
		}
	}
	plan, err := scheduler.PlanSplit(splitRequest(spec, nil), hives)
	if err != nil {
		return fleet.SplitWorker{}, &rbee.Error{Code: rbee.CodeNoRoom, Message: fmt.Sprintf("%v; %v", cause, err), Err: err,
			Hint: "pick a smaller quantization, or free memory on the hives"}
	}
	names := plan.Hives()
	key := splitKey(spec, names)
	if s := sp.warm(key); s != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		return fleet.SplitWorker{Hive: s.main, Worker: s.worker, Device: s.device, ModelID: s.model, Slots: 1, Hives: names}, nil
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	id := "door-split-" + hex.EncodeToString(b[:])
	sp.log.Info("door split", "model", fleet.ShownName(spec.Raw), "plan", strings.ReplaceAll(plan.Explain(), "\n", ";"))
	s, model, reservation, err := sp.setUpSplit(ctx, id, spec, plan, key, fleet.Quiet{})
	if err != nil {
		return fleet.SplitWorker{}, err
	}
	s.mu.Lock()
	s.model = model.ID
	s.mu.Unlock()
	info, err := s.mainHC.Client().StartWorker(ctx, hiveapi.StartWorkerRequest{Model: model.ID, Device: s.device, Reservation: reservation,
		Deployment: deployment, RPC: s.endpoints, TensorSplit: plan.Shares()})
	if err != nil {
		s.end()
		if hive, why, ok := s.lostNow(); ok {
			return fleet.SplitWorker{}, rbee.Errorf(rbee.CodeWorkerCrashed, "the split lost hive %s while the worker started: %v", hive, why)
		}
		return fleet.SplitWorker{}, fleet.HiveError(err)
	}
	s.setWorker(info.ID)
	return fleet.SplitWorker{Hive: s.main, Worker: info.ID, Device: info.Device, ModelID: model.ID, Slots: max(info.Slots, 1), Hives: names}, nil
}
