package queen

// DefaultAddr is where the queen listens unless told otherwise.
const DefaultAddr = "127.0.0.1:7833"

// Queen states reported by /health.
const (
	StateStarting = "starting"
	StateReady    = "ready"
	StateDegraded = "degraded" // serving, but a hive it knows is unreachable
)

// Health is the /health body.
type Health struct {
	Service  string  `json:"service"` // always "rbee-queen": tells a queen from whatever else holds the port
	State    string  `json:"state"`
	Reason   string  `json:"reason,omitempty"`
	Version  string  `json:"version"`
	Protocol int     `json:"protocol"`
	PID      int     `json:"pid"`
	UptimeS  float64 `json:"uptime_s"`
	Jobs     int     `json:"jobs"` // running now
}

// ServiceName identifies a queen's /health answer.
const ServiceName = "rbee-queen"

// JobRequest is the body of POST /v1/jobs. The answer is an SSE stream of
// rbee events; closing it (or DELETE /v1/jobs/{id}) cancels the job.
type JobRequest struct {
	Prompt      string   `json:"prompt"`
	Model       string   `json:"model"` // a GGUF path on the queen's machine (the local hive's filesystem)
	Hive        string   `json:"hive,omitempty"`
	Device      string   `json:"device,omitempty"`
	MaxTokens   int      `json:"max_tokens,omitempty"`
	Temperature *float64 `json:"temperature,omitempty"`
	Seed        *int64   `json:"seed,omitempty"`
	Mode        string   `json:"mode,omitempty"` // "auto", "chat", "raw"
	Explain     bool     `json:"explain,omitempty"`
	WorkerType  string   `json:"worker_type,omitempty"` // an external worker type declared on the hive`
}
