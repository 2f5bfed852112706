package hiveapi

import (
	"time"

	"github.com/rbee-dev/rbee"
)

// Handshake is the agent's answer to GET /v1/handshake, the first call on
// every connection.
type Handshake struct {
	Protocol int       `json:"protocol"`
	Version  string    `json:"version"`
	OS       string    `json:"os"`
	Arch     string    `json:"arch"`
	PID      int       `json:"pid"`
	Name     string    `json:"name"`
	Started  time.Time `json:"started"`
}

// Devices is the answer to GET /v1/devices.
type Devices struct {
	Devices []rbee.Device `json:"devices"`
	NVML    string        `json:"nvml"`
	// Engines says what went wrong listing the devices of the installed
	// GPU bundles (their backends are asked); "" when nothing did.
	Engines string `json:"engines,omitempty"`
}

// Snapshot is the hive's devices, workers and models in one answer
// (GET /v1/snapshot): what the queen reads of each hive before it plans,
// one round trip instead of three.
type Snapshot struct {
	Devices
	Workers []rbee.WorkerInfo `json:"workers"`
	Models  []Model           `json:"models"`
}

// ReserveRequest asks the VRAM checker for room (POST /v1/reservations).
type ReserveRequest struct {
	Device  string `json:"device"`
	Bytes   uint64 `json:"bytes"`
	Purpose string `json:"purpose,omitempty"`
}

// ReservationHeader carries the id of a granted reservation (204).
const ReservationHeader = "Rbee-Reservation"

// Headers of POST /v1/openai/{endpoint}, the queen's front door passing an
// OpenAI request to a worker: a warm worker by id, or a model (catalog id)
// and device with the reservation to charge. The answer names the worker.
const (
	WorkerHeader = "Rbee-Worker"
	ModelHeader  = "Rbee-Model"
	DeviceHeader = "Rbee-Device"
)

// StartWorkerRequest starts (or finds) the worker that serves a model on
// a device and keeps it loaded for a deployment (POST /v1/workers): the
// queen's deployments. The answer is the worker's rbee.WorkerInfo.
type StartWorkerRequest struct {
	Model       string `json:"model"` // catalog id
	Device      string `json:"device"`
	Reservation string `json:"reservation,omitempty"`
	Embeddings  bool   `json:"embeddings,omitempty"`
	Deployment  string `json:"deployment"`
	// RPC and TensorSplit start a split's worker, as InferRequest's do:
	// the front door serves a model across hives through one.
	RPC         []string  `json:"rpc,omitempty"`
	TensorSplit []float64 `json:"tensor_split,omitempty"`
}

// DeploymentRequest marks a running worker as kept loaded for a
// deployment, or with "" as unloaded when idle again
// (PUT /v1/workers/{id}/deployment).
type DeploymentRequest struct {
	Deployment string `json:"deployment"`
}

// NoRoom is the body of a 409 from the VRAM checker.
type NoRoom struct {
	Error          rbee.Error `json:"error"`
	RequestedBytes uint64     `json:"requested_bytes"`
	FreeBytes      uint64     `json:"free_bytes"`
	Device         string     `json:"device"`
}

// AddModelRequest registers a GGUF file on the hive (POST /v1/models).
type AddModelRequest struct {
	Path  string `json:"path"`
	Ref   string `json:"ref,omitempty"`
	Alias string `json:"alias,omitempty"`
}

// Model is a model in the hive's catalog.
type Model struct {
	ID            string    `json:"id"`
	Ref           string    `json:"ref"`
	Alias         string    `json:"alias,omitempty"`
	Path          string    `json:"path"`
	Size          int64     `json:"size"`
	SHA256        string    `json:"sha256"`
	Arch          string    `json:"arch"`
	Quant         string    `json:"quant"`
	Params        uint64    `json:"params"`
	CtxTrain      int       `json:"ctx_train"`
	WeightsBytes  uint64    `json:"weights_bytes"`
	KVBytesPerTok uint64    `json:"kv_bytes_per_token"`
	EstimateBytes uint64    `json:"estimate_bytes"` // at the hive's context size
	CtxSize       int       `json:"ctx_size"`
	Added         time.Time `json:"added"`
	LastUsed      time.Time `json:"last_used"`
}

// InferRequest runs a prompt on the hive (POST /v1/infer, answered with an
// SSE stream of rbee events). Worker names a running worker to use (the warm
// path); otherwise the hive starts one for Model on Device, charging
// Reservation.
type InferRequest struct {
	Job         string   `json:"job,omitempty"`
	Model       string   `json:"model"` // catalog id
	Device      string   `json:"device,omitempty"`
	Reservation string   `json:"reservation,omitempty"`
	Worker      string   `json:"worker,omitempty"`
	WorkerType  string   `json:"worker_type,omitempty"` // an external worker type; "" = rbee-worker
	Prompt      string   `json:"prompt"`
	Mode        string   `json:"mode,omitempty"` // "auto" (chat if the model has a template), "chat", "raw"
	MaxTokens   int      `json:"max_tokens,omitempty"`
	Temperature *float64 `json:"temperature,omitempty"`
	Seed        *int64   `json:"seed,omitempty"`
	// RPC, for a new worker, lists the llama.cpp RPC servers it offloads
	// layers to ("127.0.0.1:PORT", the forwards the queen holds on this
	// host's loopback): a split worker. A split worker is never shared
	// with a request that does not name the same servers.
	RPC []string `json:"rpc,omitempty"`
	// TensorSplit, with RPC, is each device's share of the layers: this
	// hive's device first, then each RPC server (rbee-worker
	// --tensor-split); empty = by free memory.
	TensorSplit []float64 `json:"tensor_split,omitempty"`
}

