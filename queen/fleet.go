package queen

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/modelfile"
	"github.com/rbee-dev/rbee/scheduler"
)

// fleetConnectTimeout bounds how long one unreachable hive can delay a job
// that did not name a hive.
const fleetConnectTimeout = 3 * time.Second

// pickHive chooses the hive for a job that named none: it asks every hive
// of the inventory and this machine for devices, workers and models (in
// parallel; unreachable hives are skipped and said so), and lets the
// scheduler plan across all of them: a warm worker anywhere wins, else the
// strongest device that fits, a hive that already holds the model first.
// With no inventory hives it is localhost without a round trip.
func (q *Queen) pickHive(ctx context.Context, req JobRequest, send func(rbee.Event) error, narrate func(action, msg string)) (string, error) {
	inv, err := q.loadInventory()
	if err != nil {
		return "", err
	}
	var remoteNames []string
	for _, h := range inv.Hives {
		if !h.Disabled && h.Name != LocalHive {
			remoteNames = append(remoteNames, h.Name)
		}
	}
	if len(remoteNames) == 0 {
		return LocalHive, nil
	}
	need, sha, err := q.modelNeed(ctx, req.Model)
	if err != nil {
		return "", err
	}
	names := append([]string{LocalHive}, remoteNames...)
	var (
		mu    sync.Mutex
		wg    sync.WaitGroup
		hives []scheduler.Hive
	)
	quiet := func(string, string) {}
	for _, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, fleetConnectTimeout)
			defer cancel()
			var hc *hiveConn
			var err error
			if name == LocalHive {
				hc, err = q.localHive(cctx, quiet)
			} else {
				ih, _ := inv.Hive(name)
				hc, err = q.connectRemote(cctx, ih, false, quiet)
			}
			if err != nil {
				q.markOffline(name, err)
				narrate("hive_skipped", fmt.Sprintf("hive %s is unreachable, left out of this job: %v", name, err))
				return
			}
			devs, err := hc.client.Devices(ctx)
			if err != nil {
				return
			}
			ws, _ := hc.client.Workers(ctx)
			ms, _ := hc.client.Models(ctx)
			sh := scheduler.Hive{Name: name, Devices: devs.Devices, Workers: ws}
			for _, m := range ms {
				if (sha != "" && m.SHA256 == sha) || m.Ref == req.Model {
					sh.HasModel, sh.ModelID = true, m.ID
				}
			}
			if name == LocalHive && sha != "" {
				sh.HasModel = true // a local file is already on this machine
			}
			if sh.ModelID == "" && sha != "" {
				sh.ModelID = catalog.ModelID(sha)
			}
			mu.Lock()
			hives = append(hives, sh)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(hives) == 0 {
		return "", rbee.Errorf(rbee.CodeHiveDown, "no hive is reachable")
	}
	sort.Slice(hives, func(i, j int) bool { return hives[i].Name < hives[j].Name })
	plan, err := q.sched.Plan(scheduler.Request{ModelSHA256: sha, Need: need, Device: req.Device, WorkerType: req.WorkerType}, hives)
	if req.Explain {
		_ = send(rbee.Event{Type: rbee.EventNarration, Actor: me, Action: "explain", Message: "fleet " + explainText(plan.Candidates), Candidates: plan.Candidates})
	}
	if err != nil {
		return "", err
	}
	if plan.Warm != nil {
		narrate("hive_picked", fmt.Sprintf("fleet: hive %s, %s", plan.Warm.Hive, plan.WarmReason))
		return plan.Warm.Hive, nil
	}
	best := plan.Options[0]
	narrate("hive_picked", fmt.Sprintf("fleet: hive %s, %s/%s: %s", best.Hive, best.Hive, best.Device.ID, best.Reason))
	return best.Hive, nil
}

// modelNeed estimates a model's memory from its GGUF header: the local
// file's, or the remote file's over HTTP for a reference. sha is known for
// local files (hashed once per path, size and mtime).
func (q *Queen) modelNeed(ctx context.Context, model string) (need uint64, sha string, err error) {
	if ref, rerr := download.ParseRef(model); rerr == nil {
		hub := &download.Hub{}
		weights, kv, ctxTrain, err := hub.Estimate(ctx, ref)
		if err != nil {
			return 0, "", refError(err)
		}
		return modelfile.Info{WeightsBytes: weights, KVBytesPerTok: kv, CtxTrain: ctxTrain}.Estimate(ctxFor(ctxTrain)), "", nil
	}
	info, err := modelfile.Inspect(ctx, model, modelfile.Options{})
	if err != nil {
		return 0, "", rbee.Errorf(rbee.CodeNotGGUF, "model %s: %v", filepath.Base(model), err)
	}
	sha, err = q.localSHA(ctx, model)
	if err != nil {
		return 0, "", rbee.Errorf(rbee.CodeModelNotFound, "model %s: %v", model, err)
	}
	return info.Estimate(ctxFor(info.CtxTrain)), sha, nil
}

// ctxFor is the context a worker gets for a model (see agent.DefaultCtxSize).
func ctxFor(ctxTrain int) int {
	if ctxTrain > 0 && ctxTrain < 4096 {
		return ctxTrain
	}
	return 4096
}
