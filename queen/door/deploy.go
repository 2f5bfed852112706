package door

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/queen/internal/reply"
	"github.com/rbee-dev/rbee/queenapi"
)

// deployer keeps the deployments: each model stays loaded with its number
// of replicas, one per device, on the hives it is pinned to. Workers that
// already run are adopted (a warm worker of the model, or one a queen
// before this one started for the deployment: the hive remembers), dead
// ones are replaced, extra ones handed back to the keep-alive.
type deployer struct {
	rt *router

	mu       sync.Mutex
	starting map[string]bool   // a replica being placed, by deployment
	errs     map[string]string // the last placement failure, by deployment
}

// groupOf resolves a deployment's model with the snapshots at hand.
func (d *deployer) groupOf(ctx context.Context, dep catalog.Deployment) (*group, error) {
	snaps, _, err := d.rt.lookSnaps(ctx)
	if err != nil {
		return nil, err
	}
	spec, _, err := d.rt.door.modelByName(ctx, dep.Model, snaps, true) // the owner's deployment may download
	if err != nil {
		return nil, err
	}
	return d.rt.group(spec, dep.Embeddings), nil
}

// keep brings every deployment to its number of replicas: one placement
// at a time per deployment, in the background.
func (d *deployer) keep(ctx context.Context, deps []catalog.Deployment) {
	names := map[string]bool{}
	kept := map[*group]bool{}
	for _, dep := range deps {
		names[dep.Name] = true
		g, err := d.groupOf(ctx, dep)
		if err != nil {
			d.setErr(dep.Name, err)
			continue
		}
		kept[g] = true
		d.rt.mu.Lock()
		g.deployed = true
		d.rt.mu.Unlock()
		d.keepOne(ctx, dep, g)
	}
	d.rt.mu.Lock()
	for _, g := range d.rt.groups {
		g.deployed = kept[g]
	}
	d.rt.mu.Unlock()
	d.unmarkOrphans(ctx, names)
}

// keepOne adopts, replaces or hands back replicas of one deployment.
func (d *deployer) keepOne(ctx context.Context, dep catalog.Deployment, g *group) {
	rt := d.rt
	allowed := func(r *replica) bool {
		return (len(dep.Hives) == 0 || slices.Contains(dep.Hives, r.hive)) && (dep.Device == "" || r.device == dep.Device)
	}
	rt.mu.Lock()
	var mine, free []*replica
	for _, r := range g.replicas {
		switch {
		case r.deployment == dep.Name && allowed(r):
			mine = append(mine, r)
		case r.deployment == "" && r.ready && allowed(r):
			free = append(free, r)
		}
	}
	exclude := g.inUse()
	rt.mu.Unlock()
	sort.Slice(mine, func(i, j int) bool { return mine[i].inflight < mine[j].inflight })
	// Too many: the least busy go back to the keep-alive.
	for len(mine) > dep.Replicas {
		r := mine[0]
		mine = mine[1:]
		d.mark(ctx, r, "")
	}
	// Too few: warm workers of the model are adopted first.
	for len(mine) < dep.Replicas && len(free) > 0 {
		r := free[0]
		free = free[1:]
		if d.mark(ctx, r, dep.Name) {
			mine = append(mine, r)
		}
	}
	if len(mine) >= dep.Replicas {
		d.setErr(dep.Name, nil)
		return
	}
	d.mu.Lock()
	if d.starting[dep.Name] {
		d.mu.Unlock()
		return
	}
	d.starting[dep.Name] = true
	d.mu.Unlock()
	rt.mu.Lock()
	if rt.closed {
		rt.mu.Unlock()
		return
	}
	rt.wg.Add(1)
	rt.mu.Unlock()
	go func() {
		defer rt.wg.Done()
		defer func() {
			d.mu.Lock()
			delete(d.starting, dep.Name)
			d.mu.Unlock()
		}()
		pctx, cancel := context.WithTimeout(rt.ctx, placeTimeout)
		defer cancel()
		r, err := rt.place(pctx, g, placeOpts{deployment: dep.Name, hives: dep.Hives, device: dep.Device, exclude: exclude})
		if err != nil {
			rt.door.log.Warn("deployment replica", "deployment", dep.Name, "err", err)
			d.setErr(dep.Name, err)
			rt.mu.Lock()
			g.deployErr = fmt.Errorf("deployment %s has no ready replica: %w", dep.Name, err)
			g.broadcast()
			rt.mu.Unlock()
			return
		}
		d.setErr(dep.Name, nil)
		rt.mu.Lock()
		g.deployErr = nil
		if old, ok := g.replicas[r.id()]; ok {
			old.deployment, old.ready, old.slots = r.deployment, r.ready, r.slots
		} else {
			g.replicas[r.id()] = r
		}
		g.broadcast()
		rt.mu.Unlock()
		select {
		case rt.kick <- struct{}{}: // more may be missing
		default:
		}
	}()
}

