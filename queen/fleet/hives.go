package fleet

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/doctor"
	"github.com/rbee-dev/rbee/enginefetch"
	"github.com/rbee-dev/rbee/internal/proc"
	"github.com/rbee-dev/rbee/inventory"
	"github.com/rbee-dev/rbee/provision"
	"github.com/rbee-dev/rbee/queen/internal/reply"
	"github.com/rbee-dev/rbee/queenapi"
	"github.com/rbee-dev/rbee/remote"
	"github.com/rbee-dev/rbee/sse"
)

var hostChars = func(s string) bool {
	for _, r := range s {
		if !(r == '.' || r == '-' || r == '_' || r == ':' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return s != "" && !strings.HasPrefix(s, "-")
}

// ValidateAdd refuses what must never reach a remote host or a file: shell
// metacharacters in host, user or name, a port out of range.
func ValidateAdd(r queenapi.AddHiveRequest) error {
	if err := ValidHiveName(r.Name); err != nil {
		return err
	}
	if r.Name == LocalHive && r.Host != "" {
		return rbee.Errorf(rbee.CodeBadRequest, "hive name %s is reserved for this machine's own hive", LocalHive).
			WithHint("name the SSH host with --name, e.g. --name " + otherName(r.Host))
	}
	if !hostChars(r.Host) {
		return rbee.Errorf(rbee.CodeBadRequest, "host %q: only letters, digits, '.', '-', '_' and ':' are allowed", r.Host)
	}
	if strings.Contains(r.Host, ":") && net.ParseIP(r.Host) == nil {
		return rbee.Errorf(rbee.CodeBadRequest, "host %q: a ':' belongs only in an IPv6 address; the port goes apart (HOST:PORT, [IPV6]:PORT)", r.Host)
	}
	if r.User != "" && (!hostChars(r.User) || strings.Contains(r.User, ":")) {
		return rbee.Errorf(rbee.CodeBadRequest, "user %q: only letters, digits, '.', '-' and '_' are allowed", r.User)
	}
	if r.Port < 0 || r.Port > 65535 {
		return rbee.Errorf(rbee.CodeBadRequest, "port %d is out of range (1-65535)", r.Port)
	}
	return nil
}

// otherName suggests a hive name for host that is not the reserved one.
func otherName(host string) string {
	if host == "" || host == LocalHive || !hiveName.MatchString(host) {
		return "my-host"
	}
	return host
}

// streamOp runs op with its events on an SSE stream, ending with done or
// the error.
func (f *Fleet) streamOp(w http.ResponseWriter, op func(ev Events) error) {
	sw := sse.NewWriter(w)
	defer sw.Close()
	ev := Stream{SW: sw}
	if err := op(ev); err != nil {
		ev.Send(rbee.FailErr(me, err))
		return
	}
	ev.Send(rbee.Event{Type: rbee.EventDone, Actor: me})
}

// addHive connects, installs, probes devices, and records the hive in the
// inventory and the catalog. Running it twice is harmless.
func (f *Fleet) addHive(w http.ResponseWriter, r *http.Request) {
	var req queenapi.AddHiveRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		reply.Error(w, http.StatusBadRequest, rbee.Errorf(rbee.CodeBadRequest, "add hive: %w", err))
		return
	}
	if err := ValidateAdd(req); err != nil {
		reply.Error(w, http.StatusBadRequest, err)
		return
	}
	inv, err := f.loadInventory()
	if err != nil {
		reply.Error(w, http.StatusBadRequest, err)
		return
	}
	ih := inventory.Hive{Name: req.Name, Host: req.Host, User: req.User, Port: req.Port, Identity: req.Identity}
	if old, ok := inv.Hive(req.Name); ok && (old.Host != ih.Host || old.User != ih.User || old.Port != ih.Port) {
		reply.Error(w, http.StatusConflict, rbee.Errorf(rbee.CodeBadRequest, "hive %s already names %s in %s; rbee hive rm it first or pick another --name", req.Name, old.Host, inv.Path))
		return
	}
	if bad, ok := inv.BadHive(req.Name); ok {
		reply.Error(w, http.StatusConflict, rbee.Errorf(rbee.CodeBadRequest, "hive %s is already in %s:%d, with problems (%s); fix that entry, or rbee hive rm %s, or pick another --name",
			req.Name, inv.Path, bad.Line, bad.Err, req.Name))
		return
	}
	if req.DryRun {
		f.streamOp(w, func(ev Events) error { return f.planHive(r.Context(), ih, req.AcceptNewHostKey, ev) })
		return
	}
	f.streamOp(w, func(ev Events) error {
		ctx := r.Context()
		_, known := inv.Hive(req.Name)
		hc, err := f.pool.getWith(ctx, req.Name, f.remoteConnector(ih, req.AcceptNewHostKey), ev, !req.AcceptNewHostKey)
		if err != nil {
			if !known {
				f.pool.drop(req.Name) // not a hive yet: nothing to redial
			}
			return err
		}
		// The same account under a second name (an ssh_config alias, a
		// ProxyJump, another spelling of the address) is answered by the
		// agent the first name started: it says its name. Two hives on one
		// install would share workers and models, and purging one would
		// wipe the other's.
		if other := hc.handshake.Name; other != "" && other != req.Name {
			if _, ok := inv.Hive(other); ok {
				if !known {
					f.pool.drop(req.Name)
				}
				return rbee.Errorf(rbee.CodeBadRequest, "%s is the account hive %s already reaches (its rbee-hive answers as %s)", describeTarget(remote.Target{Host: req.Host, User: req.User, Port: req.Port}), other, other).
					WithHint("use hive " + other + ", or rbee hive rm " + other + " first")
			}
		}
		// From now on it is reached as the inventory says (new host keys
		// are accepted only while adding).
		f.pool.setConnector(req.Name, f.remoteConnector(ih, false))
		dctx, cancel := context.WithTimeout(ctx, f.cfg.ConnectTimeout)
		devs, err := hc.client.Devices(dctx)
		cancel()
		if err != nil {
			return rbee.Errorf(rbee.CodeHiveDown, "hive %s: devices: %w", req.Name, err)
		}
		ev.Narrate("devices_detected", fmt.Sprintf("hive %s has %s", req.Name, describeDevices(devs.Devices)))
		if inv, err = f.recordHive(ih); err != nil {
			return err
		}
		now := time.Now()
		if err := f.db.UpsertHive(ctx, catalog.Hive{Name: req.Name, Kind: "ssh", Host: req.Host, Port: req.Port, User: req.User,
			Status: "online", AgentVersion: hc.handshake.Version, LastSeen: now, Added: now,
			Capabilities: map[string]string{"os": hc.handshake.OS, "arch": hc.handshake.Arch}}); err != nil {
			return err
		}
		if err := f.db.SetDevices(ctx, req.Name, devs.Devices, now); err != nil {
			return err
		}
		ev.Narrate("hive_added", fmt.Sprintf("hive %s added to %s", req.Name, inv.Path))
		return nil
	})
}

// inventoryMu serialises the edits of the inventory file (hive add of
// several hosts at once): each reloads, edits and saves under it, so that
// no edit is refused as a change made meanwhile.
var inventoryMu sync.Mutex

// recordHive adds h to the inventory file (nothing when it is there).
func (f *Fleet) recordHive(h inventory.Hive) (*inventory.Inventory, error) {
	inventoryMu.Lock()
	defer inventoryMu.Unlock()
	inv, err := f.loadInventory()
	if err != nil {
		return nil, err
	}
	if err := inv.Add(h); err != nil && !errors.Is(err, inventory.ErrExists) {
		return nil, err
	}
	if err := inv.Save(); err != nil {
		return nil, fmt.Errorf("save inventory: %w", err)
	}
	return inv, nil
}

// planHive connects to a host as hive add would and sends its install
// plan, changing nothing: not the host (the plan only reads), not the
// inventory, not the catalog, and not known_hosts — a new host key is
// trusted for this one connection through a copy of the file.
func (f *Fleet) planHive(ctx context.Context, ih inventory.Hive, acceptNew bool, ev Events) error {
	t, cfg := f.target(ih)
	before, err := os.ReadFile(cfg.KnownHosts)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("plan hive %s: %w", ih.Name, err)
	}
	if acceptNew {
		dir, err := os.MkdirTemp("", "rbee-plan-")
		if err != nil {
			return fmt.Errorf("plan hive %s: %w", ih.Name, err)
		}
		defer os.RemoveAll(dir)
		cfg.KnownHosts, cfg.AcceptNewHostKey = filepath.Join(dir, "known_hosts"), true
		if err := os.WriteFile(cfg.KnownHosts, before, 0o600); err != nil {
			return fmt.Errorf("plan hive %s: %w", ih.Name, err)
		}
	}
	ev.Narrate("hive_connect", fmt.Sprintf("connecting to hive %s (%s) for a dry run", ih.Name, describeTarget(t)))
	dctx, cancel := context.WithTimeout(ctx, f.cfg.ConnectTimeout)
	conn, err := remote.Dial(dctx, t, cfg)
	cancel()
	if err != nil {
		return sshError(ih.Name, err)
	}
	defer conn.Close()
	out := queenapi.InstallPlan{Hive: ih.Name, Host: describeTarget(t)}
	if acceptNew {
		out.NewHostKey = newHostKey(cfg.KnownHosts, len(before))
	}
	plan, perr := provision.PlanUp(ctx, conn, f.cfg.SSH.Artifacts)
	if plan.Probe.Home == "" && perr != nil {
		return rbee.Errorf(rbee.CodeHiveDown, "hive %s: %w", ih.Name, perr)
	}
	p := plan.Probe
	out.OS, out.Arch, out.Libc, out.Libffi, out.FreeBytes, out.Home = p.OS, p.Arch, p.Libc, p.Libffi, p.FreeBytes, p.Home
	out.Running, out.Reuse, out.Engine, out.Links = plan.Running, plan.Reuse, plan.Engine, plan.Links
	out.EngineKind, out.EngineWhy = plan.Choice.Kind(), plan.Choice.Why
	if pkg, ok := enginefetch.For(p.OS, p.Arch, plan.Choice.GPU); ok {
		out.EnginePackage = pkg.Name + "@" + pkg.Version
	}
	out.Files = []queenapi.PlannedFile{}
	for _, f := range plan.Files {
		out.Files = append(out.Files, queenapi.PlannedFile{Name: f.Name, Path: f.Dst, Bytes: f.Bytes, Upload: f.Upload})
	}
	out.UploadBytes, out.UploadFiles = plan.UploadBytes()
	if perr != nil {
		out.Problem = perr.Error()
	}
	data, err := json.Marshal(out)
	if err != nil {
		return fmt.Errorf("plan hive %s: %w", ih.Name, err)
	}
	ev.Send(rbee.Event{Type: rbee.EventNarration, Actor: me, Action: queenapi.EventInstallPlan, Data: data,
		Message: fmt.Sprintf("hive %s: would upload %d file(s), %s (%d bytes); dry run, nothing changed", ih.Name, out.UploadFiles, rbee.Bytes(uint64(out.UploadBytes)), out.UploadBytes)})
	if perr != nil {
		return rbee.Errorf(rbee.CodeHiveDown, "hive %s: %w", ih.Name, perr)
	}
	return nil
}

