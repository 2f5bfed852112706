package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rbee-dev/rbee/provision"
	"github.com/rbee-dev/rbee/queen/door"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/poll"
	"github.com/rbee-dev/rbee/queen"
)

type queenCmd struct {
	Serve  queenServeCmd  `cmd:"" help:"Run the queen in the foreground (rbee starts it for you)."`
	Start  queenStartCmd  `cmd:"" help:"Start the queen in the background if it is not running."`
	Stop   queenStopCmd   `cmd:"" help:"Stop the queen (and the local hive and workers it started)."`
	Status queenStatusCmd `cmd:"" help:"Show the queen's health."`
}

// queenConfig is what a queen needs, shared by serve and --ephemeral.
type queenConfig struct {
	KeepAlive time.Duration `default:"5m" env:"RBEE_KEEP_ALIVE" help:"Unload workers idle for this long."`
	Engine    string        `env:"RBEE_ENGINE" placeholder:"DIR" help:"Engine bundle the local hive must use (default: the bundles of its worker catalog, the pinned one installed on first need)."`
	// Where the pinned engine comes from when a hive has none.
	EngineArchive string `name:"engine-archive" env:"RBEE_ENGINE_ARCHIVE" placeholder:"FILE|URL" help:"Install the pinned engine from this copy of its npm package (checked against the pinned checksum) instead of the registry."`
	NPMRegistry   string `name:"npm-registry" env:"RBEE_NPM_REGISTRY" placeholder:"URL" help:"npm registry or mirror the pinned engine package comes from (default: $NPM_CONFIG_REGISTRY, else registry.npmjs.org)."`
	// How long a host may keep a job waiting.
	ConnectTimeout time.Duration `name:"connect-timeout" default:"5s" env:"RBEE_CONNECT_TIMEOUT" help:"Declare a hive unreachable when it does not answer (dial, SSH or agent handshake) within this."`
	Grace          time.Duration `name:"grace" default:"10s" env:"RBEE_QUEEN_GRACE" help:"When the queen stops, running jobs get this long to finish."`
	SSHKeepalive   time.Duration `name:"ssh-keepalive" default:"15s" env:"RBEE_SSH_KEEPALIVE" help:"Declare a connected host offline when it stays silent this long."`
	// The OpenAI front door's queue per model.
	QueueDepth int           `name:"queue-depth" default:"128" env:"RBEE_QUEUE_DEPTH" help:"Front door: requests per model that may wait for a free slot; the next is answered 429."`
	QueueWait  time.Duration `name:"queue-wait" default:"10m" env:"RBEE_QUEUE_WAIT" help:"Front door: how long a request may wait for a free slot before it is answered 503 (10m: as long as OpenAI's clients wait)."`
	ScaleWait  time.Duration `name:"scale-wait" default:"2s" env:"RBEE_SCALE_WAIT" help:"Front door: add a replica to a deployment (up to its --max) when its requests wait for a slot this long and a device is free."`
	DoorPull   bool          `name:"door-pull" env:"RBEE_DOOR_PULL" help:"Front door: let clients name a model to download (hf:…, https://…) that no hive holds; off, they use only what the fleet has."`
	RPCStall   time.Duration `name:"rpc-stall" default:"2m" env:"RBEE_RPC_STALL" help:"A split fails, naming the hive, when an RPC server owes its worker an answer for this long."`
}

