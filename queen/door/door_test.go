package door

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/queen/fleet"
)

// The door is tested here against a fleet in memory: hives whose
// snapshots are set by the test, and one in-process agent (an httptest
// server) answering every hive's OpenAI and worker routes. No process is
// started.

const alphaSHA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

// fakeHive is one hive's snapshot.
type fakeHive struct {
	name  string
	mu    sync.Mutex
	snap  fleet.Snapshot
	looks int
}

func (h *fakeHive) Name() string { return h.name }

func (h *fakeHive) Snapshot(context.Context, fleet.Events) (fleet.Snapshot, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.looks++
	s := h.snap
	s.Workers = slices.Clone(s.Workers)
	return s, nil
}

func (h *fakeHive) Model(context.Context, *fleet.ModelSpec, fleet.Snapshot, fleet.Events) (hiveapi.Model, error) {
	return hiveapi.Model{}, errors.New("not used by the door")
}
func (h *fakeHive) Reserve(context.Context, hiveapi.ReserveRequest) (string, error) { return "", nil }
func (h *fakeHive) Release(context.Context, string) error                           { return nil }
func (h *fakeHive) Infer(context.Context, hiveapi.InferRequest, func(string, []byte) error) error {
	return errors.New("not used by the door")
}

func (h *fakeHive) addWorker(w rbee.WorkerInfo) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.snap.Workers = append(h.snap.Workers, w)
}

// fakeFleet is the door's Fleet in memory.
type fakeFleet struct {
	t      *testing.T
	hives  []*fakeHive
	agents map[string]*httptest.Server // each hive's agent

	mu      sync.Mutex
	parsed  int // references taken to fetch
	places  int
	served  []string // hive/worker of each request the agent answered
	gone    map[string]bool
	started int
	stopped []string // hive/worker of each worker the agents stopped
}

func alphaModel() hiveapi.Model {
	return hiveapi.Model{ID: "sha256:aaaa", Ref: "/models/alpha.gguf", Alias: "alpha", SHA256: alphaSHA, Size: 1 << 20, EstimateBytes: 1 << 20}
}

func worker(id string) rbee.WorkerInfo {
	return rbee.WorkerInfo{ID: id, ModelID: "sha256:aaaa", Device: "cpu", State: "ready", Slots: 1}
}

// newFakeFleet makes hives h1 and h2, both holding alpha, with the
// given ready workers (hive name to worker ids).
func newFakeFleet(t *testing.T, workers map[string][]string) *fakeFleet {
	f := &fakeFleet{t: t, gone: map[string]bool{}, agents: map[string]*httptest.Server{}}
	for _, name := range []string{"h1", "h2"} {
		h := &fakeHive{name: name, snap: fleet.Snapshot{
			Devices: []rbee.Device{{ID: "cpu", Kind: rbee.DeviceCPU, TotalBytes: 8 << 30, FreeBytes: 8 << 30}},
			Models:  []hiveapi.Model{alphaModel()}}}
		for _, id := range workers[name] {
			h.snap.Workers = append(h.snap.Workers, worker(id))
		}
		f.hives = append(f.hives, h)
		mux := http.NewServeMux()
		mux.HandleFunc("POST /v1/openai/{endpoint...}", func(w http.ResponseWriter, r *http.Request) { f.openai(w, r, name) })
		mux.HandleFunc("POST /v1/workers", func(w http.ResponseWriter, r *http.Request) { f.startWorker(w, r, name) })
		mux.HandleFunc("PUT /v1/workers/{id}/deployment", func(w http.ResponseWriter, r *http.Request) { f.setDeployment(w, r, name) })
		mux.HandleFunc("DELETE /v1/workers/{id}", func(w http.ResponseWriter, r *http.Request) { f.stopWorker(w, r, name) })
		srv := httptest.NewServer(mux)
		t.Cleanup(srv.Close)
		f.agents[name] = srv
	}
	return f
}