// newHostKey is the fingerprint of the key a dial appended to the
// known_hosts file at path after its first n bytes, or "".
func newHostKey(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) <= n {
		return ""
	}
	_, _, key, _, _, err := ssh.ParseKnownHosts(b[n:])
	if err != nil {
		return ""
	}
	return ssh.FingerprintSHA256(key)
}

func hiveInfo(h catalog.Hive) queenapi.HiveInfo {
	addr := h.Host
	if h.Kind == "local" {
		addr = "this machine"
	} else {
		if h.User != "" {
			addr = h.User + "@" + addr
		}
		if h.Port != 0 {
			addr += fmt.Sprintf(":%d", h.Port)
		}
	}
	return queenapi.HiveInfo{Name: h.Name, Kind: h.Kind, Address: addr, Status: h.Status, Reason: h.StatusReason, Version: h.AgentVersion,
		LastSeen: h.LastSeen, Devices: h.Devices}
}

// listHiveInfo lists hives from the catalog, as the pool last saw them
// (a lost connection shows at once, with its reason), without contacting
// any.
func (f *Fleet) listHiveInfo(w http.ResponseWriter, r *http.Request) {
	out, err := f.HiveInfos(r.Context())
	if err != nil {
		status := http.StatusInternalServerError
		if rbee.CodeOf(err) == rbee.CodeBadRequest {
			status = http.StatusBadRequest
		}
		reply.Error(w, status, err)
		return
	}
	reply.JSON(w, http.StatusOK, queenapi.Hives{Hives: out})
}

