package split

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/rbee-dev/rbee"
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
