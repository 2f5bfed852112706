package queenapi

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

// Client talks to one queen. Safe for concurrent use.
type Client struct {
	// Where names the queen for messages: the socket path or host:port.
	Where string
	hc    *http.Client
	base  string
	token string
}

// Unix returns a client for the queen's control socket: the owner's way in.
func Unix(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	return &Client{Where: path, hc: &http.Client{Transport: tr}, base: "http://queen"}
}

// TCP returns a client for the queen at addr. Its control routes answer
// only with the queen's bearer token; without one only /health does.
func TCP(addr, token string) *Client {
	return &Client{Where: addr, hc: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}, base: "http://" + addr, token: token}
}

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// APIError is an error answer of the queen: the HTTP status and rbee's
// error shape (code, message, hint). It unwraps to the *rbee.Error.
type APIError struct {
	Status int
	Err    rbee.Error
}

func (e *APIError) Error() string { return e.Err.Message }

// Unwrap returns the *rbee.Error, so rbee.CodeOf and HintOf see it.
func (e *APIError) Unwrap() error { return &e.Err }

// ErrUnreachable wraps a failure to connect: nothing listens there.
var ErrUnreachable = errors.New("queen unreachable")

func (c *Client) request(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil, fmt.Errorf("queen at %s: %w: %w", c.Where, ErrUnreachable, err)
		}
		return nil, fmt.Errorf("queen at %s: %w", c.Where, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 32<<10))
		e := &APIError{Status: resp.StatusCode}
		if body, ok := rbee.ErrorFromBody(raw); ok {
			e.Err = body
		} else {
			e.Err = rbee.Error{Code: rbee.CodeQueenDown, Message: fmt.Sprintf("queen at %s: %s %s: status %d: %s", c.Where, method, path, resp.StatusCode, strings.TrimSpace(string(raw)))}
		}
		return nil, e
	}
	return resp, nil
}

func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.request(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("queen at %s: decode %s: %w", c.Where, path, err)
	}
	return nil
}

// Health asks the queen how it is. ctx bounds the call.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	if err := c.call(ctx, "GET", "/health", nil, &h); err != nil {
		return h, err
	}
	if h.Service != ServiceName {
		return h, fmt.Errorf("%w: %s answers /health, but not as an rbee queen", ErrNotQueen, c.Where)
	}
	return h, nil
}

// ErrNotQueen means something other than a queen answers.
var ErrNotQueen = errors.New("not a queen")

// Stream is a running operation's event stream (a job, a hive add, a
// pull). Next returns events until io.EOF; Close ends it early, which
// cancels the operation on the queen.
type Stream struct {
	resp *http.Response
	r    *sse.Reader
}

// Next returns the next event; io.EOF when the stream ended cleanly,
// io.ErrUnexpectedEOF when it broke off.
func (s *Stream) Next() (rbee.Event, error) { return s.r.Next() }

// Close ends the stream.
func (s *Stream) Close() error { return s.resp.Body.Close() }

func (c *Client) stream(ctx context.Context, path string, in any) (*Stream, error) {
	resp, err := c.request(ctx, "POST", path, in)
	if err != nil {
		return nil, err
	}
	if !sse.IsStream(resp) {
		resp.Body.Close()
		return nil, fmt.Errorf("queen at %s: %s: want an event stream, got %q", c.Where, path, resp.Header.Get("Content-Type"))
	}
	return &Stream{resp: resp, r: sse.NewReader(resp.Body)}, nil
}

// Job submits a job; ctx bounds the whole stream.
func (c *Client) Job(ctx context.Context, r JobRequest) (*Stream, error) {
	return c.stream(ctx, "/v1/jobs", r)
}

// CancelJob cancels a running job.
func (c *Client) CancelJob(ctx context.Context, id string) error {
	return c.call(ctx, "DELETE", "/v1/jobs/"+url.PathEscape(id), nil, nil)
}

// AddHive adds (or re-checks) a hive; the stream narrates the install.
func (c *Client) AddHive(ctx context.Context, r AddHiveRequest) (*Stream, error) {
	return c.stream(ctx, "/v1/hives", r)
}

// Up connects every hive of the inventory; one event per hive.
func (c *Client) Up(ctx context.Context, r UpRequest) (*Stream, error) {
	return c.stream(ctx, "/v1/up", r)
}

// Hives lists the hives the queen knows, from its catalog and inventory,
// without contacting them.
func (c *Client) Hives(ctx context.Context) ([]HiveInfo, error) {
	var out Hives
	err := c.call(ctx, "GET", "/v1/hives", nil, &out)
	return out.Hives, err
}

// HiveStatus contacts a hive now and reports it with its workers.
func (c *Client) HiveStatus(ctx context.Context, name string) (HiveInfo, error) {
	var out HiveInfo
	err := c.call(ctx, "GET", "/v1/hives/"+url.PathEscape(name), nil, &out)
	return out, err
}