// HiveInfos lists the hives as the queen knows them now, without
// contacting any: the catalog, corrected by the inventory (an entry taken
// out, or with problems) and by the pool (connecting, online, last seen).
func (f *Fleet) HiveInfos(ctx context.Context) ([]queenapi.HiveInfo, error) {
	hs, err := f.db.Hives(ctx)
	if err != nil {
		return nil, err
	}
	// An inventory that does not load is said, not hidden behind the
	// catalog's last view of it.
	inv, err := f.loadInventory()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	out := []queenapi.HiveInfo{}
	for _, h := range hs {
		info := hiveInfo(h)
		if info.Kind == "ssh" {
			_, ok := inv.Hive(h.Name)
			bad, isBad := inv.BadHive(h.Name)
			if !ok && !isBad {
				continue // taken out of the inventory by hand: no hive any more
			}
			if isBad {
				info.Status, info.Reason = StatusInvalid, bad.Err.Error()
			} else {
				f.liveStatus(&info)
			}
		}
		seen[h.Name] = true
		out = append(out, info)
	}
	if inv != nil {
		for _, h := range inv.Hives {
			if !seen[h.Name] {
				out = append(out, queenapi.HiveInfo{Name: h.Name, Kind: "ssh", Address: h.Host, Status: catalog.StatusUnknown, Reason: "not contacted yet"})
			}
		}
		for _, b := range inv.Bad {
			if b.Hive.Name == "" || !seen[b.Hive.Name] {
				out = append(out, queenapi.HiveInfo{Name: badName(b), Kind: "ssh", Address: b.Hive.Host, Status: StatusInvalid, Reason: b.Err.Error()})
			}
		}
	}
	f.driverFacts(out)
	slices.SortStableFunc(out, func(a, b queenapi.HiveInfo) int { return naturalCompare(a.Name, b.Name) })
	return out, nil
}

