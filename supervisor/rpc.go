package supervisor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/internal/proc"
	"github.com/rbee-dev/rbee/poll"
)

// RPCServerBin is llama.cpp's RPC server inside an engine bundle.
const RPCServerBin = "rpc-server"

// rpcHost is the only address an RPC server is ever bound to. llama.cpp's
// RPC protocol has no authentication: reachable from a network, it would
// let anyone run code-sized buffers through the host. rbee reaches it
// through SSH forwards only.
const rpcHost = "127.0.0.1"

// ErrNoRPCServer: the engine bundle has no rpc-server.
var ErrNoRPCServer = errors.New("the engine bundle has no rpc-server")

// RPCSpec is what an RPC server is started with.
type RPCSpec struct {
	Engine      string // engine bundle directory; "" = Config.Engine
	Device      string // "cpu" or "gpuN"
	CacheDir    string // llama.cpp's tensor cache (-c); "" = no cache
	Reservation string // the room it takes over; "" = none
	Job         string // the job it serves, for its log
}

// RPCServer is one llama.cpp rpc-server process.
type RPCServer struct {
	proc *proc.Proc
	info hiveapi.RPCServer
	// network and addr are where it is reached on this machine: the
	// sandbox's unix socket, or 127.0.0.1:port without one.
	network, addr string
}

// Dial connects to the server (through its sandbox when it has one).
func (r *RPCServer) Dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, r.network, r.addr)
}

// Info describes it.
func (r *RPCServer) Info() hiveapi.RPCServer { return r.info }

// Exited is closed when the process has exited.
func (r *RPCServer) Exited() <-chan struct{} { return r.proc.Exited() }

// ExitReason says how it ended, with the last line of its log; it waits
// for the exit.
func (r *RPCServer) ExitReason() string {
	<-r.proc.Exited()
	msg := fmt.Sprintf("RPC server %s (pid %d) exited", r.info.ID, r.info.PID)
	if err := r.proc.Err(); err != nil {
		msg += ": " + err.Error()
	}
	if t := proc.LastLine(r.proc.Log); t != "" {
		msg += ": " + t
	}
	return msg
}

// Stop stops it (SIGTERM, then a kill after grace) and returns once it is
// gone.
func (r *RPCServer) Stop(grace time.Duration) { r.proc.Stop(grace) }

// rpcState is the supervisor's table of RPC servers.
type rpcState struct {
	mu   sync.Mutex
	byID map[string]*RPCServer
}

