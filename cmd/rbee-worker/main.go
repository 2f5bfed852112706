package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alecthomas/kong"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/bundle"
	"github.com/rbee-dev/rbee/llm"
	"github.com/rbee-dev/rbee/worker"
)

type cli struct {
	Model   string        `type:"path" help:"GGUF model file to serve (required unless --list-devices)."`
	Engine  string        `required:"" type:"path" env:"RBEE_ENGINE" help:"Engine bundle directory (llama.cpp shared libraries; make engine builds one)."`
	Listen  string        `default:"127.0.0.1:0" help:"Loopback host:port (port 0 picks a free port, announced on stdout), or a unix socket path (unix:PATH or an absolute path)."`
	Device  string        `default:"auto" help:"auto (first GPU, else CPU), cpu, or an engine device name such as CUDA0; several GPUs of this host (Vulkan0,Vulkan1) split the model's layers across them (by free memory, or --tensor-split)."`
	Threads int           `help:"Threads of the process's one compute thread pool; 0 = one per physical core (llama.cpp's default). ggml threads spin: match free cores."`
	CtxSize int           `name:"ctx-size" help:"Context size in tokens per slot; 0 = sized to the device: the model's training context, at most 4096, less if memory is short (docs/worker.md)."`
	Slots   int           `help:"Requests generated in parallel, decoded together in one batch per step (one shared context, ctx-size tokens each); 0 = sized to the device's free memory, 1 to 4 on a CPU, 1 to 8 on a GPU (docs/worker.md)."`
	Embed   bool          `name:"embeddings" help:"Serve POST /v1/embeddings (pooled, normalised vectors) instead of completions."`
	Queue   int           `default:"8" help:"Requests that may wait for a free slot; beyond that the worker answers 503 with Retry-After."`
	ID      string        `help:"Worker id, reported by /health and in logs."`
	Alias   string        `help:"Model name in responses (default: the file name without .gguf)."`
	Grace   time.Duration `default:"10s" help:"On SIGTERM or SIGINT, how long running requests may finish before their streams are cut."`
	RPC     string        `name:"rpc" placeholder:"HOST:PORT[,HOST:PORT...]" help:"Split the model's layers over llama.cpp RPC servers (rpc-server of the same engine bundle) beside --device. The worker dies when one is lost."`
	Split   string        `name:"tensor-split" placeholder:"F,F,..." help:"With several --device GPUs or --rpc: each device's share of the layers, --device first, then each RPC server's devices in order (e.g. 1,1,2); default: by free memory."`

	// ListDevices is how a hive learns what the bundle's backends see
	// (Vulkan, CUDA, ...): rbee-hive runs it once per bundle.
	ListDevices bool `name:"list-devices" help:"Print the devices the engine's backends report (JSON, one object per line) and exit."`

	Version kong.VersionFlag `help:"Print the version and exit."`
}

// announce is a line on stdout for the parent process.
type announce struct {
	Event   string `json:"event"` // "listening" or "ready"
	Network string `json:"network,omitempty"`
	Address string `json:"address,omitempty"`
	PID     int    `json:"pid"`
	ID      string `json:"id,omitempty"`
	Device  string `json:"device,omitempty"`
}

func main() {
	var c cli
	parser, err := kong.New(&c,
		kong.Name("rbee-worker"),
		kong.Description("Serve one GGUF model over an OpenAI-compatible HTTP API (started by rbee-hive)."),
		kong.Vars{"version": rbee.Version},
	)
	if err != nil {
		panic(err) // a bug in the flag definitions
	}
	if _, err := parser.Parse(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "rbee-worker: %v\nhint: rbee-worker --help lists the flags\n", err)
		os.Exit(2)
	}
	if c.Model == "" && !c.ListDevices {
		fmt.Fprintf(os.Stderr, "rbee-worker: missing flags: --model=STRING (the GGUF file to serve)\nhint: rbee-worker --help lists the flags\n")
		os.Exit(2)
	}
	if err := run(c); err != nil {
		fmt.Fprintf(os.Stderr, "rbee-worker: %v\n", err)
		os.Exit(1)
	}
}