// openai answers as a worker would, naming the worker in the text; a
// worker marked gone is answered 502 as the hive does.
func (f *fakeFleet) openai(w http.ResponseWriter, r *http.Request, hive string) {
	id := hive + "/" + r.Header.Get(hiveapi.WorkerHeader)
	f.mu.Lock()
	gone := f.gone[id]
	if !gone {
		f.served = append(f.served, id)
	}
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if gone {
		w.WriteHeader(http.StatusBadGateway)
		fmt.Fprintf(w, `{"error":{"code":"worker_failed","message":"worker %s stopped answering"}}`, id)
		return
	}
	if ep := r.PathValue("endpoint"); ep == "tokenize" || ep == "detokenize" {
		fmt.Fprintf(w, `{"endpoint":%q,"worker":%q}`, ep, id)
		return
	}
	var req struct{ Stream bool }
	_ = json.NewDecoder(r.Body).Decode(&req)
	if req.Stream { // an endless stream, an event each few milliseconds, until the caller leaves
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		for {
			fmt.Fprintf(w, "data: {\"id\":\"c1\",\"model\":\"/models/alpha.gguf\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n")
			fl.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	fmt.Fprintf(w, `{"id":"c1","object":"chat.completion","model":"/models/alpha.gguf","choices":[{"index":0,"message":{"role":"assistant","content":"from %s"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2}}`, id)
}

// startWorker starts a worker on the hive: it shows in the next snapshot.
func (f *fakeFleet) startWorker(w http.ResponseWriter, r *http.Request, hive string) {
	var req hiveapi.StartWorkerRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.started++
	wi := worker(fmt.Sprintf("w-new%d", f.started))
	f.mu.Unlock()
	wi.Device, wi.Deployment = req.Device, req.Deployment
	f.hive(hive).addWorker(wi)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(wi)
}

// setDeployment marks a worker kept for a deployment, as the hive does.
func (f *fakeFleet) setDeployment(w http.ResponseWriter, r *http.Request, hive string) {
	var req hiveapi.DeploymentRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	h := f.hive(hive)
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range h.snap.Workers {
		if h.snap.Workers[i].ID == r.PathValue("id") {
			h.snap.Workers[i].Deployment = req.Deployment
			w.WriteHeader(http.StatusNoContent)
			return
		}
	}
	http.Error(w, "no such worker", http.StatusNotFound)
}

// stopWorker stops a worker: it is gone from the next snapshot.
func (f *fakeFleet) stopWorker(w http.ResponseWriter, r *http.Request, hive string) {
	id := r.PathValue("id")
	h := f.hive(hive)
	h.mu.Lock()
	h.snap.Workers = slices.DeleteFunc(h.snap.Workers, func(wi rbee.WorkerInfo) bool { return wi.ID == id })
	h.mu.Unlock()
	f.mu.Lock()
	f.stopped = append(f.stopped, hive+"/"+id)
	f.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeFleet) hive(name string) *fakeHive {
	for _, h := range f.hives {
		if h.name == name {
			return h
		}
	}
	return nil
}

func (f *fakeFleet) Candidates(context.Context, string, fleet.Events) ([]fleet.Hive, error) {
	out := make([]fleet.Hive, 0, len(f.hives))
	for _, h := range f.hives {
		out = append(out, h)
	}
	return out, nil
}

func (f *fakeFleet) Resolve(_ context.Context, name string) error {
	if f.hive(name) == nil {
		return rbee.Errorf(rbee.CodeHiveUnknown, "no hive named %q", name)
	}
	return nil
}

func (f *fakeFleet) Live(name string, _ bool) fleet.Hive { return f.hive(name) }

func (f *fakeFleet) Snapshots(ctx context.Context, hives []fleet.Hive, ev fleet.Events) (map[string]fleet.Snapshot, error) {
	out := map[string]fleet.Snapshot{}
	for _, h := range hives {
		s, err := h.Snapshot(ctx, ev)
		if err != nil {
			return nil, err
		}
		out[h.Name()] = s
	}
	return out, nil
}

// Place puts a new replica on the CPU of the first hive (h1, then h2)
// the job does not exclude; with both excluded no device has room.
func (f *fakeFleet) Place(_ context.Context, job fleet.PlaceJob, _ []fleet.Hive, _ fleet.Events) (fleet.Placement, error) {
	f.mu.Lock()
	f.places++
	f.mu.Unlock()
	if job.Spec.SHA256 != alphaSHA {
		return fleet.Placement{}, rbee.Errorf(rbee.CodeDownload, "fetch %s: tls: handshake failure", job.Spec.Raw)
	}
	for _, h := range f.hives {
		if !job.Exclude[h.name+"/cpu"] {
			return fleet.Placement{Hive: h, Model: alphaModel(), Device: "cpu", Reservation: "res-1"}, nil
		}
	}
	return fleet.Placement{}, rbee.Errorf(rbee.CodeNoRoom, "no device has room for alpha")
}

// ParseModel takes any reference: its fetch fails later, in Place.
func (f *fakeFleet) ParseModel(_ context.Context, raw string) (*fleet.ModelSpec, error) {
	f.mu.Lock()
	f.parsed++
	f.mu.Unlock()
	ref, err := download.ParseRef(raw)
	if err != nil {
		return nil, err
	}
	return &fleet.ModelSpec{Raw: raw, Ref: &ref}, nil
}

// Client reaches the hive's in-process agent.
func (f *fakeFleet) Client(_ context.Context, hive string) (*hiveapi.Client, error) {
	srv, ok := f.agents[hive]
	if !ok {
		return nil, rbee.Errorf(rbee.CodeHiveUnknown, "no hive %s", hive)
	}
	addr := srv.Listener.Addr().String()
	return hiveapi.NewClient(hive, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}), nil
}

func (f *fakeFleet) WorkerCounts() map[string]int { return map[string]int{} }

func (f *fakeFleet) servedBy() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.served)
}