// RemoveHive forgets a hive; purge also stops its agent and removes
// ~/.rbee on the host.
func (c *Client) RemoveHive(ctx context.Context, name string, purge bool) error {
	p := "/v1/hives/" + url.PathEscape(name)
	if purge {
		p += "?purge=1"
	}
	return c.call(ctx, "DELETE", p, nil, nil)
}

// HiveLogs returns the end of a hive agent's log.
func (c *Client) HiveLogs(ctx context.Context, name string) ([]byte, error) {
	resp, err := c.request(ctx, "GET", "/v1/hives/"+url.PathEscape(name)+"/logs", nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("queen at %s: hive logs: %w", c.Where, err)
	}
	return b, nil
}

func hiveQuery(hive string) string {
	if hive == "" {
		return ""
	}
	return "?hive=" + url.QueryEscape(hive)
}

// PullModel has a hive download a model; the stream carries the progress.
func (c *Client) PullModel(ctx context.Context, r PullRequest) (*Stream, error) {
	return c.stream(ctx, "/v1/models/pull", r)
}

// Models lists a hive's model catalog ("" = this machine's hive).
func (c *Client) Models(ctx context.Context, hive string) (Models, error) {
	var out Models
	err := c.call(ctx, "GET", "/v1/catalog"+hiveQuery(hive), nil, &out)
	return out, err
}

// Deploy declares (or changes) a deployment; its replicas start in the
// background (Deployments shows them).
func (c *Client) Deploy(ctx context.Context, r DeployRequest) error {
	return c.call(ctx, "PUT", "/v1/deployments/"+url.PathEscape(r.Name), r, nil)
}

// Undeploy removes a deployment; its workers go back to the keep-alive.
func (c *Client) Undeploy(ctx context.Context, name string) error {
	return c.call(ctx, "DELETE", "/v1/deployments/"+url.PathEscape(name), nil, nil)
}

// Deployments lists the deployments with their replicas.
func (c *Client) Deployments(ctx context.Context) (Deployments, error) {
	var out Deployments
	err := c.call(ctx, "GET", "/v1/deployments", nil, &out)
	return out, err
}

// RemoveModel removes a model (by id, alias or ref) from a hive.
func (c *Client) RemoveModel(ctx context.Context, hive, key string) error {
	return c.call(ctx, "DELETE", "/v1/models/"+url.PathEscape(key)+hiveQuery(hive), nil, nil)
}

// InstallEngine installs an engine bundle on a hive.
func (c *Client) InstallEngine(ctx context.Context, r InstallEngineRequest) (*Stream, error) {
	return c.stream(ctx, "/v1/engines", r)
}

// Engines lists a hive's worker catalog.
func (c *Client) Engines(ctx context.Context, hive string) (Engines, error) {
	var out Engines
	err := c.call(ctx, "GET", "/v1/engines"+hiveQuery(hive), nil, &out)
	return out, err
}

// RemoveEngine removes an engine bundle from a hive.
func (c *Client) RemoveEngine(ctx context.Context, hive, id string) error {
	return c.call(ctx, "DELETE", "/v1/engines/"+url.PathEscape(id)+hiveQuery(hive), nil, nil)
}

// RemoveWorkerType removes an external worker type from a hive.
func (c *Client) RemoveWorkerType(ctx context.Context, hive, name string) error {
	return c.call(ctx, "DELETE", "/v1/worker-types/"+url.PathEscape(name)+hiveQuery(hive), nil, nil)
}

// AddWorkerType declares an external worker type on a hive.
func (c *Client) AddWorkerType(ctx context.Context, r AddWorkerTypeRequest) error {
	return c.call(ctx, "POST", "/v1/worker-types", r, nil)
}

// Workers lists the queen's worker registry.
func (c *Client) Workers(ctx context.Context) ([]rbee.WorkerInfo, error) {
	var out Workers
	err := c.call(ctx, "GET", "/v1/workers", nil, &out)
	return out.Workers, err
}

// Shutdown asks the queen to stop (in cascade: the local hive it started
// and its workers). It returns once the queen took the request.
func (c *Client) Shutdown(ctx context.Context) error {
	return c.call(ctx, "POST", "/v1/shutdown", nil, nil)
}

// Handover asks the queen to stop for a newer one: this machine's hive
// agent hands its workers over (the next agent adopts them) instead of
// stopping them. A queen older than this call stops them.
func (c *Client) Handover(ctx context.Context) error {
	return c.call(ctx, "POST", "/v1/shutdown?handover=1", nil, nil)
}

// Ps lists every worker across the fleet, asking each hive now.
func (c *Client) Ps(ctx context.Context) (Processes, error) {
	var out Processes
	err := c.call(ctx, "GET", "/v1/ps", nil, &out)
	return out, err
}

// Top returns the fleet as the queen knows it now (no hive is asked).
func (c *Client) Top(ctx context.Context) (Top, error) {
	var out Top
	err := c.call(ctx, "GET", "/v1/top", nil, &out)
	return out, err
}
