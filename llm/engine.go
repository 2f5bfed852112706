package llm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/hybridgroup/yzma/pkg/llama"
	"github.com/jupiterrider/ffi"
)

// ErrNoLibffi means the host lacks libffi.so.8, which yzma needs to call
// into llama.cpp.
var ErrNoLibffi = errors.New("libffi.so.8 not found")

// ErrEngineFile means a library the engine needs is missing from the bundle.
var ErrEngineFile = errors.New("engine library missing")

// RequiredLibs are the files yzma opens by exact name from the bundle.
var RequiredLibs = []string{"libllama.so", "libggml.so", "libggml-base.so"}

// Device is a compute device llama.cpp's backends found.
type Device struct {
	Name        string `json:"name"`        // ggml's name, e.g. "CPU", "CUDA0"
	Description string `json:"description"` // e.g. the GPU model
	Type        string `json:"type"`        // cpu, gpu, igpu, accel
	FreeBytes   uint64 `json:"free_bytes"`
	TotalBytes  uint64 `json:"total_bytes"`
	// Endpoint is the RPC server (HOST:PORT) of a device another host
	// serves (see Engine.AddRPCServers); "" for this host's devices.
	Endpoint string `json:"endpoint,omitempty"`
}

// Engine is llama.cpp loaded from one bundle directory. A process can load
// only one engine; Load returns the same one for the same directory.
type Engine struct {
	Dir     string
	devices []Device

	rpcOnce  sync.Once
	rpcFns   *rpcFuncs
	rpcErr   error
	rpcMu    sync.Mutex
	rpcAdded map[string]bool
}

var (
	loadMu     sync.Mutex
	loadedDir  string
	loadedEng  *Engine
	loadResult error
)

// Preflight checks what Load needs without loading anything: libffi in the
// process and the bundle's required libraries, and at least one CPU backend.
func Preflight(dir string) error {
	if err := ffi.LoadError(); err != nil {
		return fmt.Errorf("%w (%v); install it (Debian/Ubuntu: apt-get install libffi8, Fedora: dnf install libffi)", ErrNoLibffi, err)
	}
	if dir == "" {
		return fmt.Errorf("no engine directory given; pass --engine DIR (run `make engine` for a CPU bundle)")
	}
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("engine %s: %w; pass --engine with a bundle directory", dir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("engine %s: not a directory; pass a bundle directory, not an archive", dir)
	}
	for _, name := range RequiredLibs {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("engine %s: %w: %s; reinstall the bundle (make engine)", dir, ErrEngineFile, name)
		}
	}
	backends, _ := filepath.Glob(filepath.Join(dir, "libggml-*.so"))
	n := 0
	for _, b := range backends {
		if !strings.HasSuffix(b, "libggml-base.so") {
			n++
		}
	}
	if n == 0 {
		return fmt.Errorf("engine %s: %w: no backend library (libggml-cpu-*.so, libggml-cuda.so, ...)", dir, ErrEngineFile)
	}
	return nil
}

// Load loads llama.cpp from the bundle in dir and initialises its backends.
// llama.cpp's own log lines are silenced.
func Load(dir string) (*Engine, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("load engine: %w", err)
	}
	loadMu.Lock()
	defer loadMu.Unlock()
	if loadedDir != "" {
		if loadedDir != abs {
			return nil, fmt.Errorf("load engine %s: engine %s already loaded in this process", abs, loadedDir)
		}
		return loadedEng, loadResult
	}
	loadedDir = abs
	if err := Preflight(abs); err != nil {
		loadResult = err
		return nil, err
	}
	// ggml aborts on a failed assertion and on a lost RPC server; without
	// this it first starts gdb on itself to print a backtrace.
	if _, ok := os.LookupEnv("GGML_NO_BACKTRACE"); !ok {
		os.Setenv("GGML_NO_BACKTRACE", "1")
	}
	if err := llama.Load(abs); err != nil {
		loadResult = fmt.Errorf("load engine %s: %w", abs, err)
		return nil, loadResult
	}
	llama.LogSet(llama.LogSilent())
	llama.Init()
	e := &Engine{Dir: abs}
	e.listDevices()
	loadedEng = e
	return e, nil
}