// fakeStore is the catalog's deployments in memory.
type fakeStore struct {
	mu   sync.Mutex
	deps []catalog.Deployment
}

func (s *fakeStore) Deployments(context.Context) ([]catalog.Deployment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.deps), nil
}

func (s *fakeStore) PutDeployment(_ context.Context, d catalog.Deployment) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deps = append(s.deps, d)
	return nil
}

func (s *fakeStore) RemoveDeployment(context.Context, string) error { return nil }
func (s *fakeStore) Hives(context.Context) ([]catalog.Hive, error)  { return nil, nil }

func newTestDoor(t *testing.T, f *fakeFleet) http.Handler {
	return newTestDoorWith(t, f, Config{})
}

func newTestDoorWith(t *testing.T, f *fakeFleet, cfg Config) http.Handler {
	cfg.RequestLog = t.TempDir() + "/requests.log"
	dr := New(cfg, f, &fakeStore{})
	t.Cleanup(dr.Close)
	mux := http.NewServeMux()
	dr.Routes(mux)
	return mux
}

func chat(t *testing.T, h http.Handler, model string) *httptest.ResponseRecorder {
	t.Helper()
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}]}`, model)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body)))
	return rec
}

// A request goes to a ready replica of the model it names (by alias), its
// answer names the model as the client did, and a replica that fails
// before answering is dropped and the request served by another.
func TestDoorRoutesToReplicas(t *testing.T) {
	t.Parallel()
	f := newFakeFleet(t, map[string][]string{"h1": {"w1"}, "h2": {"w2"}})
	h := newTestDoor(t, f)

	rec := chat(t, h, "alpha")
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if got := rec.Header().Get("Rbee-Replica"); got != "h1/w1" {
		t.Errorf("replica %q, want h1/w1 (equal load: the first by id)", got)
	}
	var resp struct {
		Model   string `json:"model"`
		Choices []struct {
			Message struct{ Content string } `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil || resp.Model != "alpha" || resp.Choices[0].Message.Content != "from h1/w1" {
		t.Errorf("answer %s (%v), want model alpha from h1/w1", rec.Body, err)
	}

	f.mu.Lock()
	f.gone["h1/w1"] = true
	f.mu.Unlock()
	rec = chat(t, h, "alpha")
	if rec.Code != http.StatusOK || rec.Header().Get("Rbee-Replica") != "h2/w2" {
		t.Fatalf("with h1/w1 gone: status %d replica %q: %s, want 200 from h2/w2", rec.Code, rec.Header().Get("Rbee-Replica"), rec.Body)
	}
	rec = chat(t, h, "alpha")
	if got := rec.Header().Get("Rbee-Replica"); got != "h2/w2" {
		t.Errorf("after the failure: replica %q, want h2/w2 (h1/w1 left the group)", got)
	}
	if got, want := f.servedBy(), []string{"h1/w1", "h2/w2", "h2/w2"}; !slices.Equal(got, want) {
		t.Errorf("the agents served %v, want %v", got, want)
	}
	if f.places != 0 {
		t.Errorf("%d placements, want none: ready replicas were there", f.places)
	}
}

