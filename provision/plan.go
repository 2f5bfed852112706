package provision

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/bundle"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/remote"
)

// Plan is what Up would do on a host, found without changing anything
// there: rbee hive add --dry-run.
type Plan struct {
	Probe Probe
	// Running is the version of the agent that answers on the host's
	// socket; "" when none does (or forwarding is off and it was not asked).
	Running string
	// Reuse: an agent of this build runs, so Up would upload and start
	// nothing.
	Reuse bool
	// Engine is the bundle's variant directory ("v0.5.0-cpu"); "" when this
	// machine holds no bundle for the host's platform yet (Up gets one
	// first, and its files are not listed).
	Engine string
	// Choice is the engine kind the host gets, and why (ChooseEngine).
	Choice EngineChoice
	Files  []PlannedFile // the agent, the worker, the bundle's files, its manifest last
	Links  int           // the bundle's plain-name links Up would recreate
}

// PlannedFile is one file Up would put on the host.
type PlannedFile struct {
	Name   string // "rbee-hive", "rbee-worker", or the bundle file's name
	Src    string // on this machine
	Dst    string // on the host
	Bytes  int64
	Upload bool // missing on the host, or there with another checksum
}

// UploadBytes sums the files Up would send.
func (p Plan) UploadBytes() (bytes int64, files int) {
	for _, f := range p.Files {
		if f.Upload {
			bytes += f.Bytes
			files++
		}
	}
	return bytes, files
}

// PlanUp finds what Up would do on the host. It only reads: the probe, a
// handshake with an agent on its socket through streamlocal forwarding
// (never the bridge, which would run a program there), and the checksums
// of the files already in place. An error after the probe (a host Up would
// refuse) comes with the plan found so far.
func PlanUp(ctx context.Context, c *remote.Conn, a Artifacts) (Plan, error) {
	var plan Plan
	p, err := ProbeHost(ctx, c)
	if err != nil {
		return plan, err
	}
	plan.Probe = p
	plan.Choice = ChooseEngine(p, a.SoftwareGPU)
	l := Layout{Home: p.Home}
	if p.Agent {
		if hs, err := handshakeOnly(ctx, c, l); err == nil {
			plan.Running = hs.Version
			if hs.Version == rbee.Version && hs.Protocol == rbee.ProtocolVersion {
				plan.Reuse = true
				return plan, nil
			}
		}
	}
	// The plan lists a bundle only when this machine holds one; Up gets
	// one first.
	agentSrc, workerSrc, err := checkHost(p, a, false)
	if err != nil {
		return plan, err
	}
	engineSrc := a.Engines[p.Platform()]
	if plan.Choice.GPU != "" {
		engineSrc = a.GPUEngines[plan.Choice.GPU] // "": fetched first
	}
	files, err := binaryFiles(agentSrc, workerSrc, l)
	if err != nil {
		return plan, err
	}
	var (
		m        *bundle.Manifest
		bfiles   []file
		manifest file
	)
	if engineSrc != "" {
		if m, err = bundle.ValidateOnce(engineSrc); err != nil {
			return plan, fmt.Errorf("engine bundle: %w", err)
		}
		dir, keep, err := EngineTarget(ctx, c, l, m)
		if err != nil {
			return plan, err
		}
		plan.Engine, plan.Links = path.Base(dir), len(m.Links)
		if keep {
			m = nil // the host's engine holds all of it: nothing to send
		} else if bfiles, manifest, err = bundleFiles(engineSrc, dir, m); err != nil {
			return plan, fmt.Errorf("engine bundle: %w", err)
		}
	}
	need, err := sizeOf(agentSrc, workerSrc)
	if err == nil && engineSrc != "" {
		var n uint64
		n, err = sizeOf(engineSrc)
		need += n
	}
	if err != nil {
		return plan, err
	}
	all := files
	if m != nil {
		all = append(append(all, bfiles...), manifest)
	}
	have, err := remoteSums(ctx, c, dsts(all))
	if err != nil {
		return plan, err
	}
	if m != nil {
		// The same cut as Up's: the CPU variants this host needs.
		if bfiles, manifest, _, err = hostBundle(bfiles, manifest, m, p.CPUFlags, have); err != nil {
			return plan, err
		}
		files = append(append(files, bfiles...), manifest)
	}
	for _, f := range files {
		n, err := f.size()
		if err != nil {
			return plan, fmt.Errorf("plan %s: %w", f.src, err)
		}
		plan.Files = append(plan.Files, PlannedFile{Name: path.Base(f.dst), Src: f.src, Dst: f.dst, Bytes: n, Upload: have[f.dst] != f.sum})
	}
	return plan, checkRoom(p, need)
}

// checkHost is what Up checks of a probed host before it installs, and
// PlanUp before it plans: a linux host, an rbee build for its platform
// (and, with engine, a bundle or a way to get one), libffi. It returns
// the agent and worker builds for the host.
func checkHost(p Probe, a Artifacts, engine bool) (agentSrc, workerSrc string, err error) {
	if p.OS != "linux" {
		return "", "", fmt.Errorf("host runs %s/%s; rbee hives run on linux (amd64, arm64)", p.OS, p.Machine)
	}
	plat := p.Platform()
	agentSrc, workerSrc = a.Agents[plat], a.Workers[plat]
	if agentSrc == "" || workerSrc == "" || (engine && a.Engines[plat] == "" && a.Engine == nil) {
		return "", "", fmt.Errorf("no rbee build for %s (have %s); `make agents` builds them", plat, platforms(a))
	}
	if !p.Libffi {
		return "", "", errors.New("host lacks libffi.so.8, which the worker needs: install it there (Debian/Ubuntu: apt-get install libffi8)")
	}
	return agentSrc, workerSrc, nil
}

// checkRoom refuses a host without room for need bytes and 64 MiB more.
func checkRoom(p Probe, need uint64) error {
	if p.FreeBytes > 0 && p.FreeBytes < need+64<<20 {
		return fmt.Errorf("host has %s free in %s; rbee needs about %s", rbee.Bytes(p.FreeBytes), p.Home, rbee.Bytes(need+64<<20))
	}
	return nil
}

// handshakeOnly asks the agent on the host's socket who it is, through
// streamlocal forwarding only.
func handshakeOnly(ctx context.Context, c *remote.Conn, l Layout) (hiveapi.Handshake, error) {
	client := hiveapi.NewClient("plan", func(ctx context.Context) (net.Conn, error) { return c.DialUnix(ctx, l.Socket()) })
	defer client.Close()
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return client.Handshake(hctx)
}