// mark tells r's hive that r is kept for deployment name ("" = no more).
func (d *deployer) mark(ctx context.Context, r *replica, name string) bool {
	hc, err := d.rt.door.fleet.Client(ctx, r.hive)
	if err == nil {
		err = hc.SetDeployment(ctx, r.worker, name)
	}
	if err != nil {
		d.rt.door.log.Warn("deployment mark", "worker", r.id(), "deployment", name, "err", err)
		return false
	}
	d.rt.mu.Lock()
	r.deployment = name
	d.rt.mu.Unlock()
	return true
}

// unmarkOrphans hands back to the keep-alive the workers kept for a
// deployment that no longer exists (removed while they ran).
func (d *deployer) unmarkOrphans(ctx context.Context, names map[string]bool) {
	var orphans []*replica
	d.rt.mu.Lock()
	for _, g := range d.rt.groups {
		for _, r := range g.replicas {
			if r.deployment != "" && !names[r.deployment] {
				orphans = append(orphans, r)
			}
		}
	}
	d.rt.mu.Unlock()
	for _, r := range orphans {
		d.mark(ctx, r, "")
	}
}

func (d *deployer) setErr(name string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err == nil {
		delete(d.errs, name)
		return
	}
	d.errs[name] = err.Error()
}

// status describes every deployment with its replicas now.
func (d *deployer) status(ctx context.Context) ([]queenapi.Deployment, error) {
	deps, err := d.rt.door.db.Deployments(ctx)
	if err != nil {
		return nil, err
	}
	out := []queenapi.Deployment{}
	for _, dep := range deps {
		s := queenapi.Deployment{Name: dep.Name, Model: dep.Model, Replicas: dep.Replicas, Hives: dep.Hives, Device: dep.Device,
			Embeddings: dep.Embeddings, Created: dep.Created, Workers: []queenapi.Replica{}}
		d.rt.mu.Lock()
		for _, g := range d.rt.groups {
			for _, r := range g.replicas {
				if r.deployment == dep.Name {
					s.Workers = append(s.Workers, queenapi.Replica{Hive: r.hive, Worker: r.worker, Device: r.device, Ready: r.ready, Slots: r.slots, InFlight: r.inflight})
					if r.ready {
						s.Ready++
					}
				}
			}
		}
		d.rt.mu.Unlock()
		sort.Slice(s.Workers, func(i, j int) bool {
			return s.Workers[i].Hive+s.Workers[i].Worker < s.Workers[j].Hive+s.Workers[j].Worker
		})
		d.mu.Lock()
		s.Error = d.errs[dep.Name]
		d.mu.Unlock()
		out = append(out, s)
	}
	return out, nil
}

// listDeployments serves GET /v1/deployments.
func (dr *Door) listDeployments(w http.ResponseWriter, r *http.Request) {
	ds, err := dr.deploy.status(r.Context())
	if err != nil {
		reply.Error(w, http.StatusInternalServerError, err)
		return
	}
	reply.JSON(w, http.StatusOK, queenapi.Deployments{Deployments: ds})
}

