package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/internal/proc"
	"github.com/rbee-dev/rbee/inventory"
	"github.com/rbee-dev/rbee/poll"
	"github.com/rbee-dev/rbee/provision"
	"github.com/rbee-dev/rbee/remote"
)

// SSH is how the queen reaches remote hives.
type SSH struct {
	Inventory  string // inventory file; "" = inventory.PathFor(the queen's home)
	KnownHosts string // "" = ~/.ssh/known_hosts
	SSHConfig  string // "" = ~/.ssh/config
	Artifacts  provision.Artifacts
	// Keepalive is how long a connected host may stay silent before it is
	// declared offline (probed every third of it). Default
	// DefaultSSHKeepalive.
	Keepalive time.Duration
}

var hiveName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// ValidHiveName reports whether name may name a hive: it ends up in paths,
// messages and files, so it is kept to a safe alphabet.
func ValidHiveName(name string) error {
	if !hiveName.MatchString(name) {
		return rbee.Errorf(rbee.CodeBadRequest, "hive name %q: use lowercase letters, digits and '-' (at most 63)", name)
	}
	return nil
}

func (f *Fleet) loadInventory() (*inventory.Inventory, error) {
	p := f.cfg.SSH.Inventory
	if p == "" {
		p = inventory.PathFor(string(f.cfg.Home))
	}
	inv, err := inventory.LoadTolerant(p)
	if err != nil {
		return nil, rbee.Errorf(rbee.CodeBadRequest, "inventory: %w", err)
	}
	return inv, nil
}

func (f *Fleet) target(h inventory.Hive) (remote.Target, remote.Config) {
	t := remote.Target{Host: h.Host, User: h.User, Port: h.Port}
	if h.Identity != "" {
		t.IdentityFiles = []string{expandHome(h.Identity)}
	}
	kh := f.cfg.SSH.KnownHosts
	if h.KnownHosts != "" {
		kh = expandHome(h.KnownHosts)
	}
	return t, remote.Config{KnownHosts: kh, SSHConfig: f.cfg.SSH.SSHConfig, UseAgent: true,
		DialTimeout: f.cfg.ConnectTimeout, Keepalive: max(f.cfg.SSH.Keepalive/3, 100*time.Millisecond)}
}

func expandHome(p string) string {
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		home, _ := os.UserHomeDir()
		return filepath.Join(home, rest)
	}
	return p
}

// hiveConn returns the pool's connection to a hive, connecting it (one
// attempt for all callers) when there is none.
func (f *Fleet) hiveConn(ctx context.Context, name string, ev Events) (*Conn, error) {
	if name == LocalHive {
		return f.pool.get(ctx, name, f.connectLocal, ev)
	}
	ih, err := f.inventoryHive(name)
	if err != nil {
		return nil, err
	}
	return f.pool.get(ctx, name, f.remoteConnector(ih, false), ev)
}

// inventoryHive finds an SSH hive in the inventory (hand edits are picked
// up on every call).
func (f *Fleet) inventoryHive(name string) (inventory.Hive, error) {
	inv, err := f.loadInventory()
	if err != nil {
		return inventory.Hive{}, err
	}
	ih, ok := inv.Hive(name)
	if bad, isBad := inv.BadHive(name); !ok && isBad {
		return ih, rbee.Errorf(rbee.CodeBadRequest, "%w", bad.Err).WithHint("fix that entry of " + inv.Path + ", or rbee hive rm " + name)
	}
	if !ok {
		return ih, (&rbee.Error{Code: rbee.CodeHiveUnknown, Message: fmt.Sprintf("hive %s is not in the inventory %s", name, inv.Path)}).
			WithHint("rbee hive add it again, or rbee hive rm it")
	}
	return ih, nil
}