func (c queenConfig) build(g *globals) (queen.Config, error) {
	exe, err := os.Executable()
	if err != nil {
		return queen.Config{}, err
	}
	dir := filepath.Dir(exe)
	cfg := queen.Config{
		Home: g.home(), KeepAlive: c.KeepAlive, EngineDir: c.Engine, EngineRegistry: c.NPMRegistry, EngineArchive: c.EngineArchive,
		HiveBin: envOr("RBEE_HIVE_BIN", filepath.Join(dir, "rbee-hive")), WorkerBin: envOr("RBEE_WORKER_BIN", filepath.Join(dir, "rbee-worker")),
	}
	// Paths by hand, not kong's type:"path": an empty RBEE_ENGINE= is no
	// engine, not the working directory. The local hive runs elsewhere.
	if cfg.EngineDir != "" {
		if cfg.EngineDir, err = filepath.Abs(cfg.EngineDir); err != nil {
			return cfg, exitf(rbee.ExitUsage, "", "--engine %s: %v", c.Engine, err)
		}
	}
	if a := cfg.EngineArchive; a != "" && !strings.HasPrefix(a, "http://") && !strings.HasPrefix(a, "https://") {
		if cfg.EngineArchive, err = filepath.Abs(a); err != nil {
			return cfg, exitf(rbee.ExitUsage, "", "--engine-archive %s: %v", a, err)
		}
	}
	if n := os.Getenv("RBEE_WORKER_THREADS"); n != "" {
		if _, err := strconv.Atoi(n); err != nil {
			return cfg, exitf(rbee.ExitUsage, "", "RBEE_WORKER_THREADS=%q is not a number", n)
		}
		cfg.HiveArgs = append(cfg.HiveArgs, "--threads", n)
	}
	if lib := os.Getenv("RBEE_NVML_LIBRARY"); lib != "" {
		cfg.HiveArgs = append(cfg.HiveArgs, "--nvml-library", lib)
	}
	// What remote hives get: this machine's builds for its own platform,
	// plus cross builds in <bin>/agents/<os>-<arch>/ (make agents).
	plat := runtime.GOOS + "/" + runtime.GOARCH
	// Without an engine named, the queen fetches the pinned one for a host
	// that needs it.
	a := provision.Artifacts{
		Agents:  map[string]string{plat: cfg.HiveBin},
		Workers: map[string]string{plat: cfg.WorkerBin},
		Engines: map[string]string{},
		// Gzipped copies of what goes to hosts, made once per content
		// ("off": files go as they are).
		PackDir: envOr("RBEE_PUSH_CACHE", g.home().Cache("push")),
	}
	if a.PackDir == "off" {
		a.PackDir = ""
	}
	if cfg.EngineDir != "" {
		a.Engines[plat] = cfg.EngineDir
	}
	// A host whose probe calls for a GPU engine gets the pinned package of
	// its kind, or the bundle named here.
	a.GPUEngines = map[string]string{}
	for _, kind := range []string{"cuda", "vulkan"} {
		if dir := os.Getenv("RBEE_ENGINE_" + strings.ToUpper(kind)); dir != "" {
			abs, err := filepath.Abs(dir)
			if err != nil {
				return cfg, exitf(rbee.ExitUsage, "", "RBEE_ENGINE_%s=%s: %v", strings.ToUpper(kind), dir, err)
			}
			a.GPUEngines[kind] = abs
		}
	}
	a.SoftwareGPU = os.Getenv("RBEE_SOFTWARE_GPU") == "1"
	if ents, err := os.ReadDir(filepath.Join(dir, "agents")); err == nil {
		for _, e := range ents {
			osName, arch, ok := strings.Cut(e.Name(), "-")
			if !ok || !e.IsDir() {
				continue
			}
			p := osName + "/" + arch
			a.Agents[p] = filepath.Join(dir, "agents", e.Name(), "rbee-hive")
			a.Workers[p] = filepath.Join(dir, "agents", e.Name(), "rbee-worker")
			if eng := os.Getenv("RBEE_ENGINE_" + strings.ToUpper(osName+"_"+arch)); eng != "" {
				a.Engines[p] = eng
			}
		}
	}
	cfg.SSH = queen.SSH{Artifacts: a, KnownHosts: os.Getenv("RBEE_KNOWN_HOSTS"), SSHConfig: os.Getenv("RBEE_SSH_CONFIG"), Keepalive: c.SSHKeepalive}
	cfg.ConnectTimeout, cfg.Grace = c.ConnectTimeout, c.Grace
	if c.QueueDepth < 1 {
		return cfg, exitf(rbee.ExitUsage, "e.g. --queue-depth 128", "--queue-depth %d: at least 1", c.QueueDepth)
	}
	if c.ScaleWait <= 0 {
		return cfg, exitf(rbee.ExitUsage, "e.g. --scale-wait 2s", "--scale-wait %s: more than 0", c.ScaleWait)
	}
	cfg.QueueDepth, cfg.QueueWait, cfg.ScaleWait, cfg.DoorPull, cfg.RPCStall = c.QueueDepth, c.QueueWait, c.ScaleWait, c.DoorPull, c.RPCStall
	return cfg, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

type queenServeCmd struct {
	queenConfig
	APIKeys     string   `name:"api-keys" env:"RBEE_API_KEYS" help:"File of API keys for the OpenAI-compatible door (mode 0600; one per line: ID KEY [MODEL,MODEL…]); needed, or the token, beyond loopback."`
	DoorHosts   []string `name:"door-host" env:"RBEE_DOOR_HOSTS" sep:"," placeholder:"NAME" help:"A name of this machine the door answers to (repeatable), besides localhost, 127.0.0.1, ::1 and the listen address; requests for other names are refused (DNS rebinding)."`
	CORSOrigins []string `name:"cors-origin" env:"RBEE_CORS_ORIGINS" sep:"," placeholder:"ORIGIN" help:"A web origin (https://app.example) whose pages may call the door (repeatable); none by default."`
}

func (c *queenServeCmd) Help() string {
	return `Logs go to stderr. Without --engine, a hive with no engine gets the pinned one on first need.

Examples:
  rbee queen serve                                    until Ctrl-C or rbee queen stop
  rbee queen serve --engine-archive linux-x64.tgz     the engine from a local copy, no network`
}

func (c *queenServeCmd) Run(ctx context.Context, g *globals) error {
	cfg, err := c.build(g)
	if err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(g.Queen)
	if err != nil {
		return exitf(rbee.ExitUsage, "", "queen address %q: %v", g.Queen, err)
	}
	var token string
	if g.TokenFile != "" {
		if token, err = queen.ReadToken(g.TokenFile); err != nil {
			return exitf(rbee.ExitUsage, "", "%v", err)
		}
	}
	var keys []queen.APIKey
	if c.APIKeys != "" {
		if keys, err = queen.ReadAPIKeys(c.APIKeys); err != nil {
			return exitf(rbee.ExitUsage, "", "%v", err)
		}
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) && token == "" && len(keys) == 0 {
		return exitf(rbee.ExitUsage, "create one: (umask 077; openssl rand -hex 32 > ~/.rbee/token) and pass --token-file ~/.rbee/token",
			"queen address %s is not loopback: serving beyond this machine needs a bearer token", g.Queen)
	}
	ctl, err := queen.ListenControl(g.home().QueenSocket())
	if err != nil {
		if errors.Is(err, queen.ErrQueenRunning) {
			return exitf(rbee.ExitQueen, "rbee queen status shows it; rbee queen stop stops it", "%v", err)
		}
		return exitf(rbee.ExitQueen, "", "%v", err)
	}
	ln, err := net.Listen("tcp", g.Queen)
	if err != nil {
		ctl.Close()
		return exitf(rbee.ExitQueen, "another program holds the port: stop it, or run the queen elsewhere with --queen HOST:PORT", "queen cannot listen on %s: %v", g.Queen, err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg.Log = log
	cfg.OwnsLocalHive = true
	q, err := queen.New(ctx, cfg)
	if err != nil {
		ln.Close()
		ctl.Close()
		return err
	}
	pidFile := g.home().PIDFile("queen")
	_ = os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600)
	defer os.Remove(pidFile)
	log.Info("queen listening", "control", g.home().QueenSocket(), "addr", ln.Addr().String(), "version", rbee.Version, "home", g.Home, "token", token != "")
	return serveQueen(ctx, q, ctl, ln, q.TCPHandler(queen.TCPConfig{Token: token, Keys: keys, Listen: ln.Addr().String(),
		Fence: door.FenceConfig{Hosts: c.DoorHosts, Origins: c.CORSOrigins}}))
}

// serveQueen serves the control socket (owner only) and the TCP listener
// (health; with a token, the control routes too) until ctx ends or a
// client asks for shutdown, then shuts down in cascade. tcp may be nil.
func serveQueen(ctx context.Context, q *queen.Queen, ctl, tcp net.Listener, tcpHandler http.Handler) error {
	servers := []*http.Server{{Handler: queen.OwnerOnly(q.ControlHandler()), ReadHeaderTimeout: 10 * time.Second, ConnContext: queen.PeerContext}}
	lns := []net.Listener{ctl}
	if tcp != nil {
		h := tcpHandler
		servers = append(servers, &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second})
		lns = append(lns, tcp)
	}
	var wg sync.WaitGroup
	serveErr := make(chan error, len(servers))
	for i, hs := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := hs.Serve(lns[i]); err != nil && !errors.Is(err, http.ErrServerClosed) {
				serveErr <- err
			}
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case <-q.Shutdown():
	case err = <-serveErr:
	}
	// Jobs are cancelled first so their streams end, then the servers stop.
	cerr := q.Close()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, hs := range servers {
		if hs.Shutdown(sctx) != nil {
			hs.Close()
		}
	}
	wg.Wait()
	if err == nil {
		err = cerr
	}
	return err
}

