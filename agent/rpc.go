package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/internal/peer"
	"github.com/rbee-dev/rbee/sse"
	"github.com/rbee-dev/rbee/supervisor"
)

// rpcBackends are the bundle backends an RPC server needs.
var rpcBackends = []string{"rpc"}

var (
	deviceID = regexp.MustCompile(`^(cpu|gpu[0-9]{1,3})$`)
	// A split worker reaches RPC servers on this host's loopback only: the
	// forwards the queen holds, or this hive's own RPC server.
	rpcEndpoint = regexp.MustCompile(`^127\.0\.0\.1:[1-9][0-9]{0,4}$`)
)

// checkRPC refuses a split worker's endpoints that are not this host's
// loopback, and a split with an external engine.
func checkRPC(req hiveapi.InferRequest) error {
	if len(req.RPC) == 0 {
		return nil
	}
	if req.WorkerType != "" {
		return fmt.Errorf("infer: worker type %s cannot offload to RPC servers", req.WorkerType)
	}
	if req.Worker != "" {
		return fmt.Errorf("infer: a warm worker and RPC servers: give one")
	}
	for _, ep := range req.RPC {
		if !rpcEndpoint.MatchString(ep) {
			return fmt.Errorf("infer: RPC endpoint %q: want 127.0.0.1:PORT (a loopback forward)", ep)
		}
	}
	if n := len(req.TensorSplit); n > 0 && n != len(req.RPC)+1 {
		return fmt.Errorf("infer: %d tensor-split shares for %d devices: give this hive's first, then one per RPC server", n, len(req.RPC)+1)
	}
	for _, f := range req.TensorSplit {
		if !(f >= 0) || math.IsInf(f, 0) {
			return fmt.Errorf("infer: tensor-split share %v: want a number ≥ 0", f)
		}
	}
	return nil
}

// rpcStartError says why an RPC server did not start, naming this hive; a
// bundle without rpc-server, or one damaged since it was installed, is the
// engine's fault, with the command that installs a good one.
func (a *Agent) rpcStartError(engine string, err error) error {
	if errors.Is(err, supervisor.ErrNoRPCServer) {
		return (&rbee.Error{Code: rbee.CodeEngine, Err: err, Message: fmt.Sprintf("hive %s: %v", a.cfg.Name, err)}).
			WithHint(a.rpcInstallHint())
	}
	if err := a.engineFault(engine, err); rbee.CodeOf(err) == rbee.CodeEngine {
		return err
	}
	return fmt.Errorf("hive %s: %w", a.cfg.Name, err)
}

// RPCCacheDir is where llama.cpp's RPC servers keep the tensors they were
// sent (rpc-server -c), so the next load of the same model on this host
// skips the transfer.
func RPCCacheDir(home string) string { return filepath.Join(home, "rpc-cache") }

// rpcLease serves POST /v1/rpc: it starts llama.cpp's RPC server on
// 127.0.0.1 and holds it for as long as the request lasts (the queen's
// lease). The stream's first event says where it listens; if the server
// dies, an error event says why. When the request ends — the queen closed
// it, or the SSH connection carrying it broke — the server is stopped.
func (a *Agent) rpcLease(w http.ResponseWriter, r *http.Request) {
	var req hiveapi.RPCRequest
	if !readJSON(w, r, &req) {
		return
	}
	if !deviceID.MatchString(req.Device) {
		writeErr(w, http.StatusBadRequest, rbee.CodeBadRequest, fmt.Sprintf("rpc: device %q: want cpu or gpuN", req.Device))
		return
	}
	ctx := r.Context()
	me := actor(a.cfg.Name)
	sw := sse.NewWriter(w)
	defer sw.Close()
	send := func(ev rbee.Event) error {
		ev.Job = req.Job
		if ev.Actor == "" {
			ev.Actor = me
		}
		return sw.Send(ev)
	}
	engine := a.installedEngine(ctx, rpcBackends)
	if engine == "" {
		var err error
		if engine, err = a.pickEngine(ctx, req.Device, "", send); err != nil {
			if req.Reservation != "" {
				a.vram.release(req.Reservation)
			}
			_ = send(rbee.FailErr(me, err))
			return
		}
	}
	rs, err := a.sup.StartRPC(ctx, supervisor.RPCSpec{Engine: engine, Device: req.Device, CacheDir: RPCCacheDir(a.cfg.Home),
		Reservation: req.Reservation, Job: req.Job})
	if err != nil {
		if req.Reservation != "" {
			a.vram.release(req.Reservation)
		}
		if ctx.Err() == nil {
			_ = send(rbee.FailErr(me, a.rpcStartError(engine, err)))
		}
		return
	}
	info := rs.Info()
	relay, err := a.rpcRelay(info, rs.Dial)
	if err != nil {
		rs.Stop(5 * time.Second)
		_ = send(rbee.FailErr(me, fmt.Errorf("hive %s: %w", a.cfg.Name, err)))
		return
	}
	defer relay.close()
	info.Socket = relay.path
	ev := rbee.Narrate(me, hiveapi.ActionRPCReady, fmt.Sprintf("RPC server %s is up (pid %d, %s), reached only through this hive's socket", info.ID, info.PID, info.Device))
	ev.Data, _ = json.Marshal(info)
	if send(ev) != nil {
		rs.Stop(5 * time.Second)
		return
	}
	// The relay goes before the server (and before the lease's end is
	// said): once the server is gone, so is its socket.
	select {
	case <-rs.Exited():
		relay.close()
		_ = send(rbee.Fail(me, rbee.CodeWorkerCrashed, fmt.Sprintf("hive %s: %s", a.cfg.Name, rs.ExitReason())))
	case <-ctx.Done():
		a.log.Info("rpc lease ended", "id", info.ID, "job", req.Job)
		relay.close()
		rs.Stop(5 * time.Second)
	case <-a.ctx.Done():
		relay.close()
		rs.Stop(5 * time.Second)
	}
}

