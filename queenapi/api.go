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
	// Requests are the front door's requests being served now (a
	// stream is one until its last byte).
	Requests int `json:"requests"`
	// GraceS is how long running jobs and requests get when the queen is
	// asked to stop.
	GraceS float64 `json:"grace_s,omitempty"`
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
	// Split names the hives to spread the model over with llama.cpp's RPC
	// backend (two or more): the main worker goes to the one with the most
	// room, the others serve RPC through SSH forwards.
	Split []string `json:"split,omitempty"`
}

// AddHiveRequest is the body of POST /v1/hives: rbee hive add.
type AddHiveRequest struct {
	Name             string `json:"name"`
	Host             string `json:"host"`
	User             string `json:"user,omitempty"`
	Port             int    `json:"port,omitempty"`
	Identity         string `json:"identity,omitempty"`
	AcceptNewHostKey bool   `json:"accept_new_host_key,omitempty"`
	// DryRun: connect and report the install plan (an "install_plan"
	// event carrying an InstallPlan), changing nothing: not the host, not
	// the inventory, not the catalog, not known_hosts.
	DryRun bool `json:"dry_run,omitempty"`
}

// UpRequest is the body of POST /v1/up: rbee up.
type UpRequest struct {
	// AcceptNewHostKey records the host key of an inventory host not yet
	// in known_hosts (a changed key is refused regardless).
	AcceptNewHostKey bool `json:"accept_new_host_key,omitempty"`
}

// EventInstallPlan is the action of the event that carries an InstallPlan
// in its Data.
const EventInstallPlan = "install_plan"

// InstallPlan is what rbee hive add --dry-run found on a host.
type InstallPlan struct {
	Hive      string `json:"hive"`
	Host      string `json:"host"` // [user@]host[:port]
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	Libc      string `json:"libc"`
	Libffi    bool   `json:"libffi"`
	FreeBytes uint64 `json:"free_bytes"`
	Home      string `json:"home"`
	// NewHostKey is the fingerprint of a host key not in known_hosts,
	// which hive add --accept-new-host-key would record; "" when known.
	NewHostKey string `json:"new_host_key,omitempty"`
	// Running is the version of the agent answering there, if one does.
	Running string `json:"running_version,omitempty"`
	// Reuse: that agent is this version, so nothing would be uploaded or
	// started.
	Reuse  bool   `json:"reuse"`
	Engine string `json:"engine,omitempty"` // "" when this machine has no bundle for the host yet
	// EngineKind is the engine the host would get ("cuda", "vulkan",
	// "cpu"), EngineWhy why: what the probe found of its GPUs.
	EngineKind string `json:"engine_kind"`
	EngineWhy  string `json:"engine_why"`
	// EnginePackage is the pinned package that engine comes from
	// ("@node-llama-cpp/linux-x64-vulkan@3.22.1"); "" when none is pinned.
	EnginePackage string        `json:"engine_package,omitempty"`
	Files         []PlannedFile `json:"files"`
	Links         int           `json:"links,omitempty"`
	UploadBytes   int64         `json:"upload_bytes"`
	UploadFiles   int           `json:"upload_files"`
	Problem       string        `json:"problem,omitempty"` // why hive add would fail there
}

// PlannedFile is one file of an InstallPlan.
type PlannedFile struct {
	Name   string `json:"name"`
	Path   string `json:"path"` // on the host
	Bytes  int64  `json:"bytes"`
	Upload bool   `json:"upload"` // false: the host has it with the same sha256
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
	// Host is what rbee found on the hive's machine: the probe of its SSH
	// connection (rbee up, hive add) for a host, a local probe for this
	// machine. Only hive status fills it, for a hive it reached.
	Host *HostFacts `json:"host,omitempty"`
}

