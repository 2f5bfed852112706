package door

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the queen's Prometheus metrics, named in the style of
// llama.cpp's and vLLM's servers (a prefix, snake_case, units in the
// name). The front door counts its requests; the catalog's view of hives
// and devices is read at each scrape.
type metrics struct {
	reg      *prometheus.Registry
	running  *prometheus.GaugeVec
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	ttft     *prometheus.HistogramVec
	waiting  *prometheus.GaugeVec
	// promptTokens and genTokens count the tokens of answered requests.
	promptTokens, genTokens *prometheus.CounterVec
	// added and removed count the deployments' replicas the door started
	// or stopped, by deployment and reason (queenapi.ScaleEvent.Reason).
	added, removed *prometheus.CounterVec
}

func newMetrics(dr *Door) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		running: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "rbee_requests_running",
			Help: "Front-door requests being served, by model."}, []string{"model"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_requests_total",
			Help: "Front-door requests answered, by model and HTTP status."}, []string{"model", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "rbee_request_duration_seconds",
			Help: "Front-door request time, from arrival to the last byte.", Buckets: prometheus.ExponentialBuckets(0.01, 2, 14)}, []string{"model"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "rbee_time_to_first_token_seconds",
			Help: "Front-door time from arrival to the first byte of the answer.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}, []string{"model"}),
	}
	m.waiting = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "rbee_requests_waiting",
		Help: "Front-door requests waiting in the queue for a free slot, by model."}, []string{"model"})
	m.promptTokens = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_prompt_tokens_total",
		Help: "Prompt tokens of answered front-door requests, by model."}, []string{"model"})
	m.genTokens = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_generation_tokens_total",
		Help: "Generated tokens of answered front-door requests, by model."}, []string{"model"})
	m.added = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_door_replicas_added_total",
		Help: "Replicas the front door added to a deployment, by deployment and reason (min: below the minimum; queue: requests waited longer than --scale-wait)."}, []string{"model", "reason"})
	m.removed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_door_replicas_removed_total",
		Help: "Replicas the front door removed from a deployment, by deployment and reason (idle: above the minimum and idle for the keep-alive; max: above a lowered maximum)."}, []string{"model", "reason"})
	m.reg.MustRegister(m.running, m.requests, m.duration, m.ttft, m.waiting, m.promptTokens, m.genTokens, m.added, m.removed, catalogCollector{door: dr})
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

var (
	hiveUpDesc   = prometheus.NewDesc("rbee_hive_up", "1 when the hive is online, 0 otherwise (from the hive catalog).", []string{"hive"}, nil)
	memTotalDesc = prometheus.NewDesc("rbee_device_memory_total_bytes", "Device memory (VRAM, or RAM for the CPU) as last probed.", []string{"hive", "device"}, nil)
	memFreeDesc  = prometheus.NewDesc("rbee_device_memory_free_bytes", "Free device memory as last probed.", []string{"hive", "device"}, nil)
	workersDesc  = prometheus.NewDesc("rbee_workers", "Workers the queen knows running, by hive.", []string{"hive"}, nil)
	slotsDesc    = prometheus.NewDesc("rbee_worker_slots", "Slots (requests decoded at once) of each replica the front door routes to.", []string{"hive", "worker", "model"}, nil)
	slotsBusy    = prometheus.NewDesc("rbee_worker_slots_busy", "Front-door requests in flight on each replica.", []string{"hive", "worker", "model"}, nil)
	replicasDesc = prometheus.NewDesc("rbee_deployment_replicas", "Ready replicas of each deployment.", []string{"deployment"}, nil)
	wantedDesc   = prometheus.NewDesc("rbee_deployment_replicas_wanted", "Replicas each deployment wants now: its min, more while requests wait, up to its max.", []string{"deployment"}, nil)
	minDesc      = prometheus.NewDesc("rbee_deployment_replicas_min", "The least replicas each deployment keeps.", []string{"deployment"}, nil)
	maxDesc      = prometheus.NewDesc("rbee_deployment_replicas_max", "The most replicas each deployment gets while requests wait.", []string{"deployment"}, nil)
)

// catalogCollector reports what the hive catalog and the worker registry
// hold, at scrape time.
type catalogCollector struct{ door *Door }

func (c catalogCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- hiveUpDesc
	ch <- memTotalDesc
	ch <- memFreeDesc
	ch <- workersDesc
	ch <- slotsDesc
	ch <- slotsBusy
	ch <- replicasDesc
	ch <- wantedDesc
	ch <- minDesc
	ch <- maxDesc
}

func (c catalogCollector) Collect(ch chan<- prometheus.Metric) {
	// The door's own figures first: a catalog slow to answer must not
	// take them out of a scrape.
	for _, r := range c.door.router.stats() {
		ch <- prometheus.MustNewConstMetric(slotsDesc, prometheus.GaugeValue, float64(r.slots), r.hive, r.worker, r.model)
		ch <- prometheus.MustNewConstMetric(slotsBusy, prometheus.GaugeValue, float64(r.inflight), r.hive, r.worker, r.model)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	workers := c.door.fleet.WorkerCounts()
	if deps, err := c.door.deploy.status(ctx); err == nil {
		for _, d := range deps {
			ch <- prometheus.MustNewConstMetric(replicasDesc, prometheus.GaugeValue, float64(d.Ready), d.Name)
			ch <- prometheus.MustNewConstMetric(wantedDesc, prometheus.GaugeValue, float64(d.Replicas), d.Name)
			ch <- prometheus.MustNewConstMetric(minDesc, prometheus.GaugeValue, float64(d.Min), d.Name)
			ch <- prometheus.MustNewConstMetric(maxDesc, prometheus.GaugeValue, float64(d.Max), d.Name)
		}
	}
	hs, err := c.door.db.Hives(ctx)
	if err != nil {
		return
	}
	for _, h := range hs {
		up := 0.0
		if h.Status == "online" {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(hiveUpDesc, prometheus.GaugeValue, up, h.Name)
		ch <- prometheus.MustNewConstMetric(workersDesc, prometheus.GaugeValue, float64(workers[h.Name]), h.Name)
		for _, d := range h.Devices {
			ch <- prometheus.MustNewConstMetric(memTotalDesc, prometheus.GaugeValue, float64(d.TotalBytes), h.Name, d.ID)
			ch <- prometheus.MustNewConstMetric(memFreeDesc, prometheus.GaugeValue, float64(d.FreeBytes), h.Name, d.ID)
		}
	}
}

// firstByte records when the first byte of an answer is written.
type firstByte struct {
	http.ResponseWriter
	start    time.Time
	first    time.Duration
	status   int
	wrote    bool // the status line went out
	complete bool // the whole answer went out
}

func (f *firstByte) WriteHeader(code int) {
	f.status, f.wrote = code, true
	f.ResponseWriter.WriteHeader(code)
}

func (f *firstByte) Write(b []byte) (int, error) {
	f.wrote = true
	if f.first == 0 && len(b) > 0 {
		f.first = time.Since(f.start)
	}
	return f.ResponseWriter.Write(b)
}

func (f *firstByte) Flush() {
	if fl, ok := f.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
}
