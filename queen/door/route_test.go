package door

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/queen/fleet"
)

// testGroup is a deployed group (no placement) with the given replicas.
func testGroup(rs ...*replica) *group {
	g := &group{spec: &fleet.ModelSpec{Raw: "m"}, replicas: map[string]*replica{}, wake: make(chan struct{}), deployed: true}
	for _, r := range rs {
		g.replicas[r.id()] = r
	}
	return g
}

func testRouter(depth int, wait time.Duration) *router {
	return newRouter(context.Background(), nil, depth, wait)
}

func TestRouterFewestInFlightPerSlot(t *testing.T) {
	big := &replica{hive: "a", worker: "w1", slots: 4, inflight: 2, ready: true}
	small := &replica{hive: "b", worker: "w2", slots: 1, ready: true}
	loading := &replica{hive: "c", worker: "w3", slots: 8} // not ready: gets nothing
	g := testGroup(big, small, loading)
	rt := testRouter(4, time.Second)
	ctx := context.Background()
	var waits atomic.Int32
	count := func(d int) { waits.Add(int32(d)) }
	r, err := rt.acquire(ctx, g, count)
	if err != nil || r != small {
		t.Fatalf("first pick %v %v, want b/w2 (0 of 1 slot busy beats 2 of 4)", r, err)
	}
	for i := range 2 {
		if r, err := rt.acquire(ctx, g, count); err != nil || r != big {
			t.Fatalf("pick %d: %v %v, want a/w1 (b is full, c is loading)", i, r, err)
		}
	}
	if big.inflight != 4 || small.inflight != 1 || loading.inflight != 0 {
		t.Fatalf("in flight a=%d b=%d c=%d", big.inflight, small.inflight, loading.inflight)
	}
	rt.release(g, small, false)
	if r, err := rt.acquire(ctx, g, count); err != nil || r != small {
		t.Fatalf("after a release: %v %v, want the freed b/w2", r, err)
	}
	if waits.Load() != 0 {
		t.Fatalf("waiting %d, want 0: every request found a slot", waits.Load())
	}
}

func TestRouterQueue(t *testing.T) {
	only := &replica{hive: "a", worker: "w1", slots: 1, ready: true}
	g := testGroup(only)
	rt := testRouter(2, time.Minute)
	ctx := context.Background()
	var waiting atomic.Int32
	count := func(d int) { waiting.Add(int32(d)) }
	if _, err := rt.acquire(ctx, g, count); err != nil {
		t.Fatal(err)
	}
	// Two wait (the depth); one of them leaves.
	got := make(chan error, 2)
	leaveCtx, leave := context.WithCancel(ctx)
	go func() { _, err := rt.acquire(ctx, g, count); got <- err }()
	go func() { _, err := rt.acquire(leaveCtx, g, count); got <- err }()
	waitUntil(t, func() bool { return waiting.Load() == 2 })
	if _, err := rt.acquire(ctx, g, count); !errors.Is(err, errQueueFull) {
		t.Fatalf("third waiter: %v, want errQueueFull at once", err)
	}
	leave()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("the client that left: %v", err)
	}
	waitUntil(t, func() bool { return waiting.Load() == 1 })
	rt.release(g, only, false)
	if err := <-got; err != nil {
		t.Fatalf("the waiter after a release: %v", err)
	}
	if waiting.Load() != 0 || only.inflight != 1 {
		t.Fatalf("waiting %d, in flight %d", waiting.Load(), only.inflight)
	}
}

func TestRouterQueueTimeoutAndFailedReplica(t *testing.T) {
	a := &replica{hive: "a", worker: "w1", slots: 1, ready: true}
	b := &replica{hive: "b", worker: "w2", slots: 1, ready: true}
	g := testGroup(a, b)
	rt := testRouter(4, 50*time.Millisecond)
	ctx := context.Background()
	none := func(int) {}
	r1, _ := rt.acquire(ctx, g, none)
	r2, _ := rt.acquire(ctx, g, none)
	if _, err := rt.acquire(ctx, g, none); !errors.Is(err, errQueueTimeout) {
		t.Fatalf("with every slot held: %v, want errQueueTimeout", err)
	}
	// A replica that failed leaves the group: the next request goes to the
	// other one.
	rt.release(g, r1, true)
	rt.release(g, r2, false)
	if len(g.replicas) != 1 {
		t.Fatalf("%d replicas after a failure, want 1", len(g.replicas))
	}
	if r, err := rt.acquire(ctx, g, none); err != nil || r != r2 {
		t.Fatalf("after the failure: %v %v, want %s", r, err, r2.id())
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}

// A deployment that cannot place a replica fails its requests at once
// with the reason, rather than after the queue's wait.
func TestRouterDeploymentFailure(t *testing.T) {
	g := testGroup()
	rt := testRouter(4, time.Minute)
	got := make(chan error, 1)
	go func() { _, err := rt.acquire(context.Background(), g, func(int) {}); got <- err }()
	waitUntil(t, func() bool { // queued: the failure must wake it
		rt.mu.Lock()
		defer rt.mu.Unlock()
		return len(g.queue) == 1
	})
	rt.mu.Lock()
	g.deployErr = errors.New("no device has room")
	g.broadcast()
	rt.mu.Unlock()
	select {
	case err := <-got:
		if err == nil || err.Error() != "no device has room" {
			t.Fatalf("acquire: %v, want the deployment's failure", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter was not woken by the deployment's failure")
	}
}

// The queue is first come, first served: a request that arrives while
// others wait does not take the freed slot before them.
func TestRouterQueueIsFIFO(t *testing.T) {
	only := &replica{hive: "a", worker: "w1", slots: 1, ready: true}
	g := testGroup(only)
	rt := testRouter(8, time.Minute)
	ctx := context.Background()
	var waiting atomic.Int32
	count := func(d int) { waiting.Add(int32(d)) }
	if _, err := rt.acquire(ctx, g, count); err != nil {
		t.Fatal(err)
	}
	order := make(chan int, 3)
	for i := range 3 {
		go func() {
			if _, err := rt.acquire(ctx, g, count); err != nil {
				t.Error(err)
			}
			order <- i
		}()
		waitUntil(t, func() bool { return waiting.Load() == int32(i+1) }) // queued in order
	}
	for want := range 3 {
		rt.release(g, only, false)
		if got := <-order; got != want {
			t.Fatalf("slot %d went to waiter %d, want %d (first come, first served)", want, got, want)
		}
	}
}
