package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/bundle"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/hiveapi"
)

// EnvSoftwareGPU lists software GPUs (Mesa's llvmpipe) as devices when set
// to 1. They are CPUs behind a GPU API: useful to test a GPU backend where
// no GPU is, never a good pick on their own.
const EnvSoftwareGPU = "RBEE_SOFTWARE_GPU"

// envVKVisible is llama.cpp's list of the Vulkan devices it uses, by the
// loader's index ("0,1"). Unset, it skips CPU-type devices (llvmpipe).
const envVKVisible = "GGML_VK_VISIBLE_DEVICES"

// engineDevice is a device as rbee-worker --list-devices prints it.
type engineDevice struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Type        string `json:"type"`
	FreeBytes   uint64 `json:"free_bytes"`
	TotalBytes  uint64 `json:"total_bytes"`
	Endpoint    string `json:"endpoint"`
}

// backendKind is the bundle backend that drives an engine device:
// "Vulkan0" → "vulkan", "CUDA1" → "cuda".
func backendKind(name string) string {
	return strings.ToLower(strings.TrimRight(name, "0123456789"))
}

// isSoftware tells a software rasteriser by the name its driver gives it.
func isSoftware(desc string) bool {
	d := strings.ToLower(desc)
	return strings.Contains(d, "llvmpipe") || strings.Contains(d, "lavapipe") || strings.Contains(d, "swiftshader")
}

// engineProbe remembers what the GPU bundles' backends reported, for a
// short while: a listing starts a process that initialises the backends
// (0.1–0.2 s), and free memory moves.
type engineProbe struct {
	mu      sync.Mutex
	at      time.Time
	key     string
	devs    []engineDevice
	vkEnv   string // GGML_VK_VISIBLE_DEVICES for workers; "" = llama.cpp's default
	note    string // what the last listing said went wrong; "" when fine
	ttl     time.Duration
	listing func(ctx context.Context, dir string, env []string) ([]engineDevice, error)
}

// gpuBundles are the newest installed bundle of each GPU backend (and the
// agent's own when it has one), the ones whose devices are listed.
func (a *Agent) gpuBundles(ctx context.Context) []string {
	var dirs []string
	newest := map[string]catalog.WorkerBinary{}
	if ws, err := a.db.WorkerBinaries(ctx); err == nil {
		for _, wb := range ws {
			if wb.Type != TypeEngine {
				continue
			}
			for _, c := range wb.Capabilities {
				if slices.Contains(gpuBackends, c) && (newest[c].ID == "" || wb.Added.After(newest[c].Added)) {
					newest[c] = wb
				}
			}
		}
	}
	for _, k := range gpuBackends {
		if wb, ok := newest[k]; ok && !slices.Contains(dirs, wb.Path) {
			dirs = append(dirs, wb.Path)
		}
	}
	if d := a.cfg.EngineDir; d != "" && !slices.Contains(dirs, d) {
		if m, err := bundle.Load(d); err == nil && slices.ContainsFunc(m.Backends, func(b string) bool { return slices.Contains(gpuBackends, b) }) {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// engineDevices returns the GPUs the installed GPU bundles' backends
// report (software ones only with RBEE_SOFTWARE_GPU=1), the
// GGML_VK_VISIBLE_DEVICES a worker needs to see them as listed, and what
// went wrong listing them.
func (a *Agent) engineDevices(ctx context.Context) (devs []engineDevice, vkEnv, note string) {
	p := &a.engines
	dirs := a.gpuBundles(ctx)
	key := strings.Join(dirs, "\x00")
	p.mu.Lock()
	defer p.mu.Unlock()
	if key != p.key || time.Since(p.at) >= p.ttl {
		p.devs, p.vkEnv, p.note = p.list(ctx, dirs)
		p.key, p.at = key, time.Now()
	}
	return p.devs, p.vkEnv, p.note
}

// list asks each bundle's backends for their devices.
func (p *engineProbe) list(ctx context.Context, dirs []string) (devs []engineDevice, vkEnv, note string) {
	software := os.Getenv(EnvSoftwareGPU) == "1"
	var notes []string
	for _, dir := range dirs {
		env, vk := []string{"CUDA_DEVICE_ORDER=PCI_BUS_ID"}, os.Getenv(envVKVisible)
		if vk == "" && software {
			// llama.cpp lists a CPU-type Vulkan device only when named:
			// name them all, one more at a time, until one is too many.
			var best []engineDevice
			for n := 1; n <= 8; n++ {
				idx := make([]string, n)
				for i := range idx {
					idx[i] = strconv.Itoa(i)
				}
				try := strings.Join(idx, ",")
				got, err := p.listing(ctx, dir, append(env, envVKVisible+"="+try))
				if err != nil || countKind(got, "vulkan") < n {
					break
				}
				best, vk = got, try
			}
			if vk != "" {
				devs = addDevices(devs, gpusOf(best, software))
				vkEnv = vk
				continue
			}
		}
		if vk != "" {
			env = append(env, envVKVisible+"="+vk)
			vkEnv = vk
		}
		got, err := p.listing(ctx, dir, env)
		if err != nil {
			notes = append(notes, err.Error())
			continue
		}
		devs = addDevices(devs, gpusOf(got, software))
	}
	return devs, vkEnv, strings.Join(notes, "; ")
}

// addDevices adds the devices of one bundle's listing that another's did
// not list already.
func addDevices(devs, more []engineDevice) []engineDevice {
	for _, d := range more {
		if !slices.ContainsFunc(devs, func(e engineDevice) bool { return e.Name == d.Name }) {
			devs = append(devs, d)
		}
	}
	return devs
}

func countKind(devs []engineDevice, kind string) int {
	n := 0
	for _, d := range devs {
		if backendKind(d.Name) == kind {
			n++
		}
	}
	return n
}

// gpusOf keeps the host's own GPUs of a listing.
func gpusOf(devs []engineDevice, software bool) []engineDevice {
	var out []engineDevice
	for _, d := range devs {
		if (d.Type != "gpu" && d.Type != "igpu") || d.Endpoint != "" || strings.HasPrefix(d.Name, "RPC") {
			continue
		}
		if isSoftware(d.Description) && !software {
			continue
		}
		out = append(out, d)
	}
	return out
}

// listEngineDevices runs rbee-worker --list-devices on a bundle.
func (a *Agent) listEngineDevices(ctx context.Context, dir string, env []string) ([]engineDevice, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, a.cfg.WorkerBin, "--list-devices", "--engine", dir)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("list the devices of engine %s: %w: %s", dir, err, strings.TrimSpace(lastLine(stderr.String())))
	}
	var devs []engineDevice
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var d engineDevice
		if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
			return nil, fmt.Errorf("list the devices of engine %s: %w", dir, err)
		}
		devs = append(devs, d)
	}
	return devs, nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// mergeDevices joins NVML's view (gpus, by NVML index, then the CPU) with
