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
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/queen/internal/reply"
	"github.com/rbee-dev/rbee/queenapi"
)

// deployer keeps the deployments: each model stays loaded with at least
// its min replicas, one per device, on the hives it is pinned to. Workers
// that already run are adopted (a warm worker of the model, or one a
// queen before this one started for the deployment: the hive remembers),
// dead ones are replaced, those above the max handed back to the
// keep-alive. Between min and max it follows the queue (scale.go).
type deployer struct {
	rt *router

	mu       sync.Mutex
	starting map[string]bool   // a replica being placed, by deployment
	errs     map[string]string // the last placement failure, by deployment
	kept     map[string]keptDeployment
	last     map[string]queenapi.ScaleEvent // the last replica added or removed, by deployment
	retryAt  map[string]time.Time           // no replica for the queue before this: none fitted
}

// keptDeployment is a deployment as the last keep found it, with its
// model's group.
type keptDeployment struct {
	dep catalog.Deployment
	g   *group
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
		d.mu.Lock()
		d.kept[dep.Name] = keptDeployment{dep: dep, g: g}
		d.mu.Unlock()
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
	d.mu.Lock()
	for name := range d.kept {
		if !names[name] {
			delete(d.kept, name)
			delete(d.last, name)
			delete(d.retryAt, name)
		}
	}
	d.mu.Unlock()
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
	exclude := rt.inUse(g)
	rt.mu.Unlock()
	sort.Slice(mine, func(i, j int) bool { return mine[i].inflight < mine[j].inflight })
	// Too many (the max was lowered): the least busy go back to the
	// keep-alive.
	for len(mine) > dep.Max {
		r := mine[0]
		mine = mine[1:]
		if d.mark(ctx, r, "") {
			d.event(dep, r, "removed", reasonMax, fmt.Sprintf("above max %d", dep.Max))
		}
	}
	// Too few: warm workers of the model are adopted first.
	for len(mine) < dep.Min && len(free) > 0 {
		r := free[0]
		free = free[1:]
		if d.mark(ctx, r, dep.Name) {
			mine = append(mine, r)
		}
	}
	if len(mine) >= dep.Min {
		d.setErr(dep.Name, nil)
		return
	}
	d.startReplica(dep, g, exclude, reasonMin, fmt.Sprintf("min %d, %d running", dep.Min, len(mine)))
}

// Reasons of scale events (metrics labels, queenapi.ScaleEvent.Reason).
const (
	reasonMin   = "min"
	reasonQueue = "queue"
	reasonIdle  = "idle"
	reasonMax   = "max"
)

// startReplica places one more replica of dep in the background unless
// one is being placed already. A replica for the queue (reasonQueue)
// needs a free device; when none is, the deployment is as it was and
// the door tries again after scaleRetry. Any other failure is the
// deployment's error.
func (d *deployer) startReplica(dep catalog.Deployment, g *group, exclude map[string]bool, reason, detail string) {
	rt := d.rt
	rt.mu.Lock()
	defer rt.mu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if rt.closed || d.starting[dep.Name] {
		return
	}
	d.starting[dep.Name] = true
	rt.wg.Add(1)
	go func() {
		defer rt.wg.Done()
		defer func() {
			d.mu.Lock()
			delete(d.starting, dep.Name)
			d.mu.Unlock()
		}()
		pctx, cancel := context.WithTimeout(rt.ctx, placeTimeout)
		defer cancel()
		r, err := rt.place(pctx, g, placeOpts{deployment: dep.Name, hives: dep.Hives, device: dep.Device, exclude: exclude, noSplit: reason == reasonQueue})
		if err != nil && reason == reasonQueue {
			rt.door.log.Info("no replica added", "deployment", dep.Name, "wanted_for", detail, "err", err)
			d.mu.Lock()
			d.retryAt[dep.Name] = time.Now().Add(scaleRetry)
			d.mu.Unlock()
			return
		}
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
		r.lastUsed = time.Now()
		if old, ok := g.replicas[r.id()]; ok {
			old.deployment, old.ready, old.slots = r.deployment, r.ready, r.slots
			old.lastUsed = r.lastUsed
		} else {
			g.replicas[r.id()] = r
		}
		g.broadcast()
		rt.mu.Unlock()
		d.event(dep, r, "added", reason, detail)
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
		s := queenapi.Deployment{Name: dep.Name, Model: dep.Model, Min: dep.Min, Max: dep.Max, Hives: dep.Hives, Device: dep.Device,
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
		pending := 0
		if d.starting[dep.Name] {
			pending = 1
		}
		if ev, ok := d.last[dep.Name]; ok {
			s.LastScale = &ev
		}
		d.mu.Unlock()
		s.Replicas = max(dep.Min, min(dep.Max, len(s.Workers)+pending))
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
	if req.Replicas > 0 {
		req.Min, req.Max = req.Replicas, req.Replicas
	}
	dep := catalog.Deployment{Name: req.Name, Model: req.Model, Min: req.Min, Max: req.Max, Hives: req.Hives, Device: req.Device, Embeddings: req.Embeddings}
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
	dr.log.Info("deployment recorded", "deployment", dep.Name, "model", dep.Model, "min", dep.Min, "max", dep.Max)
	dr.router.changed()
	w.WriteHeader(http.StatusNoContent)
}

// checkDeploy refuses a deployment that cannot be kept, naming the field.
func checkDeploy(req queenapi.DeployRequest) error {
	switch {
	case req.Model == "":
		return rbee.Errorf(rbee.CodeBadRequest, "a deployment needs a model")
	case req.Replicas != 0 && (req.Min != 0 || req.Max != 0):
		return rbee.Errorf(rbee.CodeBadRequest, "replicas (a fixed number) or min_replicas and max_replicas, not both")
	case req.Replicas == 0 && (req.Min < 1 || req.Max < req.Min || req.Max > 64):
		return rbee.Errorf(rbee.CodeBadRequest, "replicas: min_replicas 1 to 64 and max_replicas min_replicas to 64, not %d and %d", req.Min, req.Max)
	case req.Replicas != 0 && (req.Replicas < 1 || req.Replicas > 64):
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
