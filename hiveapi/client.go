package hiveapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/sse"
)

// Client talks to one hive agent.
type Client struct {
	Name string // hive name, for messages
	hc   *http.Client
}

// DialFunc opens a connection to the agent.
type DialFunc func(ctx context.Context) (net.Conn, error)

// NewClient returns a client that reaches the agent through dial.
func NewClient(name string, dial DialFunc) *Client {
	tr := &http.Transport{
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     90 * time.Second,
	}
	return &Client{Name: name, hc: &http.Client{Transport: tr}}
}

// UnixDialer dials the agent's unix socket.
func UnixDialer(path string) DialFunc {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
}

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// APIError is an error answer of the agent.
type APIError struct {
	Status int
	Body   rbee.Error
	Raw    []byte // the whole body, e.g. a NoRoom
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s (%s)", e.Body.Message, e.Body.Code)
}

// Code returns the error's code.
func (e *APIError) Code() string { return e.Body.Code }

func (c *Client) do(ctx context.Context, method, path string, in, out any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://hive"+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("hive %s: %w", c.Name, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 32<<10))
		e := &APIError{Status: resp.StatusCode, Raw: raw}
		if body, ok := rbee.ErrorFromBody(raw); ok {
			e.Body = body
		} else {
			e.Body = rbee.Error{Code: rbee.CodeInternal, Message: fmt.Sprintf("hive %s: %s %s: status %d: %s", c.Name, method, path, resp.StatusCode, strings.TrimSpace(string(raw)))}
		}
		return nil, e
	}
	if out != nil {
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return nil, fmt.Errorf("hive %s: decode %s: %w", c.Name, path, err)
		}
	}
	return resp, nil
}

// Handshake asks the agent who it is.
func (c *Client) Handshake(ctx context.Context) (Handshake, error) {
	var h Handshake
	_, err := c.do(ctx, "GET", "/v1/handshake", nil, &h)
	return h, err
}

// Devices lists the hive's devices with their free room.
func (c *Client) Devices(ctx context.Context) (Devices, error) {
	var d Devices
	_, err := c.do(ctx, "GET", "/v1/devices", nil, &d)
	return d, err
}

// Reserve asks the VRAM checker for room. A refusal is an *APIError with
// status 409 whose Raw body is a NoRoom.
func (c *Client) Reserve(ctx context.Context, r ReserveRequest) (string, error) {
	resp, err := c.do(ctx, "POST", "/v1/reservations", r, nil)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	return resp.Header.Get(ReservationHeader), nil
}

// Release gives a reservation back.
func (c *Client) Release(ctx context.Context, id string) error {
	resp, err := c.do(ctx, "DELETE", "/v1/reservations/"+url.PathEscape(id), nil, nil)
	if err == nil {
		resp.Body.Close()
	}
	return err
}

// AddModel registers a GGUF file already on the hive.
func (c *Client) AddModel(ctx context.Context, r AddModelRequest) (Model, error) {
	var m Model
	_, err := c.do(ctx, "POST", "/v1/models", r, &m)
	return m, err
}

// Models lists the hive's model catalog.
func (c *Client) Models(ctx context.Context) ([]Model, error) {
	var ms struct {
		Models []Model `json:"models"`
	}
	_, err := c.do(ctx, "GET", "/v1/models", nil, &ms)
	return ms.Models, err
}

// Snapshot reads the hive's devices, workers and models at once.
func (c *Client) Snapshot(ctx context.Context) (Snapshot, error) {
	var s Snapshot
	_, err := c.do(ctx, "GET", "/v1/snapshot", nil, &s)
	return s, err
}

// Workers lists the workers running on the hive.
func (c *Client) Workers(ctx context.Context) ([]rbee.WorkerInfo, error) {
	var w Workers
	_, err := c.do(ctx, "GET", "/v1/workers", nil, &w)
	return w.Workers, err
}

// StartWorker starts or finds the worker for a model and device and keeps
// it loaded for a deployment; it returns when the worker is ready.
func (c *Client) StartWorker(ctx context.Context, r StartWorkerRequest) (rbee.WorkerInfo, error) {
	var w rbee.WorkerInfo
	_, err := c.do(ctx, "POST", "/v1/workers", r, &w)
	return w, err
}

// SetDeployment marks a running worker as kept loaded for a deployment
// ("" = unloaded when idle again).
func (c *Client) SetDeployment(ctx context.Context, worker, deployment string) error {
	resp, err := c.do(ctx, "PUT", "/v1/workers/"+url.PathEscape(worker)+"/deployment", DeploymentRequest{Deployment: deployment}, nil)
	if err == nil {
		resp.Body.Close()
	}
	return err
}