// putDeployment serves PUT /v1/deployments/{name}: the model must be
// found (on a hive, or a reference to download) and the hives known
// before anything is recorded; the replicas start in the background.
func (dr *Door) putDeployment(w http.ResponseWriter, r *http.Request) {
	var req queenapi.DeployRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		reply.Error(w, http.StatusBadRequest, rbee.Errorf(rbee.CodeBadRequest, "request body: %v", err))
		return
	}
	req.Name = r.PathValue("name")
	ctx := r.Context()
	if err := checkDeploy(req); err != nil {
		reply.Error(w, http.StatusBadRequest, err)
		return
	}
	for _, h := range req.Hives {
		if err := dr.fleet.Resolve(ctx, h); err != nil {
			reply.Error(w, http.StatusNotFound, err)
			return
		}
	}
	dep := catalog.Deployment{Name: req.Name, Model: req.Model, Replicas: req.Replicas, Hives: req.Hives, Device: req.Device, Embeddings: req.Embeddings}
	if _, err := dr.deploy.groupOf(ctx, dep); err != nil {
		status := http.StatusBadGateway
		if rbee.CodeOf(err) == rbee.CodeModelNotFound || rbee.CodeOf(err) == rbee.CodeBadRequest {
			status = http.StatusNotFound
		}
		reply.Error(w, status, err)
		return
	}
	if err := dr.db.PutDeployment(ctx, dep); err != nil {
		reply.Error(w, http.StatusInternalServerError, err)
		return
	}
	dr.log.Info("deployment recorded", "deployment", dep.Name, "model", dep.Model, "replicas", dep.Replicas)
	dr.router.changed()
	w.WriteHeader(http.StatusNoContent)
}

// checkDeploy refuses a deployment that cannot be kept, naming the field.
func checkDeploy(req queenapi.DeployRequest) error {
	switch {
	case req.Model == "":
		return rbee.Errorf(rbee.CodeBadRequest, "a deployment needs a model")
	case req.Replicas < 1 || req.Replicas > 64:
		return rbee.Errorf(rbee.CodeBadRequest, "replicas must be 1 to 64, not %d", req.Replicas)
	case req.Name == "" || len(req.Name) > 128 || strings.ContainsAny(req.Name, "/ ,") ||
		strings.ContainsFunc(req.Name, unicode.IsControl) || !utf8.ValidString(req.Name):
		return rbee.Errorf(rbee.CodeBadRequest, "deployment name %q: 1 to 128 characters, no spaces, commas, slashes or control characters", req.Name)
	case req.Device != "" && req.Device != "cpu" && !strings.HasPrefix(req.Device, "gpu"):
		return rbee.Errorf(rbee.CodeBadRequest, "device %q: cpu or gpuN", req.Device)
	}
	return nil
}

// removeDeployment serves DELETE /v1/deployments/{name}: the record goes,
// its workers are handed back to the keep-alive (requests in flight end
// normally).
func (dr *Door) removeDeployment(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ctx := r.Context()
	defer dr.router.changed()
	if err := dr.db.RemoveDeployment(ctx, name); err != nil {
		if errors.Is(err, catalog.ErrNotFound) {
			reply.Error(w, http.StatusNotFound, rbee.Errorf(rbee.CodeModelNotFound, "no deployment %q (rbee model deployments lists them)", name))
			return
		}
		reply.Error(w, http.StatusInternalServerError, err)
		return
	}
	deps, err := dr.db.Deployments(ctx)
	if err != nil {
		reply.Error(w, http.StatusInternalServerError, err)
		return
	}
	names := map[string]bool{}
	for _, d := range deps {
		names[d.Name] = true
	}
	dr.deploy.unmarkOrphans(ctx, names)
	w.WriteHeader(http.StatusNoContent)
}