// listDevices lists the devices ggml has now.
func (e *Engine) listDevices() {
	e.devices = e.devices[:0]
	for i := uint64(0); i < llama.GGMLBackendDeviceCount(); i++ {
		d := llama.GGMLBackendDeviceGet(i)
		free, total := llama.GGMLBackendDeviceMemory(d)
		dev := Device{
			Name:        llama.GGMLBackendDeviceName(d),
			Description: llama.GGMLBackendDeviceDescription(d),
			Type:        devType(llama.GGMLBackendDevType(d)),
			FreeBytes:   free,
			TotalBytes:  total,
		}
		if strings.HasPrefix(dev.Name, "RPC") {
			// ggml-rpc describes its devices by their server's endpoint.
			dev.Endpoint = dev.Description
		}
		e.devices = append(e.devices, dev)
	}
}

// Devices returns the devices ggml's backends report now, with their free
// memory read afresh.
func (e *Engine) Devices() []Device {
	e.listDevices()
	return slices.Clone(e.devices)
}

// deviceHandle returns ggml's handle of the device named name; 0 if none.
func (e *Engine) deviceHandle(name string) llama.GGMLBackendDevice {
	for i, d := range e.devices {
		if d.Name == name {
			return llama.GGMLBackendDeviceGet(uint64(i))
		}
	}
	return 0
}

func devType(t llama.GGMLBackendDeviceType) string {
	s := strings.ToLower(t.String())
	s = strings.TrimPrefix(s, "ggml_backend_device_type_")
	return s
}

// Device returns the device a --device value names (see resolveDevice).
func (e *Engine) Device(want string) (Device, error) {
	if names := strings.Split(want, ","); len(names) > 1 {
		// Several GPUs a model is split across: their memory summed.
		var all Device
		for i, n := range names {
			d, err := e.Device(n)
			if err != nil {
				return Device{}, err
			}
			if i == 0 {
				all = d
				continue
			}
			all.Name += "," + d.Name
			all.Description += ", " + d.Description
			all.FreeBytes += d.FreeBytes
			all.TotalBytes += d.TotalBytes
		}
		return all, nil
	}
	name, _, err := e.resolveDevice(want)
	if err != nil {
		return Device{}, err
	}
	for _, d := range e.devices {
		if d.Name == name || (name == "CPU" && d.Type == "cpu") {
			return d, nil
		}
	}
	return Device{Name: name, Type: "cpu"}, nil
}

// resolveDevice maps a --device value to a ggml device. "" and "auto" pick
// the first GPU of this host if any, else the CPU; "cpu" forces the CPU; anything else
// must name a device ("CUDA0", or "cuda:0" style) the engine found.
func (e *Engine) resolveDevice(want string) (name string, dev llama.GGMLBackendDevice, err error) {
	w := strings.ToLower(strings.TrimSpace(want))
	switch w {
	case "", "auto":
		for i, d := range e.devices {
			// RPC devices are GPU-type too, but another host's.
			if (d.Type == "gpu" || d.Type == "igpu") && d.Endpoint == "" {
				return d.Name, llama.GGMLBackendDeviceGet(uint64(i)), nil
			}
		}
		return "CPU", 0, nil
	case "cpu":
		return "CPU", 0, nil
	}
	norm := strings.ReplaceAll(w, ":", "")
	var names []string
	for i, d := range e.devices {
		names = append(names, d.Name)
		if strings.ToLower(d.Name) == norm {
			if d.Endpoint != "" {
				return "", 0, fmt.Errorf("device %q is rpc server %s's; this worker's device must be its own (the servers are --rpc)", want, d.Endpoint)
			}
			if d.Type == "cpu" {
				return "CPU", 0, nil
			}
			return d.Name, llama.GGMLBackendDeviceGet(uint64(i)), nil
		}
	}
	return "", 0, fmt.Errorf("device %q not found; this engine has: %s", want, strings.Join(names, ", "))
}