// StartRPC starts llama.cpp's rpc-server from the engine bundle, bound to
// 127.0.0.1 on a free port, and waits until it accepts connections (ctx
// and Config.ReadyTimeout bound the wait). On failure the process is gone.
func (s *Supervisor) StartRPC(ctx context.Context, spec RPCSpec) (*RPCServer, error) {
	engine := spec.Engine
	if engine == "" {
		engine = s.cfg.Engine
	}
	bin := filepath.Join(engine, RPCServerBin)
	if st, err := os.Stat(bin); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return nil, rbee.Errorf(rbee.CodeEngine, "%w (%s)", ErrNoRPCServer, bin).
			WithHint("install an engine bundle built with the RPC backend (make engine builds one)")
	}
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("start rpc-server: %w", err)
	}
	id := s.newID("rpc")
	args := []string{"-H", rpcHost, "-p", strconv.Itoa(port)}
	env := append(os.Environ(), "GGML_NO_BACKTRACE=1", "LD_LIBRARY_PATH="+joinPath(engine, os.Getenv("LD_LIBRARY_PATH")))
	if spec.CacheDir != "" {
		if err := os.MkdirAll(spec.CacheDir, 0o700); err != nil {
			return nil, fmt.Errorf("start rpc-server: cache: %w", err)
		}
		args = append(args, "-c")
		env = append(env, "LLAMA_CACHE="+spec.CacheDir)
	}
	if spec.Device == "cpu" {
		env = append(env, "CUDA_VISIBLE_DEVICES=")
		// rpc-server's own default is one thread.
		args = append(args, "-t", strconv.Itoa(cmp.Or(s.cfg.Threads, runtime.NumCPU())))
	} else if idx, ok := strings.CutPrefix(spec.Device, "gpu"); ok {
		env = append(env, "CUDA_DEVICE_ORDER=PCI_BUS_ID", "CUDA_VISIBLE_DEVICES="+idx)
	}
	logPath := filepath.Join(s.cfg.LogDir, id+".log")
	network, addr := "tcp", net.JoinHostPort(rpcHost, strconv.Itoa(port))
	opts := proc.Options{Log: logPath, Env: env, Setpgid: true}
	if s.cfg.Sandbox != "" {
		// Its 127.0.0.1 is a namespace's own: only the sandbox's 0600
		// socket, for this user, leads to it.
		network, addr = "unix", filepath.Join(s.cfg.RunDir, id+".rpc")
		args = append([]string{SandboxCommand, "--socket", addr, "--port", strconv.Itoa(port), "--", bin}, args...)
		bin, opts.Isolate = s.cfg.Sandbox, true
	}
	p, err := proc.Start(bin, args, opts)
	if err != nil {
		if opts.Isolate && (errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSPC)) {
			return nil, rbee.Errorf(rbee.CodeWorkerFailed, "start rpc-server: this host does not let rbee give it a network namespace of its own (%w), and on the host's loopback any local user could drive it", err).
				WithHint("allow unprivileged user namespaces on the host (sysctl kernel.unprivileged_userns_clone=1; Ubuntu 24.04: kernel.apparmor_restrict_unprivileged_userns=0), or leave this host out of --split")
		}
		return nil, rbee.Errorf(rbee.CodeWorkerFailed, "start rpc-server: %w", err)
	}
	r := &RPCServer{proc: p, network: network, addr: addr,
		info: hiveapi.RPCServer{ID: id, Port: port, PID: p.PID(), Device: spec.Device, Job: spec.Job, Started: time.Now()}}
	s.trackRPC(r, spec.Reservation)

	err = poll.Until(ctx, poll.Config{Initial: 5 * time.Millisecond, Max: 200 * time.Millisecond, MaxAttempts: 10000, Timeout: s.cfg.ReadyTimeout},
		func(ctx context.Context) (bool, error) {
			select {
			case <-p.Exited():
				return false, poll.Permanent(rbee.Errorf(rbee.CodeWorkerFailed, "%s", r.ExitReason()))
			default:
			}
			c, err := r.Dial(ctx)
			if err != nil {
				return false, err
			}
			c.Close()
			return true, nil
		})
	if err != nil {
		p.Stop(5 * time.Second)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, rbee.Errorf(rbee.CodeWorkerFailed, "rpc-server did not listen on %s: %w (log: %s)", addr, err, logPath)
	}
	s.cfg.Reservations.Loaded(id)
	s.cfg.Log.Info("rpc server ready", "id", id, "pid", p.PID(), "port", port, "device", spec.Device, "job", spec.Job)
	return r, nil
}

func (s *Supervisor) trackRPC(r *RPCServer, reservation string) {
	if reservation != "" {
		s.cfg.Reservations.Attach(reservation, r.info.ID)
	}
	s.rpc.mu.Lock()
	if s.rpc.byID == nil {
		s.rpc.byID = map[string]*RPCServer{}
	}
	s.rpc.byID[r.info.ID] = r
	s.rpc.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		<-r.proc.Exited()
		s.rpc.mu.Lock()
		delete(s.rpc.byID, r.info.ID)
		s.rpc.mu.Unlock()
		s.cfg.Reservations.ReleaseWorker(r.info.ID)
		s.cfg.Log.Info("rpc server exited", "id", r.info.ID, "pid", r.info.PID, "err", r.proc.Err())
	}()
}

// RPCServers lists the running RPC servers, oldest first.
func (s *Supervisor) RPCServers() []hiveapi.RPCServer {
	s.rpc.mu.Lock()
	defer s.rpc.mu.Unlock()
	out := make([]hiveapi.RPCServer, 0, len(s.rpc.byID))
	for _, r := range s.rpc.byID {
		out = append(out, r.info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out
}

// stopRPC stops every RPC server and waits for them.
func (s *Supervisor) stopRPC(grace time.Duration) {
	s.rpc.mu.Lock()
	rs := make([]*RPCServer, 0, len(s.rpc.byID))
	for _, r := range s.rpc.byID {
		rs = append(rs, r)
	}
	s.rpc.mu.Unlock()
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Go(func() { r.proc.Stop(grace) })
	}
	wg.Wait()
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(rpcHost, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func joinPath(dir, rest string) string {
	if rest == "" {
		return dir
	}
	return dir + string(os.PathListSeparator) + rest
}