// driverFacts adds what GPU drivers told at each hive's latest snapshot
// (load, temperature), which the catalog does not keep.
func (f *Fleet) driverFacts(hs []queenapi.HiveInfo) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range hs {
		last := f.devices[hs[i].Name]
		for j := range hs[i].Devices {
			d := &hs[i].Devices[j]
			for _, l := range last {
				if l.ID == d.ID {
					d.Utilization, d.TemperatureC = l.Utilization, l.TemperatureC
				}
			}
		}
	}
}

// StatusConnecting is the status of an SSH hive this queen is connecting
// to (at its start it reconnects the hives it knows): online is said only
// of a live connection.
const StatusConnecting = "connecting"

// liveStatus corrects an SSH hive's catalog status with the pool's view:
// online needs a connection of this queen (an earlier queen's "online" is
// not one), and LAST SEEN moves with the keepalives' answers.
func (f *Fleet) liveStatus(info *queenapi.HiveInfo) {
	v := f.pool.view(info.Name)
	switch {
	case v.online:
		info.Status, info.Reason = "online", ""
		if v.alive.After(info.LastSeen) {
			info.LastSeen = v.alive
		}
	case v.connecting:
		info.Status, info.Reason = StatusConnecting, ""
	case info.Status == "online":
		info.Status, info.Reason = catalog.StatusUnknown, "not connected since the queen started"
	}
}

// StatusInvalid is the status of a hive whose inventory entry has problems:
// it is left alone until the entry is fixed.
const StatusInvalid = "invalid"