// RPCRequest asks the hive for a llama.cpp RPC server (POST /v1/rpc). The
// answer is an SSE stream that holds the server: a first event
// (action "rpc_ready", Data the RPCServer), then, if the server dies, an
// error event (code worker_crashed) that says why. The server is stopped
// when the stream ends: the queen's lease is the request itself, so a
// queen that goes away, or an SSH connection that breaks, leaves nothing
// behind.
type RPCRequest struct {
	Job         string `json:"job,omitempty"`
	Device      string `json:"device"`
	Reservation string `json:"reservation,omitempty"`
}

// RPCServer is a running llama.cpp RPC server, always bound to 127.0.0.1
// (GET /v1/rpc lists them).
type RPCServer struct {
	ID      string    `json:"id"`
	Port    int       `json:"port"`
	PID     int       `json:"pid"`
	Device  string    `json:"device"`
	Job     string    `json:"job,omitempty"`
	Started time.Time `json:"started"`
	// Socket is a unix socket in the agent's run directory that relays to
	// the server's port: the way in through SSH (streamlocal). sshd's own
	// TCP connections (direct-tcpip) leave Nagle's algorithm on, which
	// costs llama.cpp's small RPC messages a delayed ACK (40 ms) each; a
	// unix socket has none, and the agent's relay sets TCP_NODELAY.
	Socket string `json:"socket,omitempty"`
}

// RPCServers is the answer to GET /v1/rpc.
type RPCServers struct {
	RPC []RPCServer `json:"rpc"`
}

// TCPPeer is the answer to GET /v1/peers/tcp: who owns the socket of a
// loopback TCP connection on the hive's machine (the queen asks before it
// carries a connection to a split's forward: only the hive's owner, whose
// worker it is, may use it).
type TCPPeer struct {
	UID     int  `json:"uid"`
	Allowed bool `json:"allowed"` // the agent's own user (or root)
}

// ActionRPCReady is the action of an RPC lease's first event.
const ActionRPCReady = "rpc_ready"

// WorkerExit is the answer to GET /v1/workers/{id}/wait, given once the
// worker has exited.
type WorkerExit struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// Workers is the answer to GET /v1/workers.
type Workers struct {
	Workers []rbee.WorkerInfo `json:"workers"`
}

// ShutdownRequest is the optional body of POST /v1/shutdown.
type ShutdownRequest struct {
	// KeepWorkers leaves the workers running for the next agent to adopt
	// (an upgrade); otherwise they are stopped.
	KeepWorkers bool `json:"keep_workers,omitempty"`
}

// PullRequest asks the hive to download a model by reference (POST
// /v1/models/pull, answered with an SSE stream of progress; the done event's
// Data is the Model). Endpoint and Token travel with the request because a
// remote agent's environment has neither; the token is never logged.
type PullRequest struct {
	Job      string `json:"job,omitempty"`
	Ref      string `json:"ref"`
	Alias    string `json:"alias,omitempty"`
	Endpoint string `json:"endpoint,omitempty"` // HF_ENDPOINT
	Token    string `json:"token,omitempty"`    // HF_TOKEN
}

// InstallEngineRequest installs an engine bundle from a directory or archive
// on the hive (POST /v1/engines).
type InstallEngineRequest struct {
	Source string `json:"source"`
}

// WorkerBinary is an entry of the hive's worker catalog: a worker binary or
// an engine bundle.
type WorkerBinary struct {
	ID           string    `json:"id"`
	Type         string    `json:"type"`
	Version      string    `json:"version"`
	Path         string    `json:"path"`
	SHA256       string    `json:"sha256"`
	Capabilities []string  `json:"capabilities"`
	Added        time.Time `json:"added"`
	LastUsed     time.Time `json:"last_used"`
}

// WorkerType declares an external engine that speaks the OpenAI API
// (llama.cpp's llama-server, vLLM, ...) as a worker the hive runs like
// rbee-worker (POST /v1/worker-types). Args may hold the placeholders
// {model}, {port}, {device} (the CUDA index, "" on the CPU) and {ctx}.
type WorkerType struct {
	Name    string   `json:"name"`
	Command string   `json:"command"` // absolute path on the hive
	Args    []string `json:"args"`
	Health  string   `json:"health"` // path answering 200 when ready, e.g. "/health"
}
