package door

import (
	"net/http"
	"path/filepath"
	"sort"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/queen/fleet"
	"github.com/rbee-dev/rbee/queen/internal/reply"
	"github.com/rbee-dev/rbee/queenapi"
)

// ps lists every worker of every reachable hive, asked now (one bounded
// snapshot each, in parallel): rbee ps.
func (dr *Door) ps(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	hives, err := dr.fleet.Candidates(ctx, "", fleet.Quiet{})
	if err != nil {
		reply.Error(w, http.StatusBadGateway, err)
		return
	}
	var rec recorderEvents
	snaps, err := dr.fleet.Snapshots(ctx, hives, &rec)
	out := queenapi.Processes{Processes: []queenapi.Process{}, Skipped: rec.skipped}
	if err != nil {
		reply.JSON(w, http.StatusOK, out) // no hive answers: none runs anything we can see
		return
	}
	for name, s := range snaps {
		names := map[string]string{}
		for _, m := range s.Models {
			if ns := modelNames(m); len(ns) > 0 {
				names[m.ID] = ns[0]
			}
		}
		for _, wi := range s.Workers {
			p := queenapi.Process{Hive: name, Worker: wi.ID, Type: wi.Type, ModelID: wi.ModelID, Model: names[wi.ModelID], Device: wi.Device,
				PID: wi.PID, State: wi.State, Busy: wi.Busy, Slots: wi.Slots, Served: wi.Served, MemoryBytes: wi.MemoryBytes, Deployment: wi.Deployment, Embeddings: wi.Embeddings,
				Started: wi.Started, LastUsed: wi.LastUsed}
			if p.Model == "" {
				p.Model = filepath.Base(wi.Model)
			}
			if wi.Busy == 0 && !wi.LastUsed.IsZero() && wi.Deployment == "" {
				p.UnloadInS = max(dr.cfg.KeepAlive-time.Since(wi.LastUsed), 0).Seconds()
			}
			out.Processes = append(out.Processes, p)
		}
	}
	if ds, err := dr.deploy.status(ctx); err == nil && len(ds) > 0 {
		out.Deployments = ds
	}
	sort.Slice(out.Processes, func(i, j int) bool {
		a, b := out.Processes[i], out.Processes[j]
		if a.Hive != b.Hive {
			return a.Hive < b.Hive
		}
		return a.Started.Before(b.Started)
	})
	reply.JSON(w, http.StatusOK, out)
}

// recorderEvents keeps what a snapshot pass says about hives it left out.
type recorderEvents struct {
	skipped []string
}

func (r *recorderEvents) Send(ev rbee.Event) {
	if ev.Action == "hive_skipped" {
		r.skipped = append(r.skipped, ev.Message)
	}
}

func (r *recorderEvents) Narrate(string, string) {}