// badName names a bad inventory entry: its name, or its place in the file
// when it has none that is usable.
func badName(b inventory.BadHive) string {
	if ValidHiveName(b.Hive.Name) == nil {
		return b.Hive.Name
	}
	return strings.TrimPrefix(b.Label, "hive ")
}

// hiveStatus contacts the hive now and reports it with its workers.
func (f *Fleet) hiveStatus(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ctx := r.Context()
	entry, _, err := f.resolveHive(ctx, name)
	if err != nil {
		reply.Error(w, http.StatusNotFound, err)
		return
	}
	h := &liveHive{f: f, name: name}
	s, err := h.Snapshot(ctx, Quiet{})
	if err != nil {
		f.SetStatus(name, false, err.Error())
		entry, _ = f.db.Hive(ctx, name)
		reply.JSON(w, http.StatusOK, hiveInfo(entry))
		return
	}
	entry, _ = f.db.Hive(ctx, name)
	info := hiveInfo(entry)
	info.Status, info.Reason, info.Devices, info.Workers = "online", "", s.Devices, s.Workers
	if hc, err := f.hiveConn(ctx, name, Quiet{}); err == nil {
		info.Host = hostFacts(ctx, hc)
	}
	reply.JSON(w, http.StatusOK, info)
}

// hostFacts is what is known of a connected hive's machine: the probe its
// SSH connection ran (a local probe for this machine's hive) and the
// agent's NVML answer.
func hostFacts(ctx context.Context, hc *Conn) *queenapi.HostFacts {
	var f queenapi.HostFacts
	var probe provision.Probe
	probed := false
	if hc.remote != nil {
		probe, probed = hc.remote.res.Probe, true
		p := probe
		f = queenapi.HostFacts{OS: p.OS, Arch: p.Arch, Machine: p.Machine, Libc: p.Libc, Libffi: p.Libffi, FreeBytes: p.FreeBytes, Home: p.Home}
	} else if rep, err := doctor.Run(ctx, doctor.Options{}); err == nil {
		d := rep.Facts
		f = queenapi.HostFacts{OS: d.OS, Arch: d.Arch, Machine: d.Machine, Libc: d.Libc, FreeBytes: d.FreeBytes, Home: d.Home}
		f.Libffi = slices.ContainsFunc(d.Libraries, func(l doctor.Lib) bool { return l.Name == "libffi.so.8" && l.Path != "" })
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		probe, err = provision.ProbeLocal(pctx)
		cancel()
		probed = err == nil
	}
	if probed {
		c := provision.ChooseEngine(probe, softwareGPU())
		f.EngineKind, f.EngineWhy = c.Kind(), c.Why
	}
	f.OS, f.Arch = cmp.Or(f.OS, hc.handshake.OS), cmp.Or(f.Arch, hc.handshake.Arch)
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if devs, err := hc.client.Devices(dctx); err == nil {
		f.NVML, f.EngineDevices = devs.NVML, devs.Engines
		if v, ok := strings.CutPrefix(devs.NVML, "driver "); ok {
			f.NVIDIADriver = v
		}
	}
	if ws, err := hc.client.WorkerBinaries(dctx); err == nil {
		for _, wb := range ws {
			if strings.HasPrefix(wb.Type, "engine") {
				f.Engines = append(f.Engines, fmt.Sprintf("%s (%s)", wb.Version, strings.Join(wb.Capabilities, ", ")))
			}
		}
	}
	return &f
}

// removeHive forgets a hive; with ?purge=1 it also stops its agent and
// deletes ~/.rbee on the host.
func (f *Fleet) removeHive(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ctx := r.Context()
	inventoryMu.Lock()
	defer inventoryMu.Unlock()
	inv, err := f.loadInventory()
	if err != nil {
		reply.Error(w, http.StatusBadRequest, err)
		return
	}
	_, inInv := inv.Hive(name)
	_, isBad := inv.BadHive(name)
	_, dbErr := f.db.Hive(ctx, name)
	if !inInv && !isBad && errors.Is(dbErr, catalog.ErrNotFound) {
		reply.Error(w, http.StatusNotFound, rbee.Errorf(rbee.CodeHiveUnknown, "no hive named %q", name))
		return
	}
	if r.URL.Query().Get("purge") == "1" && inInv {
		if err := f.purge(ctx, name); err != nil {
			f.pool.drop(name) // the hive stays: the next job connects afresh
			reply.Error(w, http.StatusBadGateway, err)
			return
		}
	}
	f.pool.drop(name)
	if inInv || isBad {
		if err := inv.Remove(name); err != nil {
			reply.Error(w, http.StatusInternalServerError, err)
			return
		}
		if err := inv.Save(); err != nil {
			reply.Error(w, http.StatusInternalServerError, err)
			return
		}
	}
	if dbErr == nil {
		_ = f.db.RemoveHive(ctx, name)
	}
	w.WriteHeader(http.StatusNoContent)
}