// StopWorker stops a worker.
func (c *Client) StopWorker(ctx context.Context, id string) error {
	resp, err := c.do(ctx, "DELETE", "/v1/workers/"+url.PathEscape(id), nil, nil)
	if err == nil {
		resp.Body.Close()
	}
	return err
}

// KillWorker kills a worker at once (SIGKILL to its process group): a
// split worker whose RPC server is gone can only hang or abort.
func (c *Client) KillWorker(ctx context.Context, id string) error {
	resp, err := c.do(ctx, "DELETE", "/v1/workers/"+url.PathEscape(id)+"?kill=1", nil, nil)
	if err == nil {
		resp.Body.Close()
	}
	return err
}

// Shutdown asks the agent to exit, stopping its workers unless
// keepWorkers (an upgrade: the next agent adopts them).
func (c *Client) Shutdown(ctx context.Context, keepWorkers bool) error {
	resp, err := c.do(ctx, "POST", "/v1/shutdown", ShutdownRequest{KeepWorkers: keepWorkers}, nil)
	if err == nil {
		resp.Body.Close()
	}
	return err
}

// InferRaw runs a prompt and calls send with each event of the hive's
// stream undecoded: its SSE name (the event type) and JSON data, so a relay
// can pass token events on untouched. ctx bounds the whole stream;
// cancelling it stops the generation on the worker.
func (c *Client) InferRaw(ctx context.Context, r InferRequest, send func(name string, data []byte) error) error {
	resp, err := c.do(ctx, "POST", "/v1/infer", r, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if !sse.IsStream(resp) {
		return fmt.Errorf("hive %s: infer: want an event stream, got %q", c.Name, resp.Header.Get("Content-Type"))
	}
	rd := sse.NewReader(resp.Body)
	for err == nil {
		var name string
		var data []byte
		if name, data, err = rd.NextRaw(); err == nil {
			err = send(name, data)
		}
	}
	if errors.Is(err, io.EOF) {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("hive %s: the event stream broke off: %w", c.Name, err)
	}
	return err
}

// Pull asks the hive to download a model; send gets each progress event.
// It returns the model once it is in the hive's catalog.
func (c *Client) Pull(ctx context.Context, r PullRequest, send func(rbee.Event) error) (Model, error) {
	resp, err := c.do(ctx, "POST", "/v1/models/pull", r, nil)
	if err != nil {
		return Model{}, err
	}
	defer resp.Body.Close()
	var (
		m    Model
		got  bool
		fail *rbee.Event
	)
	err = sse.Relay(sse.NewReader(resp.Body), func(ev rbee.Event) error {
		switch {
		case ev.Type == rbee.EventDone && ev.Action == "model_ready":
			if err := json.Unmarshal(ev.Data, &m); err != nil {
				return fmt.Errorf("hive %s: pull result: %w", c.Name, err)
			}
			got = true
			return nil
		case ev.Type == rbee.EventError:
			e := ev
			fail = &e
			return nil
		}
		return send(ev)
	})
	switch {
	case fail != nil:
		return Model{}, &APIError{Status: 0, Body: *fail.Err()}
	case err != nil:
		if ctx.Err() != nil {
			return Model{}, ctx.Err()
		}
		return Model{}, err
	case !got:
		return Model{}, fmt.Errorf("hive %s: the pull ended without a result", c.Name)
	}
	return m, nil
}

// RemoveModel deletes a model from the hive's catalog (and its store).
func (c *Client) RemoveModel(ctx context.Context, key string) error {
	resp, err := c.do(ctx, "DELETE", "/v1/models/"+url.PathEscape(key), nil, nil)
	if err == nil {
		resp.Body.Close()
	}
	return err
}

// InstallEngine installs an engine bundle from a path on the hive.
func (c *Client) InstallEngine(ctx context.Context, source string) (WorkerBinary, error) {
	var wb WorkerBinary
	_, err := c.do(ctx, "POST", "/v1/engines", InstallEngineRequest{Source: source}, &wb)
	return wb, err
}

// WorkerBinaries lists the hive's worker catalog.
func (c *Client) WorkerBinaries(ctx context.Context) ([]WorkerBinary, error) {
	var out struct {
		Workers []WorkerBinary `json:"workers"`
	}
	_, err := c.do(ctx, "GET", "/v1/engines", nil, &out)
	return out.Workers, err
}

// RemoveEngine removes an engine bundle from the hive.
func (c *Client) RemoveEngine(ctx context.Context, id string) error {
	resp, err := c.do(ctx, "DELETE", "/v1/engines/"+url.PathEscape(id), nil, nil)
	if err == nil {
		resp.Body.Close()
	}
	return err
}

// RemoveWorkerType removes an external worker type from the hive.
func (c *Client) RemoveWorkerType(ctx context.Context, name string) error {
	resp, err := c.do(ctx, "DELETE", "/v1/worker-types/"+url.PathEscape(name), nil, nil)
	if err == nil {
		resp.Body.Close()
	}
	return err
}

// AddWorkerType declares an external worker type on the hive.
func (c *Client) AddWorkerType(ctx context.Context, wt WorkerType) error {
	resp, err := c.do(ctx, "POST", "/v1/worker-types", wt, nil)
	if err == nil {
		resp.Body.Close()
	}
	return err
}

// OpenAI passes an OpenAI request body to a worker of the hive (see
// WorkerHeader) and returns the worker's answer as it is: any status, the
// body streamed. The caller closes it. ctx bounds the whole answer.
func (c *Client) OpenAI(ctx context.Context, endpoint string, headers map[string]string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", "http://hive/v1/openai/"+endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		if v != "" {
			req.Header.Set(k, v)
		}
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("hive %s: %w", c.Name, err)
	}
	return resp, nil
}

