package queen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/inventory"
	"github.com/rbee-dev/rbee/provision"
	"github.com/rbee-dev/rbee/sse"
)

// AddHiveRequest is the body of POST /v1/hives: rbee hive add.
type AddHiveRequest struct {
	Name             string `json:"name"`
	Host             string `json:"host"`
	User             string `json:"user,omitempty"`
	Port             int    `json:"port,omitempty"`
	Identity         string `json:"identity,omitempty"`
	AcceptNewHostKey bool   `json:"accept_new_host_key,omitempty"`
}

// HiveInfo is one hive in GET /v1/hives and GET /v1/hives/{name}.
type HiveInfo struct {
	Name     string            `json:"name"`
	Kind     string            `json:"kind"`
	Address  string            `json:"address"`
	Status   string            `json:"status"`
	Reason   string            `json:"reason,omitempty"`
	Version  string            `json:"agent_version,omitempty"`
	LastSeen time.Time         `json:"last_seen"`
	Devices  []rbee.Device  `json:"devices"`
	Workers  []rbee.WorkerInfo `json:"workers,omitempty"`
}

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
func ValidateAdd(r AddHiveRequest) error {
	if err := ValidHiveName(r.Name); err != nil {
		return err
	}
	if !hostChars(r.Host) {
		return rbee.Errorf(rbee.CodeBadRequest, "host %q: only letters, digits, '.', '-', '_' and ':' are allowed", r.Host)
	}
	if r.User != "" && (!hostChars(r.User) || strings.Contains(r.User, ":")) {
		return rbee.Errorf(rbee.CodeBadRequest, "user %q: only letters, digits, '.', '-' and '_' are allowed", r.User)
	}
	if r.Port < 0 || r.Port > 65535 {
		return rbee.Errorf(rbee.CodeBadRequest, "port %d is out of range (1-65535)", r.Port)
	}
	return nil
}

func (q *Queen) streamOp(w http.ResponseWriter, op func(send func(rbee.Event) error) error) {
	sw := sse.NewWriter(w)
	defer sw.Close()
	send := func(ev rbee.Event) error {
		if ev.Time.IsZero() {
			ev.Time = time.Now()
		}
		return sw.Send(ev)
	}
	if err := op(send); err != nil {
		ev := rbee.Fail(me, rbee.CodeOf(err), err.Error())
		var re *rbee.Error
		if errors.As(err, &re) && re.Hint != "" {
			ev.Message += "\nhint: " + re.Hint
		}
		_ = send(ev)
		return
	}
	_ = send(rbee.Event{Type: rbee.EventDone, Actor: me})
}

// addHive connects, installs, probes devices, and records the hive in the
// inventory and the catalog. Running it twice is harmless.
func (q *Queen) addHive(w http.ResponseWriter, r *http.Request) {
	var req AddHiveRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, rbee.CodeBadRequest, "add hive: "+err.Error())
		return
	}
	if err := ValidateAdd(req); err != nil {
		writeErr(w, http.StatusBadRequest, rbee.CodeOf(err), err.Error())
		return
	}
	inv, err := q.loadInventory()
	if err != nil {
		writeErr(w, http.StatusBadRequest, rbee.CodeOf(err), err.Error())
		return
	}
	ih := inventory.Hive{Name: req.Name, Host: req.Host, User: req.User, Port: req.Port, Identity: req.Identity}
	if old, ok := inv.Hive(req.Name); ok && (old.Host != ih.Host || old.User != ih.User || old.Port != ih.Port) {
		writeErr(w, http.StatusConflict, rbee.CodeBadRequest, fmt.Sprintf("hive %s already names %s in %s; rbee hive rm it first or pick another --name", req.Name, old.Host, inv.Path))
		return
	}
	q.streamOp(w, func(send func(rbee.Event) error) error {
		ctx := r.Context()
		narrate := func(action, msg string) { _ = send(rbee.Narrate(me, action, msg)) }
		hc, err := q.connectRemote(ctx, ih, req.AcceptNewHostKey, narrate)
		if err != nil {
			return err
		}
		devs, err := hc.client.Devices(ctx)
		if err != nil {
			return rbee.Errorf(rbee.CodeHiveDown, "hive %s: devices: %v", req.Name, err)
		}
		narrate("devices_detected", fmt.Sprintf("hive %s has %s", req.Name, describeDevices(devs.Devices)))
		if err := inv.Add(ih); err != nil && !errors.Is(err, inventory.ErrExists) {
			return err
		}
		if err := inv.Save(); err != nil {
			return fmt.Errorf("save inventory: %w", err)
		}
		now := time.Now()
		if err := q.db.UpsertHive(ctx, catalog.Hive{Name: req.Name, Kind: "ssh", Host: req.Host, Port: req.Port, User: req.User,
			Status: "online", AgentVersion: hc.handshake.Version, LastSeen: now, Added: now,
			Capabilities: map[string]string{"os": hc.handshake.OS, "arch": hc.handshake.Arch}}); err != nil {
			return err
		}
		if err := q.db.SetDevices(ctx, req.Name, devs.Devices, now); err != nil {
			return err
		}
		narrate("hive_added", fmt.Sprintf("hive %s added to %s", req.Name, inv.Path))
		return nil
	})
}

func (q *Queen) hiveInfo(ctx context.Context, h catalog.Hive) HiveInfo {
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
	return HiveInfo{Name: h.Name, Kind: h.Kind, Address: addr, Status: h.Status, Reason: h.StatusReason, Version: h.AgentVersion,
		LastSeen: h.LastSeen, Devices: h.Devices}
}