func run(c cli) error {
	// The hive may hand this worker over to a newer agent and exit: a write
	// to a stdout nobody reads must fail, not kill the worker.
	signal.Ignore(syscall.SIGPIPE)
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("worker", c.ID)
	// Everything that can be checked is checked before the port is opened.
	if err := llm.Preflight(c.Engine); err != nil {
		return err
	}
	if c.ListDevices {
		return listDevices(c.Engine)
	}
	if err := llm.CheckGGUF(c.Model); err != nil {
		return err
	}
	if c.Slots < 0 || c.Queue < 0 || c.Threads < 0 || c.CtxSize < 0 {
		return errors.New("--slots, --queue, --threads and --ctx-size must not be negative")
	}
	rpc, split, err := splitFlags(c.Device, c.RPC, c.Split)
	if err != nil {
		return err
	}
	version := "unknown"
	if m, err := bundle.Validate(c.Engine); err == nil {
		version = m.Version
	} else if !errors.Is(err, bundle.ErrNotBundle) {
		return fmt.Errorf("engine: %w", err)
	}

	ln, network, err := listen(c.Listen)
	if err != nil {
		return err
	}
	srv := worker.New(worker.Config{
		ModelPath: c.Model, ModelName: c.Alias, EngineDir: c.Engine, EngineVersion: version,
		Device: c.Device, CtxSize: c.CtxSize, Threads: c.Threads, Slots: c.Slots, Queue: c.Queue, ID: c.ID, Log: log,
		Embeddings: c.Embed, RPC: rpc, Split: split,
	})
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	serveErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			serveErr <- err
		}
	}()
	defer wg.Wait()
	say(announce{Event: "listening", Network: network, Address: ln.Addr().String(), PID: os.Getpid(), ID: c.ID})

	sig, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	loaded := make(chan error, 1)
	start := time.Now()
	go func() {
		// llama.cpp cannot be interrupted; abandoned on a signal. The
		// timeout bounds reaching the RPC servers only.
		ctx, cancel := context.WithTimeout(sig, rpcConnectTimeout)
		defer cancel()
		loaded <- srv.Load(ctx)
	}()
	select {
	case err := <-loaded:
		if err != nil {
			hs.Close()
			return err
		}
	case <-sig.Done():
		hs.Close()
		return errors.New("interrupted while loading the model")
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	}
	m := srv.Model()
	log.Info("ready", "model", c.Model, "device", m.Device, "ctx_size", m.CtxSize, "threads", m.Threads,
		"slots", m.Slots(), "embeddings", c.Embed, "engine_version", version, "load_ms", time.Since(start).Milliseconds(),
		"placement", placement(m.Placement))
	say(announce{Event: "ready", Network: network, Address: ln.Addr().String(), PID: os.Getpid(), ID: c.ID, Device: m.Device})

	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	lost := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.WatchRPC(watchCtx); err != nil {
			lost <- err
		}
	}()
	select {
	case <-sig.Done():
	case err := <-serveErr:
		srv.Close()
		return fmt.Errorf("serve: %w", err)
	case err := <-lost:
		// Freeing the model would talk to the lost server, and llama.cpp
		// aborts on that: the process ends with the model as it is.
		hs.Close()
		log.Error("rpc server lost", "err", err)
		return err
	}
	stopWatch()
	log.Info("shutting down", "grace", c.Grace)
	// Let running requests finish within the grace period, then cut them.
	ctx, cancel := context.WithTimeout(context.Background(), c.Grace)
	defer cancel()
	if err := hs.Shutdown(ctx); err != nil {
		srv.Cut()
		ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel2()
		if err := hs.Shutdown(ctx2); err != nil {
			hs.Close()
		}
	}
	srv.Close()
	if network == "unix" {
		os.Remove(ln.Addr().String())
	}
	return nil
}

