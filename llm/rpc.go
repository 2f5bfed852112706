package llm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ebitengine/purego"
	"github.com/hybridgroup/yzma/pkg/llama"
)

// llama.cpp's RPC backend (libggml-rpc.so, in a bundle that has it) offers
// the devices of rpc-server processes on other hosts as devices of this
// process: the model's layers are split over them, and every token's
// activations go to them and back over one TCP connection per server.
// yzma does not bind it, so three functions are bound here: ggml's
// ggml_backend_reg_get_proc_address finds ggml_backend_rpc_add_server in
// the backend, which connects to a server and returns a backend registry
// of its devices, which ggml_backend_register adds to ggml's devices.

// ErrNoRPC means the engine bundle has no RPC backend (libggml-rpc.so).
var ErrNoRPC = errors.New("engine has no RPC backend")

// ErrRPCServer means an RPC server could not be reached or speaks another
// version of the protocol.
var ErrRPCServer = errors.New("rpc server")

// RPCProtocol is the version of llama.cpp's RPC protocol the bundle's
// libggml-rpc speaks (ggml-rpc.h, RPC_PROTO_*_VERSION): servers must have
// the same major and no newer minor version.
const (
	RPCProtoMajor = 7
	RPCProtoMinor = 0
)

// ParseEndpoints parses a comma-separated list of RPC servers, HOST:PORT
// each, as --rpc takes it.
func ParseEndpoints(s string) ([]string, error) {
	var eps []string
	for part := range strings.SplitSeq(s, ",") {
		ep := strings.TrimSpace(part)
		host, port, err := net.SplitHostPort(ep)
		if err != nil {
			return nil, fmt.Errorf("rpc server %q: want HOST:PORT", ep)
		}
		if host == "" || strings.ContainsAny(host, " :") {
			return nil, fmt.Errorf("rpc server %q: want HOST:PORT with an IPv4 address or a host name (llama.cpp's RPC client takes no IPv6)", ep)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("rpc server %q: port %q is not a number from 1 to 65535", ep, port)
		}
		if slices.Contains(eps, ep) {
			return nil, fmt.Errorf("rpc server %q given twice", ep)
		}
		eps = append(eps, ep)
	}
	if len(eps) > 16 { // GGML_RPC_MAX_SERVERS
		return nil, fmt.Errorf("%d rpc servers; llama.cpp takes at most 16", len(eps))
	}
	return eps, nil
}