// the engine backends': a CUDA device is the NVML GPU of its index (both
// in PCI bus order) and gets its backend name; a Vulkan device that is an
// NVML GPU (same name) drives it when no CUDA device does; every other
// backend GPU (AMD, Intel, software) is listed after them as gpuN with
// the backend's memory figures.
func mergeDevices(nvml []rbee.Device, eng []engineDevice) []rbee.Device {
	var gpus, rest []rbee.Device
	for _, d := range nvml {
		if d.Kind == rbee.DeviceGPU {
			gpus = append(gpus, d)
		} else {
			rest = append(rest, d)
		}
	}
	// CUDA first: CUDA and NVML number the GPUs alike (PCI bus order).
	others := eng[:0:0]
	for _, e := range eng {
		if backendKind(e.Name) != "cuda" {
			others = append(others, e)
			continue
		}
		if i, err := strconv.Atoi(strings.TrimPrefix(e.Name, "CUDA")); err == nil && i < len(gpus) {
			gpus[i].Backend = e.Name
		} else {
			others = append(others, e) // one NVML does not list
		}
	}
	// Another backend's device that bears an NVML GPU's name is that GPU
	// (each GPU claimed once per backend): it drives it when CUDA does not.
	claimed := map[string]bool{} // "vulkan/0"
	var extra []rbee.Device
	for _, e := range others {
		kind := backendKind(e.Name)
		i := slices.IndexFunc(gpus, func(g rbee.Device) bool { return g.Name == e.Description && !claimed[kind+"/"+g.ID] })
		if i < 0 {
			extra = append(extra, rbee.Device{Kind: rbee.DeviceGPU, Name: e.Description, TotalBytes: e.TotalBytes, FreeBytes: e.FreeBytes,
				Backend: e.Name, Software: isSoftware(e.Description)})
			continue
		}
		claimed[kind+"/"+gpus[i].ID] = true
		if gpus[i].Backend == "" {
			gpus[i].Backend = e.Name
		}
	}
	out := append(gpus, extra...)
	for i := range out {
		if out[i].ID == "" { // a GPU NVML does not see, numbered after its
			out[i].ID, out[i].Index = fmt.Sprintf("gpu%d", i), i
		}
	}
	return append(out, rest...)
}

