package door

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/queenapi"
)

// scaleDoor serves a door over f keeping the deployment chat of alpha
// with lo to hi replicas, and waits until it holds ready of them. Its
// scale wait and keep-alive are an hour: a test says when they are over
// by calling deploy.scale with a later time (the door's own looks, with
// the time now, never get there).
func scaleDoor(t *testing.T, f *fakeFleet, lo, hi, ready int) (*Door, string) {
	t.Helper()
	st := &fakeStore{deps: []catalog.Deployment{{Name: "chat", Model: "alpha", Min: lo, Max: hi}}}
	dr := New(Config{RequestLog: t.TempDir() + "/requests.log", ScaleWait: time.Hour, KeepAlive: time.Hour}, f, st)
	t.Cleanup(dr.Close)
	mux := http.NewServeMux()
	dr.Routes(mux)
	dr.AdminRoutes(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	dr.router.changed()
	waitUntil(t, func() bool { d := chatDeployment(t, dr); return d.Ready == ready && len(d.Workers) == ready })
	return dr, srv.URL
}

func chatDeployment(t *testing.T, dr *Door) queenapi.Deployment {
	t.Helper()
	ds, err := dr.deploy.status(context.Background())
	if err != nil || len(ds) != 1 {
		t.Fatalf("deployments %+v %v, want chat", ds, err)
	}
	return ds[0]
}

// openStream starts an endless chat stream through the door and returns
// the replica serving it once the door answered (after the queue); the
// caller closes the body, or ends ctx.
func openStream(ctx context.Context, url string) (string, io.Closer, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", url+"/v1/chat/completions",
		strings.NewReader(`{"model":"chat","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		return "", nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", nil, err
	}
	return resp.Header.Get("Rbee-Replica"), resp.Body, nil
}

type opened struct {
	replica string
	body    io.Closer
	err     error
}

// openLater opens a stream in the background: it waits in the queue.
func openLater(ctx context.Context, url string) <-chan opened {
	out := make(chan opened, 1)
	go func() {
		r, b, err := openStream(ctx, url)
		out <- opened{r, b, err}
	}()
	return out
}

func waitingFor(dr *Door) int {
	models, _, _ := dr.Top()
	n := 0
	for _, m := range models {
		n += m.Waiting
	}
	return n
}

func (f *fakeFleet) counts() (places, started int, stopped []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.places, f.started, slices.Clone(f.stopped)
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// A request that waits longer than the scale wait, with a device free
// (h2's CPU: h1's holds the replica), gets a replica placed there, which
// serves it; the event says why. At max, waiting adds nothing.
func TestScaleAddsReplicaForTheQueue(t *testing.T) {
	t.Parallel()
	f := newFakeFleet(t, map[string][]string{"h1": {"w1"}})
	dr, url := scaleDoor(t, f, 1, 2, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	replica, body, err := openStream(ctx, url)
	if err != nil || replica != "h1/w1" {
		t.Fatalf("first stream: %q %v, want h1/w1", replica, err)
	}
	defer body.Close()
	second := openLater(ctx, url)
	waitUntil(t, func() bool { return waitingFor(dr) == 1 })
	dr.deploy.scale(time.Now()) // within the scale wait: nothing
	if places, _, _ := f.counts(); places != 0 {
		t.Fatalf("%d placements within the scale wait, want none", places)
	}
	dr.deploy.scale(time.Now().Add(2 * time.Hour))
	var got opened
	select {
	case got = <-second:
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting request got no replica")
	}
	if got.err != nil || got.replica != "h2/w-new1" {
		t.Fatalf("the waiting request: %q %v, want the added h2/w-new1", got.replica, got.err)
	}
	defer got.body.Close()
	d := chatDeployment(t, dr)
	if ev := d.LastScale; len(d.Workers) != 2 || ev == nil || ev.Action != "added" || ev.Hive != "h2" || ev.Reason != "queue" ||
		!strings.HasPrefix(ev.Detail, "1 request waited 2h") {
		t.Fatalf("deployment %+v last scale %+v, want 2 replicas, added on h2 for the queue", d, d.LastScale)
	}
	m := scrape(t, url)
	for _, want := range []string{`rbee_door_replicas_added_total{model="chat",reason="queue"} 1`, `rbee_deployment_replicas_wanted{deployment="chat"} 2`,
		`rbee_deployment_replicas{deployment="chat"} 2`, `rbee_deployment_replicas_min{deployment="chat"} 1`, `rbee_deployment_replicas_max{deployment="chat"} 2`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// At max: a third request waits, no replica is added.
	third := openLater(ctx, url)
	waitUntil(t, func() bool { return waitingFor(dr) == 1 })
	dr.deploy.scale(time.Now().Add(2 * time.Hour))
	dr.deploy.mu.Lock()
	starting := dr.deploy.starting["chat"]
	dr.deploy.mu.Unlock()
	if places, started, _ := f.counts(); starting || places != 1 || started != 1 {
		t.Errorf("at max: placing %v, %d placements, %d started; want none more than the one", starting, places, started)
	}
	body.Close() // h1/w1 frees: the third is served there
	select {
	case got = <-third:
	case <-time.After(10 * time.Second):
		t.Fatal("the third request was not served")
	}
	if got.err != nil || got.replica != "h1/w1" {
		t.Fatalf("the third request: %q %v, want h1/w1", got.replica, got.err)
	}
	got.body.Close()
}

// With every allowed device holding a replica, a request that waited
// long adds none: the placement finds no room, the request keeps its
// place in the queue and the deployment reports no error.
func TestScaleNoFreeDevice(t *testing.T) {
	t.Parallel()
	f := newFakeFleet(t, map[string][]string{"h1": {"w1"}, "h2": {"w2"}})
	dr, url := scaleDoor(t, f, 2, 3, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range 2 {
		_, body, err := openStream(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer body.Close()
	}
	waiter := openLater(ctx, url)
	waitUntil(t, func() bool { return waitingFor(dr) == 1 })
	dr.deploy.scale(time.Now().Add(2 * time.Hour))
	waitUntil(t, func() bool {
		dr.deploy.mu.Lock()
		defer dr.deploy.mu.Unlock()
		return !dr.deploy.starting["chat"]
	})
	places, started, _ := f.counts()
	if places != 1 || started != 0 {
		t.Errorf("%d placements, %d workers started; want one look and no worker", places, started)
	}
	if d := chatDeployment(t, dr); len(d.Workers) != 2 || d.Error != "" || d.LastScale != nil || waitingFor(dr) != 1 {
		t.Errorf("deployment %+v, waiting %d; want 2 replicas, no error, no event, the request still waiting", d, waitingFor(dr))
	}
	select {
	case got := <-waiter:
		t.Fatalf("the waiting request ended: %+v", got)
	default:
	}
}

// Replicas above min that served nothing for the keep-alive are stopped,
// the longest idle first, never below min; rbee ps says why.
func TestScaleRemovesIdleAboveMin(t *testing.T) {
	t.Parallel()
	f := newFakeFleet(t, map[string][]string{"h1": {"w1"}, "h2": {"w2"}})
	for _, h := range f.hives {
		h.snap.Workers[0].Deployment = "chat" // both kept for chat, as after a scale-up
	}
	dr, url := scaleDoor(t, f, 1, 2, 2)
	dr.deploy.scale(time.Now()) // not idle for the keep-alive yet
	if _, _, stopped := f.counts(); len(stopped) != 0 {
		t.Fatalf("stopped %v before the keep-alive", stopped)
	}
	// h1/w1 serves a request: h2/w2 is the longer idle.
	resp, err := http.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"chat","messages":[{"role":"user","content":"hi"}]}`))
	if err != nil || resp.Header.Get("Rbee-Replica") != "h1/w1" {
		t.Fatalf("request: %v %v, want served by h1/w1", resp, err)
	}
	resp.Body.Close()
	for range 2 { // the second look finds min replicas: none more goes
		dr.deploy.scale(time.Now().Add(2 * time.Hour))
	}
	waitUntil(t, func() bool { _, _, stopped := f.counts(); return len(stopped) == 1 })
	if _, _, stopped := f.counts(); stopped[0] != "h2/w2" {
		t.Errorf("stopped %v, want h2/w2", stopped)
	}
	waitUntil(t, func() bool { return chatDeployment(t, dr).LastScale != nil })
	d := chatDeployment(t, dr)
	if ev := d.LastScale; len(d.Workers) != 1 || d.Workers[0].Worker != "w1" || ev.Action != "removed" || ev.Reason != "idle" ||
		ev.String() != "removed h2/cpu: idle 2h0m0s" {
		t.Errorf("deployment %+v last scale %v, want w1 left and h2/w2 removed as idle", d, ev)
	}
	if m := scrape(t, url); !strings.Contains(m, `rbee_door_replicas_removed_total{model="chat",reason="idle"} 1`) {
		t.Errorf("metrics lack the removal:\n%s", m)
	}
	resp, err = http.Get(url + "/v1/ps")
	if err != nil {
		t.Fatal(err)
	}
	var ps queenapi.Processes
	err = json.NewDecoder(resp.Body).Decode(&ps)
	resp.Body.Close()
	if err != nil || len(ps.Deployments) != 1 || ps.Deployments[0].LastScale == nil || ps.Deployments[0].LastScale.Reason != "idle" {
		t.Errorf("ps: %+v %v, want the deployment with its last scale event", ps.Deployments, err)
	}
	// The stopped worker does not come back with a refresh (it is gone).
	dr.router.changed()
	if _, _, stopped := f.counts(); len(stopped) != 1 {
		t.Errorf("stopped %v, want only h2/w2: never below min", stopped)
	}
}