// listDevices prints the engine's devices, one JSON object a line.
func listDevices(engine string) error {
	e, err := llm.Load(engine)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	for _, d := range e.Devices() {
		if err := enc.Encode(d); err != nil {
			return fmt.Errorf("list devices: %w", err)
		}
	}
	return nil
}

// rpcConnectTimeout bounds connecting to the --rpc servers.
const rpcConnectTimeout = 10 * time.Second

// splitFlags parses --rpc and --tensor-split; device is --device, which
// may name several of this host's GPUs ("Vulkan0,Vulkan1").
func splitFlags(device, rpc, split string) ([]string, []float64, error) {
	local := strings.Count(device, ",") + 1
	if local > 1 && rpc != "" {
		return nil, nil, errors.New("--device names several devices and --rpc is set: split across this host's GPUs or over rpc servers, not both")
	}
	var eps []string
	if rpc == "" {
		if split != "" && local == 1 {
			return nil, nil, errors.New("--tensor-split needs --rpc or several devices in --device: it shares the layers between devices")
		}
	} else {
		var err error
		if eps, err = llm.ParseEndpoints(rpc); err != nil {
			return nil, nil, fmt.Errorf("--rpc: %w", err)
		}
	}
	if split == "" {
		return eps, nil, nil
	}
	var shares []float64
	sum := 0.0
	for f := range strings.SplitSeq(split, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
			return nil, nil, fmt.Errorf("--tensor-split %q: %q is not a number ≥ 0", split, f)
		}
		shares = append(shares, v)
		sum += v
	}
	if sum == 0 {
		return nil, nil, fmt.Errorf("--tensor-split %q: every share is 0", split)
	}
	if local > 1 && len(shares) != local {
		return nil, nil, fmt.Errorf("--tensor-split %q: %d shares for %d devices (%s); give one per device", split, len(shares), local, device)
	}
	if len(shares) < 1+len(eps) {
		return nil, nil, fmt.Errorf("--tensor-split %q: %d shares for this device and %d rpc servers; give one per device, this one first", split, len(shares), len(eps))
	}
	return eps, shares, nil
}

// placement says which device holds how many layers: "CPU:4 RPC0@127.0.0.1:50052:4+out".
func placement(ps []llm.Placement) string {
	var parts []string
	for _, p := range ps {
		s := p.Device
		if p.Endpoint != "" {
			s += "@" + p.Endpoint
		}
		s += ":" + strconv.Itoa(p.Layers)
		if p.Output {
			s += "+out"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

func say(a announce) {
	b, _ := json.Marshal(a)
	fmt.Fprintln(os.Stdout, string(b))
}

// listen opens a loopback TCP port or a unix socket (mode 0600).
func listen(addr string) (net.Listener, string, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok || filepath.IsAbs(addr) {
		if !ok {
			path = addr
		}
		return listenUnix(path)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, "", fmt.Errorf("--listen %q: %w; want 127.0.0.1:PORT or a unix socket path", addr, err)
	}
	ip := net.ParseIP(host)
	if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, "", fmt.Errorf("--listen %q: not a loopback address; the worker only listens on loopback (the hive reaches it locally)", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("listen: %w", err)
	}
	return ln, "tcp", nil
}

func listenUnix(path string) (net.Listener, string, error) {
	if _, err := os.Lstat(path); err == nil {
		// A socket left by a dead worker is removed; a live one is not taken over.
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, "", fmt.Errorf("listen %s: another process is serving on this socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, "", fmt.Errorf("listen %s: remove stale socket: %w", path, err)
		}
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, "", fmt.Errorf("listen: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, "", fmt.Errorf("listen %s: %w", path, err)
	}
	return ln, "unix", nil
}
