package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/agent"
	"github.com/rbee-dev/rbee/gpu"
	"github.com/rbee-dev/rbee/internal/peer"
	"github.com/rbee-dev/rbee/supervisor"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Printf("rbee-hive %s (protocol %d)\n", rbee.Version, rbee.ProtocolVersion)
		return
	}
	args := os.Args[1:]
	if len(args) > 0 && args[0] == supervisor.SandboxCommand {
		if err := supervisor.RunSandbox(args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "rbee-hive %s: %v\n", supervisor.SandboxCommand, err)
			os.Exit(1)
		}
		return
	}
	if len(args) > 0 && args[0] == "bridge" {
		if err := bridge(args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "rbee-hive bridge: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if len(args) > 0 && args[0] == "serve" {
		args = args[1:]
	}
	if err := serve(args); err != nil {
		fmt.Fprintf(os.Stderr, "rbee-hive: %v\n", err)
		os.Exit(1)
	}
}

func serve(args []string) error {
	home, _ := os.UserHomeDir()
	exe, _ := os.Executable()
	fs := flag.NewFlagSet("rbee-hive", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "rbee-hive is rbee's hive agent; rbee starts it, people do not need to.\n\nUsage: rbee-hive [serve] [flags] | rbee-hive version\n\n")
		fs.PrintDefaults()
	}
	var (
		homeDir   = fs.String("home", envOr("RBEE_HOME", filepath.Join(home, ".rbee")), "state directory: catalogs, sockets, logs")
		name      = fs.String("name", "localhost", "hive name, for narration")
		workerBin = fs.String("worker-binary", filepath.Join(filepath.Dir(exe), "rbee-worker"), "rbee-worker binary")
		engine    = fs.String("engine", os.Getenv("RBEE_ENGINE"), "engine bundle directory (default: the bundles of the worker catalog)")
		fetch     = fs.Bool("engine-fetch", false, "when no bundle fits a device, install the pinned one from the npm registry")
		registry  = fs.String("engine-registry", "", "npm registry or mirror for --engine-fetch (default: $RBEE_NPM_REGISTRY, $NPM_CONFIG_REGISTRY, else registry.npmjs.org)")
		archive   = fs.String("engine-archive", "", "local tarball (or URL) of the pinned package, for --engine-fetch instead of the registry")
		engineGPU = fs.String("engine-gpu", "", "GPU bundle --engine-fetch installs for GPU devices (cuda, vulkan; default: they use the CPU bundle)")
		software  = fs.Bool("software-gpu", os.Getenv(agent.EnvSoftwareGPU) == "1", "list software GPUs (Mesa's llvmpipe) as devices, as RBEE_SOFTWARE_GPU=1 does")
		keepAlive = fs.Duration("keep-alive", 5*time.Minute, "stop workers idle for this long (0 = never)")
		ctxSize   = fs.Int("ctx-size", agent.DefaultCtxSize, "context size of the workers")
		threads   = fs.Int("threads", 0, "CPU worker threads (0 = every CPU)")
		nvmlLib   = fs.String("nvml-library", "", "libnvidia-ml.so.1 to use (default: $RBEE_NVML_LIBRARY, else the system's)")
		noNVML    = fs.Bool("no-nvml", false, "do not use NVML (CPU only)")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *software {
		// The agent reads it where it lists devices.
		os.Setenv(agent.EnvSoftwareGPU, "1")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("hive", *name)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	ln, err := agent.Listen(*homeDir)
	if err != nil {
		return err
	}
	cfg := agent.Config{
		Name: *name, Home: *homeDir, WorkerBin: *workerBin, EngineDir: *engine, KeepAlive: *keepAlive,
		CtxSize: *ctxSize, Threads: *threads, GPU: gpu.Options{NVMLLibrary: *nvmlLib, DisableNVML: *noNVML}, Log: log,
	}
	if *fetch {
		cfg.Fetch = &agent.EngineFetch{Registry: *registry, Archive: *archive, GPU: *engineGPU}
	}
	if exe, err := os.Executable(); err == nil {
		cfg.Sandbox = exe // RPC servers run in a network namespace of their own
	}
	a, err := agent.New(ctx, cfg)
	if err != nil {
		ln.Close()
		return err
	}
	pidFile := rbee.Home(*homeDir).PIDFile("hive")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		log.Warn("pid file", "err", err)
	}
	defer os.Remove(pidFile)

	hs := &http.Server{Handler: a.OwnerHandler(), ConnContext: peer.Context, ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	serveErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			serveErr <- err
		}
	}()
	b, _ := json.Marshal(map[string]any{"event": "listening", "socket": agent.SocketPath(*homeDir), "pid": os.Getpid(), "protocol": rbee.ProtocolVersion})
	fmt.Println(string(b))
	log.Info("hive agent up", "socket", agent.SocketPath(*homeDir), "version", rbee.Version)

	select {
	case <-ctx.Done():
	case <-a.Shutdown():
	case err = <-serveErr:
	}
	log.Info("hive agent stopping")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if hs.Shutdown(sctx) != nil {
		hs.Close()
	}
	wg.Wait()
	if cerr := a.Close(); err == nil {
		err = cerr
	}
	os.Remove(agent.SocketPath(*homeDir))
	return err
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// bridge pipes stdin and stdout to the agent's socket: how the queen
// reaches the agent over SSH when the server forbids forwarding.
func bridge(args []string) error {
	home, _ := os.UserHomeDir()
	fs := flag.NewFlagSet("rbee-hive bridge", flag.ContinueOnError)
	homeDir := fs.String("home", envOr("RBEE_HOME", filepath.Join(home, ".rbee")), "state directory")
	sock := fs.String("socket", "", "a socket of the agent's other than its API (an RPC server's relay)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	path := agent.SocketPath(*homeDir)
	if *sock != "" {
		path = *sock
	}
	conn, err := net.Dial("unix", path)
	if err != nil {
		return err
	}
	defer conn.Close()
	done := make(chan struct{})
	go func() { // the agent's answers to stdout; ends when the agent closes
		defer close(done)
		_, _ = io.Copy(os.Stdout, conn)
	}()
	_, _ = io.Copy(conn, os.Stdin)
	// stdin closed: let the agent finish what it sends, then leave.
	if uc, ok := conn.(*net.UnixConn); ok {
		_ = uc.CloseWrite()
	}
	<-done
	return nil
}
