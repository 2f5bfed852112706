package rbee

import (
	"encoding/json"
	"time"
)

// Event types. Consumers must ignore types they do not know.
const (
	EventNarration = "narration" // a human-readable step of the flow
	EventProgress  = "progress"  // bytes or steps done of a total
	EventToken     = "token"     // generated text
	EventDone      = "done"      // the job finished; Done holds counts and timings
	EventError     = "error"     // the job failed; Code is stable, Message human
	EventJob       = "job"       // first event of a job stream: Job holds its id
)

// Event is everything that flows to the person: hive → queen → keeper, over
// SSE, and one JSON line each with --json.
type Event struct {
	Type    string    `json:"type"`
	Time    time.Time `json:"time"`
	Job     string    `json:"job,omitempty"`
	Actor   string    `json:"actor,omitempty"`  // "keeper", "queen", "hive localhost", "worker w-1"
	Action  string    `json:"action,omitempty"` // stable step name, e.g. "device_picked"
	Level   string    `json:"level,omitempty"`  // "info" (default), "warn", "error"
	Message string    `json:"message,omitempty"`
	Text    string    `json:"text,omitempty"` // token text

	BytesDone  int64   `json:"bytes_done,omitempty"`
	BytesTotal int64   `json:"bytes_total,omitempty"`
	Rate       float64 `json:"rate,omitempty"` // bytes per second

	Code string `json:"code,omitempty"` // error code, see codes.go
	Hint string `json:"hint,omitempty"` // with an error: what to do about it

	Done       *Done       `json:"done,omitempty"`
	Worker     *WorkerInfo `json:"worker,omitempty"`
	Candidates []Candidate `json:"candidates,omitempty"` // --explain

	// Data carries a typed result a step produced (a pulled model's
	// catalog entry, for one), for consumers that know the action.
	Data json.RawMessage `json:"data,omitempty"`
}

// Done sums up a finished generation.
type Done struct {
	FinishReason     string  `json:"finish_reason"`
	PromptTokens     int     `json:"prompt_tokens"`
	CompletionTokens int     `json:"completion_tokens"`
	PromptMS         float64 `json:"prompt_ms"`
	TokensPerSecond  float64 `json:"tokens_per_second"`
	Hive             string  `json:"hive,omitempty"`
	Worker           string  `json:"worker,omitempty"`
	Device           string  `json:"device,omitempty"`
	Warm             bool    `json:"warm"` // served by a worker that was already running
}

// WorkerInfo describes a running worker on a hive.
type WorkerInfo struct {
	ID       string    `json:"id"`
	Hive     string    `json:"hive,omitempty"`
	Type     string    `json:"type,omitempty"` // "" = rbee-worker, else an external worker type
	ModelID  string    `json:"model_id"`
	Model    string    `json:"model"` // path on the hive
	Device   string    `json:"device"`
	PID      int       `json:"pid"`
	State    string    `json:"state"` // "starting", "ready"
	Started  time.Time `json:"started"`
	LastUsed time.Time `json:"last_used"`
	Busy     int       `json:"busy"` // requests in flight
	// MemoryBytes is the device memory the hive holds for the worker
	// (its reservation: weights, KV cache for every slot, compute).
	MemoryBytes uint64 `json:"memory_bytes,omitempty"`
	// Slots is how many requests the worker decodes at once.
	Slots int `json:"slots,omitempty"`
	// Served counts the requests the worker has answered.
	Served int64 `json:"served,omitempty"`
	// Embeddings: started with --embeddings, serves /v1/embeddings only.
	Embeddings bool `json:"embeddings,omitempty"`
	// Deployment names the deployment that keeps this worker loaded (the
	// keep-alive does not unload it); "" = unloaded when idle.
	Deployment string `json:"deployment,omitempty"`
	// RPC lists the llama.cpp RPC servers a split worker offloads layers
	// to (loopback forwards the queen holds); empty for an ordinary worker.
	RPC []string `json:"rpc,omitempty"`
}

// Candidate is one device the scheduler considered, for --explain.
type Candidate struct {
	Hive     string `json:"hive"`
	Device   string `json:"device"`
	Name     string `json:"name"`
	Free     uint64 `json:"free_bytes"`
	Need     uint64 `json:"need_bytes"`
	Warm     string `json:"warm_worker,omitempty"`
	Rank     int    `json:"rank"` // 1 = picked
	Verdict  string `json:"verdict"`
	Rejected bool   `json:"rejected"`
}

// Narrate returns a narration event.
func Narrate(actor, action, msg string) Event {
	return Event{Type: EventNarration, Time: time.Now(), Actor: actor, Action: action, Message: msg}
}

// Fail returns an error event with a stable code.
func Fail(actor, code, msg string) Event {
	return Event{Type: EventError, Time: time.Now(), Actor: actor, Level: "error", Code: code, Message: msg}
}

// FailErr returns the error event for err: its code, message and hint.
func FailErr(actor string, err error) Event {
	ev := Fail(actor, CodeOf(err), err.Error())
	ev.Hint = HintOf(err)
	return ev
}

// Err returns the *Error an error event carries.
func (ev Event) Err() *Error {
	return &Error{Code: ev.Code, Message: ev.Message, Hint: ev.Hint}
}
