package door

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/queenapi"
)

// DefaultScaleWait is how long a deployment's requests may wait for a
// slot before the door adds a replica (queen serve --scale-wait): long
// enough that a burst one replica drains in a moment starts nothing, short
// enough that a lasting one gets a device soon.
const DefaultScaleWait = 2 * time.Second

// scaleRetry is how long the door waits before it looks for a free device
// again after a replica for the queue found none.
const scaleRetry = 10 * time.Second

// stopTimeout bounds stopping an idle replica.
const stopTimeout = time.Minute

// scale makes every kept deployment follow its queue: a replica more
// (up to max) when the first request in the queue waited longer than the
// scale wait, and idle replicas above min go once idle for the
// keep-alive. now is the time to judge waits and idleness by (tests pass
// a later one). Placements and stops run in the background.
func (d *deployer) scale(now time.Time) {
	d.mu.Lock()
	kept := make([]keptDeployment, 0, len(d.kept))
	for _, k := range d.kept {
		kept = append(kept, k)
	}
	d.mu.Unlock()
	for _, k := range kept {
		d.scaleOne(k.dep, k.g, now)
	}
}

// scaleOne decides for one deployment.
func (d *deployer) scaleOne(dep catalog.Deployment, g *group, now time.Time) {
	rt := d.rt
	cfg := rt.door.cfg
	rt.mu.Lock()
	var mine []*replica
	ready := 0
	for _, r := range g.replicas {
		if r.deployment == dep.Name {
			mine = append(mine, r)
			if r.ready {
				ready++
			}
		}
	}
	waiting := len(g.queue)
	var waited time.Duration
	if waiting > 0 {
		waited = now.Sub(g.queue[0].since)
	}
	// Idle above min: the longest idle go first, never below min ready
	// replicas, none while requests wait. They leave the group at once
	// (no request can take them) and are stopped in the background.
	var idle []*replica
	if waiting == 0 && cfg.KeepAlive > 0 && ready > dep.Min {
		sort.Slice(mine, func(i, j int) bool { return mine[i].lastUsed.Before(mine[j].lastUsed) })
		for _, r := range mine {
			if ready-len(idle) <= dep.Min {
				break
			}
			if r.ready && r.inflight == 0 && now.Sub(r.lastUsed) >= cfg.KeepAlive {
				idle = append(idle, r)
				delete(g.replicas, r.id())
				rt.retiring[r.id()] = r.hive + "/" + r.device
			}
		}
		if len(idle) > 0 {
			g.broadcast()
		}
	}
	exclude := rt.inUse(g)
	rt.mu.Unlock()
	for _, r := range idle {
		d.retire(dep, r, fmt.Sprintf("idle %s", now.Sub(r.lastUsed).Round(time.Second)))
	}
	if waiting == 0 || waited < cfg.ScaleWait || len(mine) >= dep.Max {
		return
	}
	d.mu.Lock()
	blocked := now.Before(d.retryAt[dep.Name])
	d.mu.Unlock()
	if blocked {
		return
	}
	noun := "requests"
	if waiting == 1 {
		noun = "request"
	}
	d.startReplica(dep, g, exclude, reasonQueue, fmt.Sprintf("%d %s waited %s", waiting, noun, waited.Round(100*time.Millisecond)))
}

// retire stops r, which left its group, in the background; a stop that
// fails leaves it to come back with the next snapshot.
func (d *deployer) retire(dep catalog.Deployment, r *replica, detail string) {
	rt := d.rt
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.closed {
		delete(rt.retiring, r.id())
		return
	}
	rt.wg.Add(1)
	go func() {
		defer rt.wg.Done()
		ctx, cancel := context.WithTimeout(rt.ctx, stopTimeout)
		defer cancel()
		hc, err := rt.door.fleet.Client(ctx, r.hive)
		if err == nil {
			err = hc.StopWorker(ctx, r.worker)
		}
		if err != nil {
			rt.door.log.Warn("stop idle replica", "deployment", dep.Name, "replica", r.id(), "err", err)
			rt.mu.Lock()
			delete(rt.retiring, r.id())
			rt.mu.Unlock()
			return
		}
		d.event(dep, r, "removed", reasonIdle, detail)
	}()
}

// event records, logs and counts a replica added to or removed from dep.
func (d *deployer) event(dep catalog.Deployment, r *replica, action, reason, detail string) {
	ev := queenapi.ScaleEvent{At: time.Now(), Action: action, Hive: r.hive, Worker: r.worker, Device: r.device, Reason: reason, Detail: detail}
	d.mu.Lock()
	d.last[dep.Name] = ev
	d.mu.Unlock()
	d.rt.door.log.Info("replica "+action, "deployment", dep.Name, "hive", r.hive, "worker", r.worker, "device", r.device, "reason", reason, "detail", detail)
	m := d.rt.door.metrics
	if action == "added" {
		m.added.WithLabelValues(dep.Name, reason).Inc()
	} else {
		m.removed.WithLabelValues(dep.Name, reason).Inc()
	}
}