// purge stops a remote hive's agent (and its workers) and removes ~/.rbee
// on the host.
func (f *Fleet) purge(ctx context.Context, name string) error {
	if name == LocalHive {
		return rbee.Errorf(rbee.CodeBadRequest, "purge: hive %s is this machine's; rbee queen stop stops it", name)
	}
	// Nothing may start the agent again meanwhile: no job, no redial.
	hc, err := f.pool.retire(ctx, name)
	if err != nil {
		return rbee.Errorf(rbee.CodeCancelled, "purge: %w", err)
	}
	if hc == nil || hc.remote == nil {
		// No healthy agent (one that cannot start is what purge is for):
		// over SSH alone.
		if err := f.purgeBare(ctx, name); err != nil {
			return rbee.Errorf(rbee.CodeOf(err), "purge: %w", err)
		}
		return nil
	}
	_ = hc.client.Shutdown(ctx, false) // stops its workers too
	if err := provision.WaitExit(ctx, hc.remote.conn, hc.handshake.PID, 30*time.Second); err != nil {
		return rbee.Errorf(rbee.CodeHiveDown, "purge: the agent: %w", err)
	}
	if _, err := hc.remote.conn.Run(ctx, []string{"rm", "-rf", "--", hc.remote.layout.RbeeDir()}, nil); err != nil {
		return rbee.Errorf(rbee.CodeHiveDown, "purge: %w", err)
	}
	return nil
}