// reserveSplit is the VRAM checker for one worker split across several
// GPUs of this host ("gpu0,gpu1"): the bytes are shared by room, each
// device charged its share, all or none.
func (a *Agent) reserveSplit(w http.ResponseWriter, req hiveapi.ReserveRequest, devs []rbee.Device) {
	ids := strings.Split(req.Device, ",")
	var group []rbee.Device
	var rooms []uint64
	var sum uint64
	for _, id := range ids {
		i := slices.IndexFunc(devs, func(d rbee.Device) bool { return d.ID == id })
		if i < 0 || devs[i].Kind != rbee.DeviceGPU {
			writeErr(w, http.StatusNotFound, rbee.CodeDeviceUnknown, fmt.Sprintf("hive %s has no GPU %q (of %s)", a.cfg.Name, id, req.Device))
			return
		}
		d := devs[i]
		room := a.vram.room(d.ID, d.TotalBytes, d.FreeBytes)
		group, rooms, sum = append(group, d), append(rooms, room), sum+room
	}
	if req.Bytes > sum {
		writeJSON(w, http.StatusConflict, hiveapi.NoRoom{
			Error: rbee.Error{Code: rbee.CodeNoRoom, Message: fmt.Sprintf("%s have %s free together, %s requested",
				req.Device, rbee.Bytes(sum), rbee.Bytes(req.Bytes))},
			RequestedBytes: req.Bytes, FreeBytes: sum, Device: req.Device,
		})
		return
	}
	var got []string
	left := req.Bytes
	for i, d := range group {
		share := left
		if i < len(group)-1 {
			share = min(left, uint64(float64(req.Bytes)*float64(rooms[i])/float64(sum)))
		}
		left -= share
		id, _, ok := a.vram.reserve(d.ID, share, d.TotalBytes, d.FreeBytes)
		if !ok {
			for _, g := range got {
				a.vram.release(g)
			}
			writeErr(w, http.StatusConflict, rbee.CodeNoRoom, fmt.Sprintf("%s (%s) has no room for its share of %s", d.ID, d.Name, rbee.Bytes(share)))
			return
		}
		got = append(got, id)
	}
	w.Header().Set(hiveapi.ReservationHeader, strings.Join(got, "+"))
	w.WriteHeader(http.StatusNoContent)
}

// deviceBackend finds how a worker reaches device ("gpu1", "gpu0,gpu1"):
// the engine's names for it, the environment that shows the worker those
// devices as listed, and the bundle backend that drives them ("vulkan",
// "cuda"; "" for the CPU and a GPU NVML alone saw).
func (a *Agent) deviceBackend(ctx context.Context, device string) (backend string, env []string, kind string, err error) {
	if !strings.HasPrefix(device, "gpu") {
		return "", nil, "", nil
	}
	a.detectMu.Lock()
	rep, err := a.detectLocked(ctx)
	a.detectMu.Unlock()
	if err != nil {
		return "", nil, "", err
	}
	ids := strings.Split(device, ",")
	var names []string
	for _, id := range ids {
		i := slices.IndexFunc(rep.Devices, func(d rbee.Device) bool { return d.ID == id })
		if i < 0 {
			return "", nil, "", rbee.Errorf(rbee.CodeDeviceUnknown, "hive %s has no device %q", a.cfg.Name, id)
		}
		d := rep.Devices[i]
		k := backendKind(d.Backend)
		switch {
		case d.Backend == "" && len(ids) > 1:
			return "", nil, "", rbee.Errorf(rbee.CodeEngine, "hive %s: %s (%s) has no engine bundle that drives it, and a split across GPUs needs one", a.cfg.Name, id, d.Name).
				WithHint("rbee worker install --hive " + a.cfg.Name + " SOURCE installs a GPU bundle (see rbee worker install --help)")
		case kind != "" && k != kind:
			return "", nil, "", rbee.Errorf(rbee.CodeBadRequest, "hive %s: %s are driven by different backends (%s and %s); a split across GPUs needs one", a.cfg.Name, device, kind, k)
		}
		kind = k
		names = append(names, d.Backend)
	}
	if kind == "" {
		return "", nil, "", nil
	}
	if kind == "vulkan" && rep.vkEnv != "" {
		env = append(env, envVKVisible+"="+rep.vkEnv)
	}
	return strings.Join(names, ","), env, kind, nil
}