// A deployment is a fixed number of replicas or a min and a max, not
// both; min may not exceed max.
func TestDeployMinMax(t *testing.T) {
	t.Parallel()
	f := newFakeFleet(t, map[string][]string{"h1": {"w1"}})
	st := &fakeStore{}
	dr := New(Config{RequestLog: t.TempDir() + "/requests.log"}, f, st)
	t.Cleanup(dr.Close)
	mux := http.NewServeMux()
	dr.AdminRoutes(mux)
	for _, tt := range []struct {
		name, body string
		code       int
		min, max   int
	}{
		{"fixed", `{"model":"alpha","replicas":2}`, http.StatusNoContent, 2, 2},
		{"range", `{"model":"alpha","min_replicas":1,"max_replicas":3}`, http.StatusNoContent, 1, 3},
		{"both", `{"model":"alpha","replicas":2,"max_replicas":3}`, http.StatusBadRequest, 0, 0},
		{"min above max", `{"model":"alpha","min_replicas":3,"max_replicas":2}`, http.StatusBadRequest, 0, 0},
		{"none", `{"model":"alpha"}`, http.StatusBadRequest, 0, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, httptest.NewRequest("PUT", "/v1/deployments/"+strings.ReplaceAll(tt.name, " ", "-"), strings.NewReader(tt.body)))
			if rec.Code != tt.code {
				t.Fatalf("status %d %s, want %d", rec.Code, rec.Body, tt.code)
			}
			if tt.code != http.StatusNoContent {
				return
			}
			st.mu.Lock()
			last := st.deps[len(st.deps)-1]
			st.mu.Unlock()
			if last.Min != tt.min || last.Max != tt.max {
				t.Errorf("recorded min %d max %d, want %d and %d", last.Min, last.Max, tt.min, tt.max)
			}
		})
	}
}
