package queenapi

import (
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/hiveapi"
)

// DefaultAddr is where the queen's TCP listener (health and, later, the
// OpenAI-compatible API) listens unless told otherwise.
const DefaultAddr = "127.0.0.1:7833"

// ServiceName identifies a queen's /health answer.
const ServiceName = "rbee-queen"

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

// JobRequest is the body of POST /v1/jobs. The answer is an SSE stream of
// rbee events; closing it (or DELETE /v1/jobs/{id}) cancels the job.
type JobRequest struct {
	Prompt      string   `json:"prompt"`
	Model       string   `json:"model"` // an absolute GGUF path on the queen's machine, https://…, or hf:…
	Hive        string   `json:"hive,omitempty"`
	Device      string   `json:"device,omitempty"`
	MaxTokens   int      `json:"max_tokens,omitempty"`
	Temperature *float64 `json:"temperature,omitempty"`
	Seed        *int64   `json:"seed,omitempty"`
	Mode        string   `json:"mode,omitempty"` // "auto", "chat", "raw"
	Explain     bool     `json:"explain,omitempty"`
	WorkerType  string   `json:"worker_type,omitempty"` // an external worker type declared on the hive
}

// AddHiveRequest is the body of POST /v1/hives: rbee hive add.
type AddHiveRequest struct {
	Name             string `json:"name"`
	Host             string `json:"host"`
	User             string `json:"user,omitempty"`
	Port             int    `json:"port,omitempty"`
	Identity         string `json:"identity,omitempty"`
	AcceptNewHostKey bool   `json:"accept_new_host_key,omitempty"`
}

// HiveInfo is one hive in GET /v1/hives and GET /v1/hives/{name}.
type HiveInfo struct {
	Name     string            `json:"name"`
	Kind     string            `json:"kind"`
	Address  string            `json:"address"`
	Status   string            `json:"status"`
	Reason   string            `json:"reason,omitempty"`
	Version  string            `json:"agent_version,omitempty"`
	LastSeen time.Time         `json:"last_seen"`
	Devices  []rbee.Device     `json:"devices"`
	Workers  []rbee.WorkerInfo `json:"workers,omitempty"`
}

// Hives is the answer to GET /v1/hives.
type Hives struct {
	Hives []HiveInfo `json:"hives"`
}

// PullRequest is the body of POST /v1/models/pull: rbee model pull.
type PullRequest struct {
	Ref   string `json:"ref"`
	Hive  string `json:"hive,omitempty"`
	Alias string `json:"alias,omitempty"`
}

// Models is the answer to GET /v1/models?hive=NAME.
type Models struct {
	Hive   string          `json:"hive"`
	Models []hiveapi.Model `json:"models"`
}

// InstallEngineRequest is the body of POST /v1/engines: rbee worker install.
type InstallEngineRequest struct {
	Hive   string `json:"hive,omitempty"`
	Source string `json:"source"` // a directory, a .tgz/.zip archive, or an https:// URL of one, on the queen's machine
}

// Engines is the answer to GET /v1/engines?hive=NAME.
type Engines struct {
	Hive    string                 `json:"hive"`
	Workers []hiveapi.WorkerBinary `json:"workers"`
}

// AddWorkerTypeRequest is the body of POST /v1/worker-types.
type AddWorkerTypeRequest struct {
	Hive string             `json:"hive,omitempty"`
	Type hiveapi.WorkerType `json:"type"`
}

// Workers is the answer to GET /v1/workers: the queen's worker registry.
type Workers struct {
	Workers []rbee.WorkerInfo `json:"workers"`
}