// remoteConnector dials an inventory hive and makes sure its agent runs:
// dial and SSH handshake bounded by the connect timeout, then the agent
// (probe, install when needed, start, handshake).
func (f *Fleet) remoteConnector(h inventory.Hive, acceptNew bool) connector {
	return func(ctx context.Context, step func(string), ev Events) (*Conn, error) {
		narrate := ev.Narrate
		t, cfg := f.target(h)
		cfg.AcceptNewHostKey = acceptNew
		narrate("hive_connect", fmt.Sprintf("connecting to hive %s (%s)", h.Name, describeTarget(t)))
		step("ssh dial and handshake with " + describeTarget(t))
		dialStart := time.Now()
		conn, err := remote.Dial(ctx, t, cfg)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return nil, err // the pool names the step
			}
			return nil, sshError(h.Name, err)
		}
		dialTime := time.Since(dialStart)
		step("the agent (probe, install, handshake)")
		arts := f.cfg.SSH.Artifacts
		arts.Engine = func(ctx context.Context, plat provision.Platform, gpu string) (string, error) {
			step("the engine bundle for " + plat + " (fetched on this machine)")
			defer step("the agent (install, handshake)")
			return f.hostEngine(ctx, plat, gpu, ev)
		}
		res, client, err := provision.Up(ctx, conn, arts, provision.Options{Name: h.Name, KeepAlive: f.cfg.KeepAlive, Narrate: narrate,
			Progress: uploadProgress(ev, "agent_upload", "rbee to hive "+h.Name)})
		if err != nil {
			conn.Close()
			if errors.Is(err, context.DeadlineExceeded) {
				return nil, err
			}
			e := rbee.Errorf(rbee.CodeHiveDown, "hive %s: %w", h.Name, err)
			if errors.Is(err, provision.ErrAgentExited) {
				e.Hint = "fix what the agent says on the host (rbee doctor --hive " + h.Name + " checks it); the next command starts it again"
			}
			return nil, e
		}
		if res.Installed {
			narrate("hive_awake", fmt.Sprintf("hive %s: started rbee-hive %s on %s/%s (pid %d, via %s)", h.Name, res.Handshake.Version, res.Probe.OS, res.Probe.Arch, res.Handshake.PID, res.Transport))
		} else {
			narrate("hive_awake", fmt.Sprintf("hive %s: rbee-hive %s is running (pid %d, via %s)", h.Name, res.Handshake.Version, res.Handshake.PID, res.Transport))
		}
		res.Phases = append([]provision.Phase{{Name: "connect", Duration: dialTime}}, res.Phases...)
		return &Conn{name: h.Name, client: client, handshake: res.Handshake,
			remote: &remoteHive{conn: conn, layout: provision.Layout{Home: res.Probe.Home}, res: res}}, nil
	}
}

// connectLocal reaches this machine's agent on its socket, starting it
// (detached, in its own session) when nothing answers there.
func (f *Fleet) connectLocal(ctx context.Context, step func(string), ev Events) (*Conn, error) {
	narrate := ev.Narrate
	client := hiveapi.NewClient(LocalHive, hiveapi.UnixDialer(f.cfg.Home.HiveSocket()))
	step("the local agent's handshake")
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	hs, err := client.Handshake(hctx)
	cancel()
	h := &Conn{name: LocalHive, client: client, handshake: hs}
	if err == nil && (hs.Version != rbee.Version || hs.Protocol != rbee.ProtocolVersion) {
		// An agent of another rbee (an upgrade): replaced as a remote
		// host's is, its workers handed over to the new agent.
		narrate("hive_replace", fmt.Sprintf("replacing rbee-hive %s (pid %d) on this machine with %s; its workers stay", hs.Version, hs.PID, rbee.Version))
		step("replacing the local agent")
		if err := replaceLocal(ctx, client, hs); err != nil {
			client.Close()
			return nil, err
		}
		if h, err = f.startLocalHive(ctx, client, ev); err != nil {
			client.Close()
			return nil, err
		}
		narrate("hive_awake", fmt.Sprintf("hive localhost is awake (rbee-hive %s, protocol %d, pid %d)", h.handshake.Version, h.handshake.Protocol, h.handshake.PID))
	} else if err != nil {
		narrate("hive_wake", "hive localhost is asleep, waking it")
		step("starting the local agent")
		if h, err = f.startLocalHive(ctx, client, ev); err != nil {
			client.Close()
			return nil, err
		}
		narrate("hive_awake", fmt.Sprintf("hive localhost is awake (rbee-hive %s, protocol %d, pid %d)", h.handshake.Version, h.handshake.Protocol, h.handshake.PID))
	}
	if h.handshake.Protocol != rbee.ProtocolVersion {
		client.Close()
		return nil, rbee.Errorf(rbee.CodeHiveDown, "hive localhost speaks protocol %d, this queen %d; stop the old agent (kill %d)", h.handshake.Protocol, rbee.ProtocolVersion, h.handshake.PID)
	}
	return h, nil
}