type queenStartCmd struct{}

func (queenStartCmd) Help() string {
	return `Examples:
  rbee queen start                       start it (nothing happens if it runs)
  RBEE_HOME=/srv/rbee rbee queen start   the queen of another home`
}

func (queenStartCmd) Run(ctx context.Context, g *globals) error {
	_, h, started, err := ensureQueen(ctx, g, func(_, msg string) { fmt.Fprintln(os.Stderr, "[keeper] "+msg) })
	if err != nil {
		return err
	}
	if !started {
		fmt.Printf("queen already running (pid %d, up %s)\n", h.PID, time.Duration(h.UptimeS*float64(time.Second)).Round(time.Second))
		return nil
	}
	fmt.Printf("queen started (pid %d), control socket %s, listening on %s\n", h.PID, g.home().QueenSocket(), g.Queen)
	return nil
}

type queenStopCmd struct{}

func (queenStopCmd) Help() string {
	return `Running jobs get the grace period (--grace of the queen) to finish; remote hives keep their workers warm.

Examples:
  rbee queen stop
  rbee --queen 127.0.0.1:7900 queen stop`
}

func (queenStopCmd) Run(ctx context.Context, g *globals) error {
	c := g.client()
	h, err := c.Health(ctx)
	if err != nil {
		if isDown(err) {
			fmt.Printf("queen is not running (%s)\n", g.where())
			return nil
		}
		return queenError(g, err)
	}
	if err := c.Shutdown(ctx); err != nil {
		return queenError(g, err)
	}
	// The queen gives running work its grace period, then closes its
	// hives: wait for all of it (a fixed minute gave up on a queen told
	// --grace 2m that was keeping its word).
	grace := time.Duration(h.GraceS * float64(time.Second))
	if n := h.Jobs + h.Requests; n > 0 {
		fmt.Fprintf(os.Stderr, "[keeper] queen is stopping: %d running job(s) and request(s) get up to %s to finish\n", n, grace.Round(time.Second))
	}
	err = poll.Until(ctx, poll.Config{Timeout: max(grace+30*time.Second, 60*time.Second), MaxAttempts: 100000}, func(ctx context.Context) (bool, error) {
		_, err := c.Health(ctx)
		return err != nil && isDown(err), nil
	})
	if err != nil {
		return exitf(rbee.ExitQueen, fmt.Sprintf("kill %d", h.PID), "queen did not stop: %v", err)
	}
	fmt.Printf("queen stopped (pid %d): this machine's hive and its workers stopped; remote hives keep their agents and workers warm (rbee hive rm --purge NAME removes one)\n", h.PID)
	return nil
}

type queenStatusCmd struct {
	JSON bool `help:"Print the health as JSON."`
}

func (queenStatusCmd) Help() string {
	return `Exits 3 when no queen runs.

Examples:
  rbee queen status
  rbee queen status --json | jq .state`
}

func (c queenStatusCmd) Run(ctx context.Context, g *globals) error {
	h, err := g.client().Health(ctx)
	if err != nil {
		if isDown(err) {
			return exitf(rbee.ExitQueen, "rbee queen start starts it; rbee infer starts it on demand", "queen is not running (%s)", g.where())
		}
		return queenError(g, err)
	}
	if c.JSON {
		b, _ := json.Marshal(h)
		fmt.Println(string(b))
		return nil
	}
	fmt.Printf("queen %s (%s): %s", h.Version, g.where(), h.State)
	if h.Reason != "" {
		fmt.Printf(" (%s)", h.Reason)
	}
	fmt.Printf(", pid %d, up %s, %d job(s) and %d front-door request(s) running\n", h.PID, time.Duration(h.UptimeS*float64(time.Second)).Round(time.Second), h.Jobs, h.Requests)
	return nil
}