// purgeBare purges a host whose agent does not answer, over SSH alone:
// every process started from its rbee directory (the agent, its workers,
// RPC servers) is stopped, then the directory removed.
func (f *Fleet) purgeBare(ctx context.Context, name string) error {
	ih, err := f.inventoryHive(name)
	if err != nil {
		return err
	}
	t, cfg := f.target(ih)
	dctx, cancel := context.WithTimeout(ctx, f.cfg.ConnectTimeout)
	conn, err := remote.Dial(dctx, t, cfg)
	cancel()
	if err != nil {
		return sshError(name, err)
	}
	defer conn.Close()
	p, err := provision.ProbeHost(ctx, conn)
	if err != nil {
		return rbee.Errorf(rbee.CodeHiveDown, "probe: %w", err)
	}
	dir := provision.Layout{Home: p.Home}.RbeeDir()
	// pkill's pattern is an extended regexp: the directory, quoted.
	pattern := "^" + regexp.QuoteMeta(dir+"/")
	for _, sig := range []string{"-TERM", "-KILL"} {
		if _, err := conn.Run(ctx, []string{"pkill", sig, "-f", "--", pattern}, nil); err != nil && !noProcess(err) {
			return rbee.Errorf(rbee.CodeHiveDown, "stop rbee's processes: %w", err)
		}
		if sig == "-TERM" {
			select { // a moment to end on their own
			case <-time.After(2 * time.Second):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	if _, err := conn.Run(ctx, []string{"rm", "-rf", "--", dir}, nil); err != nil {
		return rbee.Errorf(rbee.CodeHiveDown, "remove %s: %w", dir, err)
	}
	return nil
}

// noProcess is pkill's "nothing matched" (exit 1).
func noProcess(err error) bool {
	var ee *remote.ExitError
	return errors.As(err, &ee) && ee.Status == 1
}

// hiveLogs returns the end of the agent's log.
func (f *Fleet) hiveLogs(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ctx := r.Context()
	_, isRemote, err := f.resolveHive(ctx, name)
	if err != nil {
		reply.Error(w, http.StatusNotFound, err)
		return
	}
	var out []byte
	if !isRemote {
		out, err = proc.Tail(f.cfg.Home.Log("hive-localhost"), 200)
	} else {
		var hc *Conn
		if hc, err = f.hiveConn(ctx, name, Quiet{}); err == nil {
			out, err = hc.remote.conn.Run(ctx, []string{"tail", "-n", "200", hc.remote.layout.LogPath()}, nil)
		}
	}
	if err != nil {
		reply.Error(w, http.StatusBadGateway, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write(out)
}

// up connects every inventory hive in parallel, one event per host.
func (f *Fleet) up(w http.ResponseWriter, r *http.Request) {
	var req queenapi.UpRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		reply.Error(w, http.StatusBadRequest, rbee.Errorf(rbee.CodeBadRequest, "up: %w", err))
		return
	}
	f.streamOp(w, func(ev Events) error {
		failed, err := f.upAll(r.Context(), ev, req.AcceptNewHostKey)
		if err != nil {
			return err
		}
		if failed > 0 {
			return rbee.Errorf(rbee.CodeHiveDown, "%d hive(s) could not be brought up", failed)
		}
		return nil
	})
}

// upAll connects every inventory hive in parallel; an entry with problems
// fails on its own line. acceptNew records the host keys of hosts not yet
// in known_hosts (for this call only: redials check them).
func (f *Fleet) upAll(ctx context.Context, ev Events, acceptNew bool) (failed int, err error) {
	inv, err := f.loadInventory()
	if err != nil {
		return 0, err
	}
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	for _, b := range inv.Bad {
		e := rbee.FailErr("hive "+badName(b), rbee.Errorf(rbee.CodeBadRequest, "%w", b.Err))
		e.Hint = "fix the entry in " + inv.Path + ", or rbee hive rm it"
		ev.Send(e)
		failed++
	}
	for _, h := range inv.Hives {
		if h.Disabled {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			was, _ := f.pool.state(h.Name)
			e := rbee.Event{Type: rbee.EventNarration, Actor: "hive " + h.Name, Action: "hive_up"}
			hc, err := f.pool.getWith(ctx, h.Name, f.remoteConnector(h, acceptNew), Quiet{}, !acceptNew)
			if acceptNew {
				f.pool.setConnector(h.Name, f.remoteConnector(h, false))
			}
			var s Snapshot
			if err == nil {
				lh := &liveHive{f: f, name: h.Name}
				s, err = lh.Snapshot(ctx, Quiet{})
			}
			if err != nil {
				e = rbee.FailErr("hive "+h.Name, err)
				mu.Lock()
				failed++
				mu.Unlock()
			} else {
				how := "running"
				switch {
				case was:
					how = "connected"
				case hc.remote != nil && hc.remote.res.Installed:
					how = "started"
				}
				msg := fmt.Sprintf("up: rbee-hive %s %s (%s", hc.handshake.Version, how, time.Since(start).Round(time.Millisecond))
				if !was && hc.remote != nil {
					msg += ": " + hc.remote.res.Timings()
				}
				e.Message = msg + "), " + describeDevices(s.Devices)
			}
			mu.Lock()
			ev.Send(e)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return failed, nil
}

// naturalCompare orders names with their numbers as numbers: h2 before
// h10 (names equal but for leading zeros, by their text).
func naturalCompare(a, b string) int {
	if c := natural(a, b); c != 0 {
		return c
	}
	return strings.Compare(a, b)
}

func natural(a, b string) int {
	for a != "" && b != "" {
		da, db := digitsPrefix(a), digitsPrefix(b)
		if da != "" && db != "" {
			na, nb := strings.TrimLeft(da, "0"), strings.TrimLeft(db, "0")
			if c := cmp.Compare(len(na), len(nb)); c != 0 {
				return c
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			a, b = a[len(da):], b[len(db):]
			continue
		}
		if a[0] != b[0] {
			return cmp.Compare(a[0], b[0])
		}
		a, b = a[1:], b[1:]
	}
	return cmp.Compare(len(a), len(b))
}

func digitsPrefix(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}