func (a *Agent) rpcList(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, hiveapi.RPCServers{RPC: a.sup.RPCServers()})
}

// waitWorker serves GET /v1/workers/{id}/wait: it answers once the worker
// has exited (the queen ends a split's forwards and RPC servers then).
func (a *Agent) waitWorker(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	wp, ok := a.sup.Lookup(id)
	if !ok {
		writeErr(w, http.StatusNotFound, rbee.CodeWorkerNotFound, fmt.Sprintf("no worker %s on hive %s", id, a.cfg.Name))
		return
	}
	select {
	case <-wp.Exited():
		writeJSON(w, http.StatusOK, hiveapi.WorkerExit{ID: id, Reason: wp.ExitReason()})
	case <-r.Context().Done():
	case <-a.ctx.Done():
		writeErr(w, http.StatusServiceUnavailable, rbee.CodeHiveDown, fmt.Sprintf("hive %s is shutting down", a.cfg.Name))
	}
}

// relay is a unix socket whose connections are carried to an RPC
// server's loopback port, for the queen's streamlocal dials.
type relay struct {
	path string
	ln   net.Listener
	wg   sync.WaitGroup
	once sync.Once
	mu   sync.Mutex
	open map[net.Conn]struct{}
}

// rpcRelay listens on run/<id>.sock (0600, this user only) and carries
// each connection to the RPC server through dial (its sandbox's socket, or
// its port). close stops it and waits for its goroutines.
func (a *Agent) rpcRelay(info hiveapi.RPCServer, dial func(context.Context) (net.Conn, error)) (*relay, error) {
	path := filepath.Join(rbee.Home(a.cfg.Home).RunDir(), info.ID+".sock")
	_ = os.Remove(path)
	ln, err := listenPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("rpc relay: %w", err)
	}
	r := &relay{path: path, ln: ln, open: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			// The RPC server runs llama.cpp's unauthenticated protocol:
			// only the owner (sshd's forward runs as the owner) reaches it.
			if uid, err := peer.UID(down); err != nil || !peer.Allowed(uid) {
				a.log.Warn("rpc relay: refused a connection of another user", "server", info.ID, "uid", uid)
				down.Close()
				continue
			}
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				r.carry(down, dial)
			}()
		}
	}()
	return r, nil
}

func (r *relay) track(c net.Conn, on bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.open == nil {
		return false // closed
	}
	if on {
		r.open[c] = struct{}{}
	} else {
		delete(r.open, c)
	}
	return true
}

func (r *relay) carry(down net.Conn, dial func(context.Context) (net.Conn, error)) {
	defer down.Close()
	up, err := dial(context.Background()) // TCP: Go sets TCP_NODELAY
	if err != nil {
		return
	}
	defer up.Close()
	if !r.track(down, true) || !r.track(up, true) {
		return
	}
	defer r.track(down, false)
	defer r.track(up, false)
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(up, down)
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(down, up)
		done <- struct{}{}
	}()
	<-done // either side ending ends both
	up.Close()
	down.Close()
	<-done
}

func (r *relay) close() { r.once.Do(r.closeOnce) }

func (r *relay) closeOnce() {
	r.ln.Close()
	r.mu.Lock()
	for c := range r.open {
		c.Close()
	}
	r.open = nil
	r.mu.Unlock()
	r.wg.Wait()
	_ = os.Remove(r.path)
}