func (q *Queen) listHiveInfo(w http.ResponseWriter, r *http.Request) {
	hs, err := q.db.Hives(r.Context())
	if err != nil {
		writeErr(w, http.StatusInternalServerError, rbee.CodeInternal, err.Error())
		return
	}
	seen := map[string]bool{}
	out := []HiveInfo{}
	for _, h := range hs {
		seen[h.Name] = true
		out = append(out, q.hiveInfo(r.Context(), h))
	}
	if inv, err := q.loadInventory(); err == nil {
		for _, h := range inv.Hives {
			if !seen[h.Name] {
				out = append(out, HiveInfo{Name: h.Name, Kind: "ssh", Address: h.Host, Status: "unknown", Reason: "not contacted yet"})
			}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"hives": out})
}

// hiveStatus contacts the hive now and reports it with its workers.
func (q *Queen) hiveStatus(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ctx := r.Context()
	entry, inv, err := q.resolveHive(ctx, name)
	if err != nil {
		writeErr(w, http.StatusNotFound, rbee.CodeOf(err), err.Error())
		return
	}
	var hc *hiveConn
	quiet := func(string, string) {}
	if inv != nil {
		hc, err = q.connectRemote(ctx, *inv, false, quiet)
	} else {
		hc, err = q.localHive(ctx, quiet)
	}
	if err != nil {
		q.markOffline(name, err)
		entry, _ = q.db.Hive(ctx, name)
		writeJSON(w, http.StatusOK, q.hiveInfo(ctx, entry))
		return
	}
	info := q.hiveInfo(ctx, entry)
	info.Status, info.Reason, info.Version, info.LastSeen = "online", "", hc.handshake.Version, time.Now()
	if devs, err := hc.client.Devices(ctx); err == nil {
		_ = q.db.SetDevices(ctx, name, devs.Devices, time.Now())
		info.Devices = devs.Devices
	}
	info.Workers, _ = hc.client.Workers(ctx)
	_ = q.db.SetStatus(ctx, name, "online", "", time.Now())
	writeJSON(w, http.StatusOK, info)
}

// removeHive forgets a hive; with ?purge=1 it also stops its agent and
// deletes ~/.rbee on the host.
func (q *Queen) removeHive(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ctx := r.Context()
	inv, err := q.loadInventory()
	if err != nil {
		writeErr(w, http.StatusBadRequest, rbee.CodeOf(err), err.Error())
		return
	}
	ih, inInv := inv.Hive(name)
	_, dbErr := q.db.Hive(ctx, name)
	if !inInv && errors.Is(dbErr, catalog.ErrNotFound) {
		writeErr(w, http.StatusNotFound, rbee.CodeHiveUnknown, fmt.Sprintf("no hive named %q", name))
		return
	}
	if r.URL.Query().Get("purge") == "1" && inInv {
		hc, err := q.connectRemote(ctx, ih, false, func(string, string) {})
		if err != nil {
			writeErr(w, http.StatusBadGateway, rbee.CodeOf(err), "purge: "+err.Error())
			return
		}
		_ = hc.client.Shutdown(ctx, false) // stops its workers too
		if err := provision.WaitExit(ctx, hc.remote.conn, hc.handshake.PID, 30*time.Second); err != nil {
			writeErr(w, http.StatusBadGateway, rbee.CodeHiveDown, "purge: the agent: "+err.Error())
			return
		}
		if _, err := hc.remote.conn.Run(ctx, []string{"rm", "-rf", "--", hc.remote.layout.RbeeDir()}, nil); err != nil {
			writeErr(w, http.StatusBadGateway, rbee.CodeHiveDown, "purge: "+err.Error())
			return
		}
	}
	q.mu.Lock()
	if hc := q.hives[name]; hc != nil {
		hc.client.Close()
		if hc.remote != nil {
			hc.remote.conn.Close()
		}
		delete(q.hives, name)
	}
	q.mu.Unlock()
	if inInv {
		if err := inv.Remove(name); err != nil {
			writeErr(w, http.StatusInternalServerError, rbee.CodeInternal, err.Error())
			return
		}
		if err := inv.Save(); err != nil {
			writeErr(w, http.StatusInternalServerError, rbee.CodeInternal, err.Error())
			return
		}
	}
	if dbErr == nil {
		_ = q.db.RemoveHive(ctx, name)
	}
	w.WriteHeader(http.StatusNoContent)
}

// hiveLogs returns the end of the agent's log.
func (q *Queen) hiveLogs(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ctx := r.Context()
	_, inv, err := q.resolveHive(ctx, name)
	if err != nil {
		writeErr(w, http.StatusNotFound, rbee.CodeOf(err), err.Error())
		return
	}
	var out []byte
	if inv == nil {
		out, err = tailFile(q.cfg.Home+"/logs/hive-localhost.log", 200)
	} else {
		var hc *hiveConn
		if hc, err = q.connectRemote(ctx, *inv, false, func(string, string) {}); err == nil {
			out, err = hc.remote.conn.Run(ctx, []string{"tail", "-n", "200", hc.remote.layout.LogPath()}, nil)
		}
	}
	if err != nil {
		writeErr(w, http.StatusBadGateway, rbee.CodeOf(err), err.Error())
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write(out)
}

// up connects every inventory hive in parallel, one event per host.
func (q *Queen) up(w http.ResponseWriter, r *http.Request) {
	q.streamOp(w, func(send func(rbee.Event) error) error {
		failed, err := q.upAll(r.Context(), send)
		if err != nil {
			return err
		}
		if failed > 0 {
			return rbee.Errorf(rbee.CodeHiveDown, "%d hive(s) could not be brought up", failed)
		}
		return nil
	})
}