// replaceLocal asks the local agent of another rbee to stop and leave its
// workers for the next agent, and waits until it is gone.
func replaceLocal(ctx context.Context, client *hiveapi.Client, hs hiveapi.Handshake) error {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := client.Shutdown(sctx, true)
	cancel()
	if err != nil {
		return rbee.Errorf(rbee.CodeHiveDown, "hive localhost runs rbee-hive %s (pid %d), which did not stop for %s: %w", hs.Version, hs.PID, rbee.Version, err).
			WithHint(fmt.Sprintf("stop it (kill %d); the next command starts this version", hs.PID))
	}
	p, err := proc.Attach(hs.PID, proc.Options{})
	if err != nil {
		return nil // already gone
	}
	t := time.NewTimer(15 * time.Second)
	defer t.Stop()
	select {
	case <-p.Exited():
		return nil
	case <-t.C:
		return rbee.Errorf(rbee.CodeHiveDown, "hive localhost: rbee-hive %s (pid %d) did not exit within 15s of its shutdown", hs.Version, hs.PID).
			WithHint(fmt.Sprintf("kill %d; the next command starts this version", hs.PID))
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startLocalHive starts rbee-hive and waits for its handshake.
func (f *Fleet) startLocalHive(ctx context.Context, client *hiveapi.Client, ev Events) (*Conn, error) {
	if f.cfg.HiveBin == "" {
		return nil, rbee.Errorf(rbee.CodeHiveDown, "no rbee-hive binary configured")
	}
	args := []string{"serve", "--home", string(f.cfg.Home), "--name", LocalHive, "--worker-binary", f.cfg.WorkerBin,
		"--keep-alive", f.cfg.KeepAlive.String()}
	args = append(append(args, f.localEngineArgs(ctx, ev)...), f.cfg.HiveArgs...)
	p, err := proc.Start(f.cfg.HiveBin, args, proc.Options{Log: f.cfg.Home.Log("hive-localhost"), Setsid: true})
	if err != nil {
		return nil, rbee.Errorf(rbee.CodeHiveDown, "start hive localhost: %w", err)
	}
	h := &Conn{name: LocalHive, client: client, local: p}
	err = poll.Until(ctx, poll.Config{Timeout: 20 * time.Second}, func(ctx context.Context) (bool, error) {
		select {
		case <-p.Exited():
			return false, poll.Permanent(fmt.Errorf("rbee-hive %s", p.Why()))
		default:
		}
		hctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		hs, err := client.Handshake(hctx)
		if err != nil {
			return false, err
		}
		h.handshake = hs
		return true, nil
	})
	if err != nil {
		p.Stop(0)
		return nil, rbee.Errorf(rbee.CodeHiveDown, "hive localhost did not come up: %w (log: %s)", err, p.Log)
	}
	return h, nil
}

// stopLocal asks the local agent to stop (it stops its workers) and waits
// for it, killing it after a grace period: the one this queen started,
// or — for the queen of this home — one an earlier queen started.
func (f *Fleet) stopLocal(h *Conn) {
	if h.local == nil && !f.cfg.OwnsLocalHive {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = h.client.Shutdown(ctx, f.handover.Load()) // a handover keeps the workers for the next agent
	cancel()
	if h.local != nil {
		h.local.Wait(15 * time.Second)
		return
	}
	// Not our child (an earlier, killed queen started it): watched by its
	// pidfd, killed after the grace period like one we started.
	p, err := proc.Attach(h.handshake.PID, proc.Options{})
	if err != nil {
		return // already gone
	}
	p.Wait(15 * time.Second)
}

func describeTarget(t remote.Target) string {
	s := t.Host
	if t.User != "" {
		s = t.User + "@" + s
	}
	if t.Port != 0 {
		s += fmt.Sprintf(":%d", t.Port)
	}
	return s
}

// sshError keeps the transport's explanation and gives it a code and a
// hint.
func sshError(name string, err error) error {
	e := rbee.Errorf(rbee.CodeHiveDown, "hive %s: %w", name, err)
	switch {
	case errors.Is(err, remote.ErrUnknownHostKey):
		e.Hint = "check the fingerprint, then run rbee hive add again with --accept-new-host-key"
	case errors.Is(err, remote.ErrHostKeyChanged):
		e.Hint = "if the host was reinstalled, remove its old line from known_hosts; otherwise someone may be intercepting the connection"
	case errors.Is(err, remote.ErrAuth):
		e.Hint = "the key must be in the host's ~/.ssh/authorized_keys; pass --identity FILE or load it into ssh-agent"
	}
	return e
}

// pushModel copies a local model to a remote hive (content-addressed,
// resumable); nothing is sent when it is already there.
// Parallel first uses of a model on a host share one push: each its own
// would race on the same partial file on the host. A waiter whose pusher
// gave up (its job was cancelled) pushes itself.
func (f *Fleet) pushModel(ctx context.Context, hc *Conn, spec *ModelSpec, ev Events) (string, error) {
	key := hc.name + "|" + spec.SHA256
	for {
		f.pushMu.Lock()
		if c := f.pushes[key]; c != nil {
			f.pushMu.Unlock()
			ev.Narrate("model_push", fmt.Sprintf("%s is being pushed to hive %s for another job: waiting for it", filepath.Base(spec.Path), hc.name))
			select {
			case <-c.done:
			case <-ctx.Done():
				return "", ctx.Err()
			}
			if c.err == nil {
				return c.path, nil
			}
			if errors.Is(c.err, context.Canceled) || errors.Is(c.err, context.DeadlineExceeded) {
				continue
			}
			return "", c.err
		}
		c := &pushCall{done: make(chan struct{})}
		if f.pushes == nil {
			f.pushes = map[string]*pushCall{}
		}
		f.pushes[key] = c
		f.pushMu.Unlock()
		c.path, c.err = f.pushOnce(ctx, hc, spec, ev)
		f.pushMu.Lock()
		delete(f.pushes, key)
		f.pushMu.Unlock()
		close(c.done)
		return c.path, c.err
	}
}

// pushCall is a model push in flight that other jobs wait for.
type pushCall struct {
	done chan struct{}
	path string
	err  error
}

func (f *Fleet) pushOnce(ctx context.Context, hc *Conn, spec *ModelSpec, ev Events) (string, error) {
	ev.Narrate("model_push", fmt.Sprintf("pushing %s (%s) to hive %s", filepath.Base(spec.Path), rbee.Bytes(uint64(spec.Size)), hc.name))
	p, err := provision.PushModel(ctx, hc.remote.conn, hc.remote.layout, spec.Path, spec.SHA256, func(done, total int64, rate float64) {
		ev.Send(rbee.Event{Type: rbee.EventProgress, Actor: me, Action: "model_push", BytesDone: done, BytesTotal: total, Rate: rate,
			Message: fmt.Sprintf("pushed %s of %s (%s/s)", rbee.Bytes(uint64(done)), rbee.Bytes(uint64(total)), rbee.Bytes(uint64(rate)))})
	})
	if err != nil {
		code := rbee.CodeHiveDown
		if re := (*rbee.Error)(nil); errors.As(err, &re) {
			code = re.Code // disk full on the host is no room, not a lost hive
		}
		return "", rbee.Errorf(code, "hive %s: %w", hc.name, err)
	}
	return p, nil
}

// resolveHive finds a hive by name: the inventory (hand edits are picked
// up), the catalog, or the local machine (always a hive). It reports
// whether the hive is reached over SSH.
func (f *Fleet) resolveHive(ctx context.Context, name string) (catalog.Hive, bool, error) {
	inv, err := f.loadInventory()
	if err != nil {
		return catalog.Hive{}, false, err
	}
	if ih, ok := inv.Hive(name); ok && name != LocalHive {
		entry, err := f.db.Hive(ctx, name)
		if errors.Is(err, catalog.ErrNotFound) {
			entry = catalog.Hive{Name: name, Kind: "ssh", Host: ih.Host, Port: ih.Port, User: ih.User, Status: catalog.StatusUnknown, Added: time.Now()}
			if err := f.db.UpsertHive(ctx, entry); err != nil {
				return entry, true, err
			}
		} else if err != nil {
			return entry, true, err
		}
		return entry, true, nil
	}
	if name == LocalHive {
		if err := f.ensureLocalEntry(ctx); err != nil {
			return catalog.Hive{}, false, err
		}
		entry, err := f.db.Hive(ctx, name)
		return entry, false, err
	}
	if bad, ok := inv.BadHive(name); ok {
		return catalog.Hive{}, true, rbee.Errorf(rbee.CodeBadRequest, "%w", bad.Err).WithHint("fix that entry of " + inv.Path + ", or rbee hive rm " + name)
	}
	entry, err := f.db.Hive(ctx, name)
	if errors.Is(err, catalog.ErrNotFound) {
		var names []string
		if hs, err := f.db.Hives(ctx); err == nil {
			for _, h := range hs {
				names = append(names, h.Name)
			}
		}
		for _, h := range inv.Hives {
			if !slices.Contains(names, h.Name) {
				names = append(names, h.Name)
			}
		}
		return entry, false, (&rbee.Error{Code: rbee.CodeHiveUnknown, Message: fmt.Sprintf("no hive named %q (known: %s)", name, strings.Join(names, ", "))}).
			WithHint("rbee hive ls lists the hives; rbee hive add USER@HOST adds one")
	}
	if err == nil && entry.Kind == "ssh" {
		return entry, true, (&rbee.Error{Code: rbee.CodeHiveUnknown, Message: fmt.Sprintf("hive %s is in the catalog but not in the inventory %s", name, inv.Path)}).
			WithHint("rbee hive add it again, or rbee hive rm it")
	}
	return entry, false, err
}

// ensureLocalEntry adds the local machine as hive localhost; added says
// whether it was not there before.
func (f *Fleet) ensureLocalEntry(ctx context.Context) error {
	err := f.db.AddHive(ctx, catalog.Hive{Name: LocalHive, Kind: "local", Status: catalog.StatusUnknown, Added: time.Now()})
	if err != nil && !errors.Is(err, catalog.ErrExists) {
		return err
	}
	return nil
}

// uploadProgress reports a push's bytes as progress events (a bar on a
// terminal) named action, about what.
func uploadProgress(ev Events, action, what string) func(done, total int64) {
	return func(done, total int64) {
		ev.Send(rbee.Event{Type: rbee.EventProgress, Actor: me, Action: action, BytesDone: done, BytesTotal: total,
			Message: fmt.Sprintf("pushing %s: %s of %s", what, rbee.Bytes(uint64(done)), rbee.Bytes(uint64(total)))})
	}
}