// RPCServers lists the hive's running RPC servers.
func (c *Client) RPCServers(ctx context.Context) ([]RPCServer, error) {
	var r RPCServers
	_, err := c.do(ctx, "GET", "/v1/rpc", nil, &r)
	return r.RPC, err
}

// TCPPeer says who owns the socket whose local address is local and
// remote address remote on the hive's machine (HOST:PORT each).
func (c *Client) TCPPeer(ctx context.Context, local, remote string) (TCPPeer, error) {
	var p TCPPeer
	q := url.Values{"local": {local}, "remote": {remote}}
	_, err := c.do(ctx, "GET", "/v1/peers/tcp?"+q.Encode(), nil, &p)
	return p, err
}

// WaitWorker returns once worker id has exited, with how it ended (a
// worker unknown to the hive is an *APIError with code worker_not_found).
// ctx bounds the wait.
func (c *Client) WaitWorker(ctx context.Context, id string) (WorkerExit, error) {
	var x WorkerExit
	_, err := c.do(ctx, "GET", "/v1/workers/"+url.PathEscape(id)+"/wait", nil, &x)
	return x, err
}

// RPCLease holds an RPC server on a hive for as long as it is open: the
// hive stops the server when the lease's stream ends.
type RPCLease struct {
	Server RPCServer
	cancel context.CancelFunc
	done   chan struct{}
	err    error // why the lease ended; set before done closes
}

// Done is closed when the lease ended: closed by its owner, the server
// died, or the way to the hive broke. Err says which.
func (l *RPCLease) Done() <-chan struct{} { return l.done }

// Err is nil while the lease holds, and after Close; otherwise it says why
// the server was lost.
func (l *RPCLease) Err() error {
	select {
	case <-l.done:
		return l.err
	default:
		return nil
	}
}

// Close ends the lease (the hive stops the server) and waits for the
// lease's reader.
func (l *RPCLease) Close() {
	l.cancel()
	<-l.done
}

// StartRPC asks the hive for an RPC server and holds it. ctx bounds the
// start only; the lease lives until Close, the server's death, or the
// connection's.
func (c *Client) StartRPC(ctx context.Context, r RPCRequest) (*RPCLease, error) {
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel) // only until it is ready
	defer stop()
	resp, err := c.do(lctx, "POST", "/v1/rpc", r, nil)
	if err != nil {
		cancel()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	l := &RPCLease{cancel: cancel, done: make(chan struct{})}
	ready := make(chan error, 1) // written once
	go func() {
		defer close(l.done)
		defer resp.Body.Close()
		announced := false
		var lost error
		err := sse.Relay(sse.NewReader(resp.Body), func(ev rbee.Event) error {
			switch {
			case ev.Type == rbee.EventError:
				lost = &APIError{Body: *ev.Err()}
			case ev.Action == ActionRPCReady && !announced:
				if err := json.Unmarshal(ev.Data, &l.Server); err != nil {
					return fmt.Errorf("hive %s: rpc server: %w", c.Name, err)
				}
				announced = true
				ready <- nil
			}
			return nil
		})
		switch {
		case lost != nil:
			err = lost
		case lctx.Err() != nil:
			err = nil // closed by its owner
		case err == nil:
			err = fmt.Errorf("hive %s: the RPC server's lease ended", c.Name)
		default:
			err = fmt.Errorf("hive %s: the RPC server's lease broke: %w", c.Name, err)
		}
		l.err = err
		if !announced {
			if err == nil {
				err = lctx.Err()
			}
			ready <- err
		}
	}()
	if err := <-ready; err != nil {
		l.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	return l, nil
}