// A model no hive knows is a 404 naming the known ones, counted under
// "unknown" in the metrics; nothing is placed.
func TestDoorUnknownModel(t *testing.T) {
	t.Parallel()
	f := newFakeFleet(t, map[string][]string{"h1": {"w1"}})
	h := newTestDoor(t, f)
	rec := chat(t, h, "nope")
	if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), `model \"nope\" is not on any hive (known: alpha`) ||
		!strings.Contains(rec.Body.String(), `"code":"model_not_found"`) {
		t.Fatalf("status %d: %s, want 404 model_not_found naming alpha", rec.Code, rec.Body)
	}
	chat(t, h, "alpha")
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{`rbee_requests_total{model="unknown",status="404"} 1`, `rbee_requests_total{model="alpha",status="200"} 1`,
		`rbee_generation_tokens_total{model="alpha"} 2`} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if len(f.servedBy()) != 1 || f.places != 0 {
		t.Errorf("served %v, placed %d: want one answer and no placement", f.servedBy(), f.places)
	}
}

// With no replica, the first request places one (once, however many
// requests arrive together) and every request is served by it in turn.
func TestDoorPlacesOneReplicaForConcurrentRequests(t *testing.T) {
	t.Parallel()
	f := newFakeFleet(t, nil)
	h := newTestDoor(t, f)
	var wg sync.WaitGroup
	codes := make([]int, 4)
	for i := range codes {
		wg.Go(func() { codes[i] = chat(t, h, "alpha").Code })
	}
	wg.Wait()
	for i, c := range codes {
		if c != http.StatusOK {
			t.Errorf("request %d: status %d", i, c)
		}
	}
	f.mu.Lock()
	places, started := f.places, f.started
	f.mu.Unlock()
	if places != 1 || started != 1 {
		t.Errorf("%d placements, %d workers started; want 1 and 1", places, started)
	}
	for _, s := range f.servedBy() {
		if s != "h1/w-new1" {
			t.Errorf("served by %s, want the placed h1/w-new1", s)
		}
	}
}

