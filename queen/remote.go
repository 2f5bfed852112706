package queen

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/inventory"
	"github.com/rbee-dev/rbee/modelfile"
	"github.com/rbee-dev/rbee/provision"
	"github.com/rbee-dev/rbee/remote"
)

// SSH is how the queen reaches remote hives.
type SSH struct {
	Inventory  string // inventory file; "" = inventory.DefaultPath()
	KnownHosts string // "" = ~/.ssh/known_hosts
	SSHConfig  string // "" = ~/.ssh/config
	Artifacts  provision.Artifacts
}

// remoteHive is the SSH side of a hiveConn.
type remoteHive struct {
	conn   *remote.Conn
	layout provision.Layout
	res    provision.Result
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

func (q *Queen) loadInventory() (*inventory.Inventory, error) {
	p := q.cfg.SSH.Inventory
	if p == "" {
		p = inventory.DefaultPath()
	}
	inv, err := inventory.Load(p)
	if err != nil {
		return nil, rbee.Errorf(rbee.CodeBadRequest, "inventory: %v", err)
	}
	return inv, nil
}

func (q *Queen) target(h inventory.Hive) (remote.Target, remote.Config) {
	t := remote.Target{Host: h.Host, User: h.User, Port: h.Port}
	if h.Identity != "" {
		t.IdentityFiles = []string{expandHome(h.Identity)}
	}
	kh := q.cfg.SSH.KnownHosts
	if h.KnownHosts != "" {
		kh = expandHome(h.KnownHosts)
	}
	return t, remote.Config{KnownHosts: kh, SSHConfig: q.cfg.SSH.SSHConfig, UseAgent: true}
}

func expandHome(p string) string {
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		home, _ := os.UserHomeDir()
		return filepath.Join(home, rest)
	}
	return p
}