// ProbeRPC connects to the RPC server at endpoint, says hello as
// llama.cpp's client does and checks the protocol version it answers,
// then hangs up. llama.cpp aborts the whole process when a server it is
// told to add cannot be reached, so every server is probed first; ctx
// bounds the probe. An rpc-server serves one client at a time: a probe
// waits while another client holds it.
func ProbeRPC(ctx context.Context, endpoint string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", endpoint)
	if err != nil {
		return fmt.Errorf("%w %s: %w", ErrRPCServer, endpoint, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	// | cmd (1 byte) | size (8 bytes, little endian) | payload |; the
	// payload of HELLO is the client's transport capabilities, 24 zero
	// bytes for plain TCP.
	const cmdHello, capsSize = 14, 24
	req := make([]byte, 1+8+capsSize)
	req[0] = cmdHello
	binary.LittleEndian.PutUint64(req[1:], capsSize)
	if _, err := c.Write(req); err != nil {
		return fmt.Errorf("%w %s: hello: %w", ErrRPCServer, endpoint, err)
	}
	var size [8]byte
	if _, err := io.ReadFull(c, size[:]); err != nil {
		return fmt.Errorf("%w %s: hello: %w (is it llama.cpp's rpc-server?)", ErrRPCServer, endpoint, err)
	}
	n := binary.LittleEndian.Uint64(size[:])
	if n < 3 || n > 1024 {
		return fmt.Errorf("%w %s: hello: a %d-byte answer; is it llama.cpp's rpc-server?", ErrRPCServer, endpoint, n)
	}
	rsp := make([]byte, n)
	if _, err := io.ReadFull(c, rsp); err != nil {
		return fmt.Errorf("%w %s: hello: %w", ErrRPCServer, endpoint, err)
	}
	if rsp[0] != RPCProtoMajor || rsp[1] > RPCProtoMinor {
		return fmt.Errorf("%w %s: protocol %d.%d.%d, this engine speaks %d.%d: run the rpc-server of the same engine bundle",
			ErrRPCServer, endpoint, rsp[0], rsp[1], rsp[2], RPCProtoMajor, RPCProtoMinor)
	}
	return nil
}

// rpcFuncs are the bound functions of the RPC backend.
type rpcFuncs struct {
	addServer func(endpoint string) uintptr // ggml_backend_rpc_add_server
	register  func(reg uintptr)             // ggml_backend_register
}

// rpc binds the RPC backend's functions once; ErrNoRPC when the bundle
// lacks it.
func (e *Engine) rpc() (*rpcFuncs, error) {
	e.rpcOnce.Do(func() {
		reg := llama.GGMLBackendRegByName("RPC")
		if reg == 0 {
			e.rpcErr = fmt.Errorf("%w (no libggml-rpc.so in %s); make engine builds it", ErrNoRPC, e.Dir)
			return
		}
		base, err := purego.Dlopen(filepath.Join(e.Dir, "libggml-base.so"), purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err != nil {
			e.rpcErr = fmt.Errorf("bind rpc backend: %w", err)
			return
		}
		ggml, err := purego.Dlopen(filepath.Join(e.Dir, "libggml.so"), purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err != nil {
			e.rpcErr = fmt.Errorf("bind rpc backend: %w", err)
			return
		}
		var getProc func(reg uintptr, name string) uintptr
		purego.RegisterLibFunc(&getProc, base, "ggml_backend_reg_get_proc_address")
		f := &rpcFuncs{}
		purego.RegisterLibFunc(&f.register, ggml, "ggml_backend_register")
		add := getProc(uintptr(reg), "ggml_backend_rpc_add_server")
		if add == 0 {
			e.rpcErr = fmt.Errorf("%w: its library lacks ggml_backend_rpc_add_server", ErrNoRPC)
			return
		}
		purego.RegisterFunc(&f.addServer, add)
		e.rpcFns = f
	})
	return e.rpcFns, e.rpcErr
}

// AddRPCServers connects llama.cpp to the RPC servers at endpoints (each
// probed first, within ctx) and returns their devices, which models
// loaded with ModelOptions.RPC naming them take layers on. A server added
// before is not connected again. From here on, a server or link that
// fails kills this process: llama.cpp aborts on a lost connection.
func (e *Engine) AddRPCServers(ctx context.Context, endpoints []string) ([]Device, error) {
	f, err := e.rpc()
	if err != nil {
		return nil, err
	}
	e.rpcMu.Lock()
	defer e.rpcMu.Unlock()
	for _, ep := range endpoints {
		if e.rpcAdded[ep] {
			continue
		}
		if err := ProbeRPC(ctx, ep); err != nil {
			return nil, err
		}
		reg := f.addServer(ep)
		if reg == 0 {
			return nil, fmt.Errorf("%w %s: it offers no device", ErrRPCServer, ep)
		}
		f.register(reg)
		if e.rpcAdded == nil {
			e.rpcAdded = map[string]bool{}
		}
		e.rpcAdded[ep] = true
	}
	e.listDevices()
	var devs []Device
	for _, ep := range endpoints {
		for _, d := range e.devices {
			if d.Endpoint == ep {
				devs = append(devs, d)
			}
		}
	}
	return devs, nil
}

// Placement is where a model's layers went: the repeating layers a device
// holds and whether it holds the output layer. The input embeddings always
// stay in this process's memory.
type Placement struct {
	Device   string `json:"device"`             // ggml's name: "CPU", "CUDA0", "RPC0"
	Endpoint string `json:"endpoint,omitempty"` // the RPC server, for an RPC device
	Layers   int    `json:"layers"`
	Output   bool   `json:"output,omitempty"`
}

// splitPlan is the part of the model parameters a split sets, and the
// placement llama.cpp will make of them.
type splitPlan struct {
	devices   []llama.GGMLBackendDevice // 0-terminated
	nGPU      int32
	split     []float32 // one per device of devices but the 0
	placement []Placement
}

// planSplit spreads nLayer repeating layers and the output layer over the
// local device and the RPC devices in shares (local first, nil: by free
// memory), as llama.cpp's loader does with the parameters it returns
// (llama_model::load_tensors). A local CPU is no device of llama.cpp's
// list: it keeps the first layers, those not offloaded.
func planSplit(nLayer int, local Device, localDev llama.GGMLBackendDevice, rpc []Device, rpcDevs []llama.GGMLBackendDevice, shares []float64) (*splitPlan, error) {
	all := append([]Device{local}, rpc...)
	if shares == nil {
		for _, d := range all {
			shares = append(shares, float64(d.FreeBytes))
		}
	}
	if len(shares) != len(all) {
		return nil, fmt.Errorf("split: %d shares for %d devices (%s); give one per device, this one first", len(shares), len(all), deviceNames(all))
	}
	sum := 0.0
	for _, s := range shares {
		if s < 0 || math.IsNaN(s) || math.IsInf(s, 0) {
			return nil, fmt.Errorf("split: share %v is not a number ≥ 0", s)
		}
		sum += s
	}
	if sum == 0 {
		return nil, errors.New("split: every share is 0")
	}
	p := &splitPlan{}
	var devs []Device
	iGPUStart := 0
	if localDev == 0 {
		// Layers [0, cpu) stay here; llama.cpp offloads the last nGPU of
		// the nLayer+1 (output included).
		cpu := int(math.Round(shares[0] / sum * float64(nLayer)))
		cpu = min(max(cpu, 0), nLayer)
		iGPUStart = cpu
		p.nGPU = int32(nLayer + 1 - cpu)
		for i, d := range rpcDevs {
			p.devices = append(p.devices, d)
			p.split = append(p.split, float32(shares[i+1]))
		}
		devs = rpc
		if sum-shares[0] == 0 {
			return nil, errors.New("split: the rpc servers' shares are all 0")
		}
	} else {
		p.nGPU = 999
		p.devices = append([]llama.GGMLBackendDevice{localDev}, rpcDevs...)
		for _, s := range shares {
			p.split = append(p.split, float32(s))
		}
		devs = all
	}
	p.devices = append(p.devices, 0)

	// The split points, as llama.cpp computes them.
	points := make([]float32, len(p.split))
	var acc float32
	for i, s := range p.split {
		acc += s
		points[i] = acc
	}
	for i := range points {
		points[i] /= acc
	}
	act := min(int(p.nGPU), nLayer+1)
	place := map[string]*Placement{}
	var order []string
	at := func(d Device) *Placement {
		if pl, ok := place[d.Name]; ok {
			return pl
		}
		pl := &Placement{Device: d.Name, Endpoint: d.Endpoint}
		place[d.Name] = pl
		order = append(order, d.Name)
		return pl
	}
	if localDev == 0 {
		at(local)
	}
	for il := 0; il <= nLayer; il++ {
		var pl *Placement
		if il < iGPUStart {
			pl = at(local)
		} else {
			x := float32(il-iGPUStart) / float32(act)
			i, _ := slices.BinarySearchFunc(points, x, func(p, x float32) int {
				if p <= x {
					return -1
				}
				return 1
			})
			pl = at(devs[min(i, len(devs)-1)])
		}
		if il == nLayer {
			pl.Output = true
		} else {
			pl.Layers++
		}
	}
	for _, d := range devs {
		at(d)
	}
	for _, name := range order {
		p.placement = append(p.placement, *place[name])
	}
	return p, nil
}

func deviceNames(ds []Device) string {
	var names []string
	for _, d := range ds {
		names = append(names, d.Name)
	}
	return strings.Join(names, ", ")
}

// modelLayers reads the number of repeating layers of the model at path
// (<arch>.block_count) from a load of its header and vocabulary only: its
// hyperparameters stay unread.
func modelLayers(path string) (int, error) {
	mp := llama.ModelDefaultParams()
	mp.SetCPUOnly()
	mp.VocabOnly = 1
	mdl, err := llama.ModelLoadFromFile(path, mp)
	if err != nil {
		return 0, fmt.Errorf("%w %s: llama.cpp could not read it (corrupt or unsupported architecture)", ErrModelFile, path)
	}
	defer llama.ModelFree(mdl)
	arch, _ := llama.ModelMetaValStr(mdl, "general.architecture")
	v, _ := llama.ModelMetaValStr(mdl, arch+".block_count")
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%w %s: no layer count (%s.block_count) to split by", ErrModelFile, path, arch)
	}
	return n, nil
}

// planLocal plans the split of the model at path across several GPUs of
// this host, named as --device names them ("Vulkan0", "CUDA1"): each
// keeps a share of the layers, by free memory unless shares are given.
func (e *Engine) planLocal(path string, names []string, shares []float64) (*splitPlan, error) {
	var devs []Device
	var handles []llama.GGMLBackendDevice
	for _, name := range names {
		n, h, err := e.resolveDevice(name)
		if err != nil {
			return nil, err
		}
		if h == 0 {
			return nil, fmt.Errorf("device %q: a split across devices takes GPUs only", name)
		}
		if slices.ContainsFunc(devs, func(d Device) bool { return d.Name == n }) {
			return nil, fmt.Errorf("device %s named twice", n)
		}
		d, err := e.Device(n)
		if err != nil {
			return nil, err
		}
		devs, handles = append(devs, d), append(handles, h)
	}
	n, err := modelLayers(path)
	if err != nil {
		return nil, err
	}
	return planSplit(n, devs[0], handles[0], devs[1:], handles[1:], shares)
}

// planRPC connects to opt.RPC's servers and plans the split of the model
// at path over the local device and theirs.
func (e *Engine) planRPC(ctx context.Context, path, devName string, dev llama.GGMLBackendDevice, opt ModelOptions) (*splitPlan, error) {
	rpcDevs, err := e.AddRPCServers(ctx, opt.RPC)
	if err != nil {
		return nil, err
	}
	local, err := e.Device(devName)
	if err != nil {
		return nil, err
	}
	handles := make([]llama.GGMLBackendDevice, len(rpcDevs))
	for i, d := range rpcDevs {
		handles[i] = e.deviceHandle(d.Name)
	}
	n, err := modelLayers(path)
	if err != nil {
		return nil, err
	}
	return planSplit(n, local, dev, rpcDevs, handles, opt.Split)
}