// HostFacts describe a hive's machine.
type HostFacts struct {
	OS      string `json:"os"`   // linux
	Arch    string `json:"arch"` // amd64
	Machine string `json:"machine,omitempty"`
	Libc    string `json:"libc"` // first line of ldd --version, or getconf's "glibc 2.36"
	Libffi  bool   `json:"libffi"`
	// NVIDIADriver is the driver version NVML reports; "" without one.
	NVIDIADriver string `json:"nvidia_driver,omitempty"`
	// NVML is what the agent's NVML probe said: "driver 550.54", or why
	// there is none.
	NVML      string `json:"nvml,omitempty"`
	FreeBytes uint64 `json:"free_bytes"` // in the home's file system, when probed
	Home      string `json:"home,omitempty"`
	// EngineKind is the engine the probe's GPU facts call for ("cuda",
	// "vulkan", "cpu"), EngineWhy why; Engines the bundles the agent has
	// (variant and backends, "v0.5.0-cpu-vulkan (cpu, vulkan)").
	EngineKind string   `json:"engine_kind,omitempty"`
	EngineWhy  string   `json:"engine_why,omitempty"`
	Engines    []string `json:"engines,omitempty"`
	// EngineDevices says what went wrong asking the engines' backends
	// for their devices; "" when nothing did.
	EngineDevices string `json:"engine_devices,omitempty"`
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

// Models is the answer to GET /v1/catalog?hive=NAME: a hive's model catalog.
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

// Process is one worker in GET /v1/ps: rbee ps.
type Process struct {
	Hive    string `json:"hive"`
	Worker  string `json:"worker"`
	Type    string `json:"type,omitempty"` // "" = rbee-worker
	Model   string `json:"model"`          // the name clients use (alias, reference or file name)
	ModelID string `json:"model_id"`
	Device  string `json:"device"`
	PID     int    `json:"pid"`
	State   string `json:"state"`
	Busy    int    `json:"busy"` // requests in flight
	Slots   int    `json:"slots"`
	Served  int64  `json:"served"` // requests answered
	// MemoryBytes is the device memory the hive holds for it.
	MemoryBytes uint64 `json:"memory_bytes"`
	// Deployment keeps the worker loaded; "" = unloaded when idle.
	Deployment string    `json:"deployment,omitempty"`
	Embeddings bool      `json:"embeddings,omitempty"`
	Started    time.Time `json:"started"`
	LastUsed   time.Time `json:"last_used"`
	// UnloadIn is how long until the keep-alive unloads it, idle (0 while
	// busy).
	UnloadInS float64 `json:"unload_in_s"`
}

// Processes is the answer to GET /v1/ps.
type Processes struct {
	Processes []Process `json:"processes"`
	Skipped   []string  `json:"skipped,omitempty"` // hives that did not answer, with why
	// Deployments are the deployments with their replicas and their last
	// scale event: why a worker is there or went.
	Deployments []Deployment `json:"deployments,omitempty"`
}

// DeployRequest declares a deployment (PUT /v1/deployments/{name}): the
// model stays loaded with Min to Max workers, one per device; Replicas
// alone is a fixed number (Min = Max = Replicas).
type DeployRequest struct {
	Name       string   `json:"name"`
	Model      string   `json:"model"` // alias, reference, catalog id or local file name
	Replicas   int      `json:"replicas,omitempty"`
	Min        int      `json:"min_replicas,omitempty"`
	Max        int      `json:"max_replicas,omitempty"`
	Hives      []string `json:"hives,omitempty"`  // only these hives; none = any
	Device     string   `json:"device,omitempty"` // only this device ("cpu", "gpu0"); "" = the scheduler's pick
	Embeddings bool     `json:"embeddings,omitempty"`
}

// Deployment is a deployment with its replicas now (GET /v1/deployments).
type Deployment struct {
	Name       string    `json:"name"`
	Model      string    `json:"model"`
	Replicas   int       `json:"replicas"` // wanted now: Min, more while requests wait, up to Max
	Min        int       `json:"min_replicas"`
	Max        int       `json:"max_replicas"`
	Ready      int       `json:"ready"`
	Hives      []string  `json:"hives,omitempty"`
	Device     string    `json:"device,omitempty"`
	Embeddings bool      `json:"embeddings,omitempty"`
	Created    time.Time `json:"created"`
	Workers    []Replica `json:"workers"`
	Error      string    `json:"error,omitempty"` // the last failure to start a replica
	// LastScale is the last replica the door added or removed, with why;
	// nil when none since the queen started.
	LastScale *ScaleEvent `json:"last_scale,omitempty"`
}

// ScaleEvent is the front door adding a replica to a deployment or
// removing one, and why.
type ScaleEvent struct {
	At     time.Time `json:"at"`
	Action string    `json:"action"` // "added" or "removed"
	Hive   string    `json:"hive"`
	Worker string    `json:"worker"`
	Device string    `json:"device"`
	// Reason is the rule: "queue" (requests waited longer than the scale
	// wait), "min" (below the minimum: a first or a replacement replica),
	// "idle" (above the minimum and idle for the keep-alive), "max" (above
	// a lowered maximum).
	Reason string `json:"reason"`
	Detail string `json:"detail"` // e.g. "3 requests waited 2.4s", "idle 5m0s"
}

// String is the event as rbee ps shows it: "added h2/gpu0: 3 requests
// waited 2.4s".
func (e ScaleEvent) String() string {
	return e.Action + " " + e.Hive + "/" + e.Device + ": " + e.Detail
}

// Replica is one worker of a deployment.
type Replica struct {
	Hive     string `json:"hive"`
	Worker   string `json:"worker"`
	Device   string `json:"device"`
	Ready    bool   `json:"ready"`
	Slots    int    `json:"slots"`
	InFlight int    `json:"in_flight"`
}

// Deployments is the answer to GET /v1/deployments.
type Deployments struct {
	Deployments []Deployment `json:"deployments"`
}

// Top is the fleet as the queen knows it now, without asking any hive
// (GET /v1/top): what rbee top shows every second.
type Top struct {
	At      time.Time   `json:"at"`
	Hives   []HiveInfo  `json:"hives"` // devices as last probed
	Workers []TopWorker `json:"workers"`
	Models  []TopModel  `json:"models"` // the front door's
	// Deployments are the door's deployments: replicas, min-max, and the
	// last replica added or removed and why.
	Deployments []Deployment `json:"deployments,omitempty"`
}

// TopWorker is one worker of the registry, with what the queen counted of
// its work: requests in flight through the door and jobs, and the tokens
// it generated for them since the queen started (a client takes the rate
// from two looks).
type TopWorker struct {
	rbee.WorkerInfo
	InFlight  int   `json:"in_flight"`
	Generated int64 `json:"generated_tokens"`
}

// TopModel is one model of the front door: its queue and its replicas.
type TopModel struct {
	Model      string `json:"model"`
	Embeddings bool   `json:"embeddings,omitempty"`
	Deployment bool   `json:"deployment,omitempty"` // a deployment keeps it loaded
	Waiting    int    `json:"waiting"`              // requests queued for a slot
	InFlight   int    `json:"in_flight"`
	Replicas   int    `json:"replicas"`
	Ready      int    `json:"ready"`
	Slots      int    `json:"slots"` // of the ready replicas
}