// GET /v1/models lists the names clients use; a key limited to other
// models sees none of them and may not use them.
func TestDoorModelsAndKeys(t *testing.T) {
	t.Parallel()
	f := newFakeFleet(t, map[string][]string{"h1": {"w1"}})
	h := newTestDoor(t, f)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/models", nil))
	if !strings.Contains(rec.Body.String(), `"id":"alpha"`) || !strings.Contains(rec.Body.String(), `"id":"alpha.gguf"`) {
		t.Errorf("models: %s, want alpha and alpha.gguf", rec.Body)
	}
	keys := []APIKey{{ID: "app", key: "0123456789abcdef0123", Models: []string{"beta"}}}
	g := Guard("", keys, testLog(), h)
	req := httptest.NewRequest("GET", "/v1/models", nil)
	req.Header.Set("Authorization", "Bearer 0123456789abcdef0123")
	rec = httptest.NewRecorder()
	g.ServeHTTP(rec, req)
	if strings.Contains(rec.Body.String(), "alpha") {
		t.Errorf("a key for beta sees %s", rec.Body)
	}
	req = httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(`{"model":"alpha","messages":[]}`))
	req.Header.Set("Authorization", "Bearer 0123456789abcdef0123")
	rec = httptest.NewRecorder()
	g.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Errorf("a key for beta asking for alpha: %d %s, want 403", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	g.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/models", nil))
	if rec.Code != http.StatusUnauthorized {
		t.Errorf("no key: %d, want 401", rec.Code)
	}
	// The metrics name every model: a key for some models gets none.
	chat(t, h, "alpha")
	keys = append(keys, APIKey{ID: "ops", key: "fedcba98765432100123"})
	g = Guard("", keys, testLog(), h)
	for _, k := range []struct {
		key  string
		want int
	}{{"0123456789abcdef0123", http.StatusForbidden}, {"fedcba98765432100123", http.StatusOK}} {
		req = httptest.NewRequest("GET", "/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+k.key)
		rec = httptest.NewRecorder()
		g.ServeHTTP(rec, req)
		if rec.Code != k.want || (k.want == http.StatusForbidden && strings.Contains(rec.Body.String(), "alpha")) {
			t.Errorf("metrics with key %s…: %d, want %d", k.key[:4], rec.Code, k.want)
		}
	}
	_, _ = io.Copy(io.Discard, rec.Body)
}

func testLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// Requests find their model in the door's cached snapshots: a burst of
// requests costs a hive one look, not one each (the refresh loop may add
// one per refreshEvery).
func TestDoorCachesSnapshots(t *testing.T) {
	t.Parallel()
	f := newFakeFleet(t, map[string][]string{"h1": {"w1"}, "h2": {"w2"}})
	h := newTestDoor(t, f)
	start := time.Now()
	for i := range 20 {
		if rec := chat(t, h, "alpha"); rec.Code != http.StatusOK {
			t.Fatalf("request %d: %d %s", i, rec.Code, rec.Body)
		}
	}
	bound := 1 + int(time.Since(start)/refreshEvery) + 1
	for _, hv := range f.hives {
		hv.mu.Lock()
		looks := hv.looks
		hv.mu.Unlock()
		if looks > bound {
			t.Errorf("hive %s was looked at %d times for 20 requests, want at most %d", hv.name, looks, bound)
		}
	}
}

// A client naming a URL or a Hugging Face reference no hive holds makes
// the queen fetch nothing unless the owner allows it (--door-pull); when
// allowed, a failed fetch is reported with its reason, requests within the
// backoff get that reason without another fetch, and such names never
// become metrics labels.
func TestDoorPull(t *testing.T) {
	t.Parallel()
	names := []string{"https://127.0.0.1:9/x.gguf", "hf:org/repo/x.gguf"}
	t.Run("off", func(t *testing.T) {
		t.Parallel()
		f := newFakeFleet(t, map[string][]string{"h1": {"w1"}})
		h := newTestDoor(t, f)
		for _, n := range names {
			rec := chat(t, h, n)
			if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "does not download") {
				t.Errorf("%s: %d %s, want 404 saying the door does not download", n, rec.Code, rec.Body)
			}
		}
		if f.parsed != 0 || f.places != 0 {
			t.Errorf("%d references taken, %d placements: the queen reached out", f.parsed, f.places)
		}
	})
	t.Run("on", func(t *testing.T) {
		t.Parallel()
		f := newFakeFleet(t, map[string][]string{"h1": {"w1"}})
		h := newTestDoorWith(t, f, Config{Pull: true})
		for i := range 3 {
			rec := chat(t, h, names[0])
			if rec.Code != http.StatusBadGateway || !strings.Contains(rec.Body.String(), "tls: handshake failure") {
				t.Errorf("request %d: %d %s, want 502 with the fetch's reason", i, rec.Code, rec.Body)
			}
		}
		f.mu.Lock()
		places := f.places
		f.mu.Unlock()
		if places != 1 {
			t.Errorf("%d fetches for 3 requests within the backoff, want 1", places)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		if strings.Contains(rec.Body.String(), "127.0.0.1:9") || !strings.Contains(rec.Body.String(), `rbee_requests_total{model="unknown",status="502"} 3`) {
			t.Errorf("metrics: the URL became a label, or the requests were not counted as unknown:\n%s", rec.Body)
		}
	})
}

// TestDoorDrain: when the queen stops, a door request in flight is counted
// (health's "requests"), new ones are refused with 503, and at the end of
// the grace a stream ends with an error event saying the queen is shutting
// down — not a worker crash.
func TestDoorDrain(t *testing.T) {
	t.Parallel()
	f := newFakeFleet(t, map[string][]string{"h1": {"w1"}})
	dr := New(Config{RequestLog: t.TempDir() + "/requests.log"}, f, &fakeStore{})
	t.Cleanup(dr.Close)
	mux := http.NewServeMux()
	dr.Routes(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	resp, err := http.Post(srv.URL+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"alpha","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "data: {") {
		t.Fatalf("first event %q %v", line, err)
	}
	if n := dr.InFlight(); n != 1 {
		t.Errorf("in flight: %d, want 1", n)
	}
	dr.Quiesce()
	if rec := chat(t, mux, "alpha"); rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "shutting down") {
		t.Errorf("a request while the queen stops: %d %s, want 503", rec.Code, rec.Body)
	}
	dr.Cancel(ErrShuttingDown)
	rest, _ := io.ReadAll(br)
	if !strings.Contains(string(rest), `"code":"queen_unavailable"`) || strings.Contains(string(rest), "worker_crashed") {
		t.Errorf("the stream ended with %q, want the queen shutting down", lastLine(string(rest)))
	}
	done := make(chan struct{})
	go func() { dr.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return once the stream ended")
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// /tokenize and /detokenize go to a replica of the model the body names,
// as a completion does; GET /v1/models/{id} answers for a listed model
// and 404 for another.
func TestDoorTokenizeAndModel(t *testing.T) {
	t.Parallel()
	f := newFakeFleet(t, map[string][]string{"h1": {"w1"}})
	h := newTestDoor(t, f)
	for _, ep := range []string{"tokenize", "detokenize"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/"+ep, strings.NewReader(`{"model":"alpha","content":"hi","tokens":[1]}`)))
		want := fmt.Sprintf(`{"endpoint":%q,"worker":"h1/w1"}`, ep)
		if rec.Code != http.StatusOK || strings.TrimSpace(rec.Body.String()) != want {
			t.Errorf("POST /%s: %d %s, want 200 %s", ep, rec.Code, rec.Body, want)
		}
	}
	for _, tt := range []struct {
		id   string
		code int
	}{{"alpha", 200}, {"nope", 404}} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/models/"+tt.id, nil))
		var m struct {
			ID    string `json:"id"`
			Error *struct {
				Type string `json:"type"`
				Code string `json:"code"`
			} `json:"error"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil || rec.Code != tt.code {
			t.Errorf("GET /v1/models/%s: %d %s, want %d", tt.id, rec.Code, rec.Body, tt.code)
		}
		if tt.code == 200 && m.ID != tt.id || tt.code == 404 && (m.Error == nil || m.Error.Type == "" || m.Error.Code != "model_not_found") {
			t.Errorf("GET /v1/models/%s: %s", tt.id, rec.Body)
		}
	}
}