// connectRemote dials an inventory hive (reusing a live connection) and makes
// sure its agent runs: the fast path is one handshake through the tunnel.
func (q *Queen) connectRemote(ctx context.Context, h inventory.Hive, acceptNew bool, narrate func(action, msg string)) (*hiveConn, error) {
	q.mu.Lock()
	hc := q.hives[h.Name]
	q.mu.Unlock()
	if hc != nil && hc.remote != nil {
		select {
		case <-hc.remote.conn.Done():
		default:
			hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			hs, err := hc.client.Handshake(hctx)
			cancel()
			if err == nil {
				hc.handshake = hs
				return hc, nil
			}
		}
		hc.client.Close()
		hc.remote.conn.Close()
	}
	t, cfg := q.target(h)
	cfg.AcceptNewHostKey = acceptNew
	narrate("hive_connect", fmt.Sprintf("connecting to hive %s (%s)", h.Name, describeTarget(t)))
	dialStart := time.Now()
	conn, err := remote.Dial(ctx, t, cfg)
	if err != nil {
		return nil, sshError(h.Name, err)
	}
	dialTime := time.Since(dialStart)
	res, client, err := provision.Up(ctx, conn, q.cfg.SSH.Artifacts, provision.Options{Name: h.Name, KeepAlive: q.cfg.KeepAlive, Narrate: narrate})
	if err != nil {
		conn.Close()
		return nil, rbee.Errorf(rbee.CodeHiveDown, "hive %s: %v", h.Name, err)
	}
	if res.Installed {
		narrate("hive_awake", fmt.Sprintf("hive %s: started rbee-hive %s on %s/%s (pid %d, via %s)", h.Name, res.Handshake.Version, res.Probe.OS, res.Probe.Arch, res.Handshake.PID, res.Transport))
	} else {
		narrate("hive_awake", fmt.Sprintf("hive %s: rbee-hive %s is running (pid %d, via %s)", h.Name, res.Handshake.Version, res.Handshake.PID, res.Transport))
	}
	res.Phases = append([]provision.Phase{{Name: "connect", Duration: dialTime}}, res.Phases...)
	hc = &hiveConn{name: h.Name, client: client, handshake: res.Handshake,
		remote: &remoteHive{conn: conn, layout: provision.Layout{Home: res.Probe.Home}, res: res}}
	q.mu.Lock()
	q.hives[h.Name] = hc
	q.mu.Unlock()
	return hc, nil
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

// sshError keeps the transport's explanation and gives it a code.
func sshError(name string, err error) error {
	code := rbee.CodeHiveDown
	msg := fmt.Sprintf("hive %s: %v", name, err)
	e := &rbee.Error{Code: code, Message: msg}
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

// markOffline records why a hive cannot be reached.
func (q *Queen) markOffline(name string, err error) {
	_ = q.db.SetStatus(context.Background(), name, "offline", err.Error(), time.Time{})
}

// pushModel copies a model from the queen's machine to a remote hive.
func (q *Queen) pushModel(ctx context.Context, hc *hiveConn, local string, send func(rbee.Event) error) (string, error) {
	sha, err := q.localSHA(ctx, local)
	if err != nil {
		return "", rbee.Errorf(rbee.CodeModelNotFound, "model %s: %v", local, err)
	}
	st, _ := os.Stat(local)
	_ = send(rbee.Narrate(me, "model_push", fmt.Sprintf("pushing %s (%s) to hive %s", filepath.Base(local), rbee.Bytes(uint64(st.Size())), hc.name)))
	p, err := provision.PushModel(ctx, hc.remote.conn, hc.remote.layout, local, sha, func(done, total int64, rate float64) {
		_ = send(rbee.Event{Type: rbee.EventProgress, Actor: me, Action: "model_push", BytesDone: done, BytesTotal: total, Rate: rate,
			Message: fmt.Sprintf("pushed %s of %s (%s/s)", rbee.Bytes(uint64(done)), rbee.Bytes(uint64(total)), rbee.Bytes(uint64(rate)))})
	})
	if err != nil {
		return "", rbee.Errorf(rbee.CodeHiveDown, "hive %s: %v", hc.name, err)
	}
	return p, nil
}

// localSHA hashes a local file, remembering the answer per (path, size,
// mtime) so a warm job does not read gigabytes again.
func (q *Queen) localSHA(ctx context.Context, p string) (string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	key := fmt.Sprintf("%s|%d|%d", p, st.Size(), st.ModTime().UnixNano())
	q.shaMu.Lock()
	sum, ok := q.shas[key]
	q.shaMu.Unlock()
	if ok {
		return sum, nil
	}
	sum, err = modelfile.Hash(ctx, p)
	if err != nil {
		return "", err
	}
	q.shaMu.Lock()
	q.shas[key] = sum
	q.shaMu.Unlock()
	return sum, nil
}

// resolveHive finds a hive by name: the catalog, or the inventory (hand
// edits are picked up), or the local machine.
func (q *Queen) resolveHive(ctx context.Context, name string) (catalog.Hive, *inventory.Hive, error) {
	inv, err := q.loadInventory()
	if err != nil {
		return catalog.Hive{}, nil, err
	}
	if ih, ok := inv.Hive(name); ok && name != LocalHive {
		entry, err := q.db.Hive(ctx, name)
		if errors.Is(err, catalog.ErrNotFound) {
			entry = catalog.Hive{Name: name, Kind: "ssh", Host: ih.Host, Port: ih.Port, User: ih.User, Status: "unknown", Added: time.Now()}
			if err := q.db.UpsertHive(ctx, entry); err != nil {
				return entry, nil, err
			}
		} else if err != nil {
			return entry, nil, err
		}
		return entry, &ih, nil
	}
	entry, err := q.db.Hive(ctx, name)
	if errors.Is(err, catalog.ErrNotFound) && name == LocalHive {
		// This machine is always a hive, even when SSH hives came first.
		if err := q.ensureLocalEntry(ctx); err != nil {
			return entry, nil, err
		}
		entry, err = q.db.Hive(ctx, name)
	}
	if errors.Is(err, catalog.ErrNotFound) {
		var names []string
		if hs, err := q.db.Hives(ctx); err == nil {
			for _, h := range hs {
				names = append(names, h.Name)
			}
		}
		for _, h := range inv.Hives {
			if !contains(names, h.Name) {
				names = append(names, h.Name)
			}
		}
		return entry, nil, &rbee.Error{Code: rbee.CodeHiveUnknown, Message: fmt.Sprintf("no hive named %q (known: %s)", name, strings.Join(names, ", ")),
			Hint: "rbee hive ls lists the hives; rbee hive add USER@HOST adds one"}
	}
	if err == nil && entry.Kind == "ssh" {
		return entry, nil, &rbee.Error{Code: rbee.CodeHiveUnknown, Message: fmt.Sprintf("hive %s is in the catalog but not in the inventory %s", name, inv.Path),
			Hint: "rbee hive add it again, or rbee hive rm it"}
	}
	return entry, nil, err
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// upAll connects every inventory hive in parallel.
func (q *Queen) upAll(ctx context.Context, send func(rbee.Event) error) (failed int, err error) {
	inv, err := q.loadInventory()
	if err != nil {
		return 0, err
	}
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	for _, h := range inv.Hives {
		if h.Disabled {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			quiet := func(string, string) {}
			hc, err := q.connectRemote(ctx, h, false, quiet)
			ev := rbee.Event{Type: rbee.EventNarration, Actor: "hive " + h.Name, Action: "hive_up"}
			if err != nil {
				q.markOffline(h.Name, err)
				ev = rbee.Fail("hive "+h.Name, rbee.CodeOf(err), err.Error())
				mu.Lock()
				failed++
				mu.Unlock()
			} else {
				devs, derr := hc.client.Devices(ctx)
				_ = q.db.UpsertHive(ctx, catalog.Hive{Name: h.Name, Kind: "ssh", Host: h.Host, Port: h.Port, User: h.User,
					Status: "online", AgentVersion: hc.handshake.Version, LastSeen: time.Now()})
				how := "running"
				if hc.remote.res.Installed {
					how = "started"
				}
				msg := fmt.Sprintf("up: rbee-hive %s %s (%s: %s)", hc.handshake.Version, how, time.Since(start).Round(time.Millisecond), hc.remote.res.Timings())
				if derr == nil {
					_ = q.db.SetDevices(ctx, h.Name, devs.Devices, time.Now())
					msg += ", " + describeDevices(devs.Devices)
				}
				ev.Message = msg
			}
			mu.Lock()
			_ = send(ev)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return failed, nil
}
