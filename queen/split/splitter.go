package split

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/queen/fleet"
	"github.com/rbee-dev/rbee/queenapi"
)

// me is the actor of the split's narration: the queen.
const me = "queen"

// Fleet is what a split needs of the hives: to check and reach them,
// their snapshots, a reference's size, and the relay of the main worker's
// stream. *fleet.Fleet is the real one; tests fake it.
type Fleet interface {
	Resolve(ctx context.Context, name string) error
	Live(name string, many bool) fleet.Hive
	Conn(ctx context.Context, name string, ev fleet.Events) (*fleet.Conn, error)
	Snapshots(ctx context.Context, hives []fleet.Hive, ev fleet.Events) (map[string]fleet.Snapshot, error)
	Estimate(ctx context.Context, spec *fleet.ModelSpec, snaps map[string]fleet.Snapshot) error
	Relay(ctx context.Context, h fleet.Hive, ireq hiveapi.InferRequest, ev fleet.Events) error
}

// Splitter runs split jobs and keeps the table of live splits (a warm
// split serves the next job with the same model and hives).
type Splitter struct {
	fleet Fleet
	log   *slog.Logger
	stall time.Duration // see New

	mu sync.Mutex
	m  map[*split]struct{}
	wg sync.WaitGroup // teardowns
}

// DefaultStall is how long an RPC server may owe the worker an answer.
// Generous: one graph of a long prompt on a slow CPU takes a while.
const DefaultStall = 2 * time.Minute

// New returns a Splitter over the fleet. An RPC server that owes its
// worker an answer and sends nothing for stall (0: DefaultStall) is lost:
// the split's worker is killed and its job fails naming the hive.
func New(f Fleet, log *slog.Logger, stall time.Duration) *Splitter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if stall <= 0 {
		stall = DefaultStall
	}
	return &Splitter{fleet: f, log: log, stall: stall}
}

// Validate checks --split before anything reaches a hive.
func Validate(req queenapi.JobRequest) error {
	if len(req.Split) == 0 {
		return nil
	}
	switch {
	case req.Hive != "":
		return rbee.Errorf(rbee.CodeBadRequest, "--split and --hive: give one (--split names every hive)")
	case req.Device != "":
		return rbee.Errorf(rbee.CodeBadRequest, "--split and --device: the split picks each hive's roomiest device")
	case req.WorkerType != "":
		return rbee.Errorf(rbee.CodeBadRequest, "--split and --worker-type: only rbee-worker offloads to RPC servers")
	case len(req.Split) < 2:
		return rbee.Errorf(rbee.CodeBadRequest, "--split %s: name at least two hives", strings.Join(req.Split, ","))
	}
	seen := map[string]bool{}
	for _, n := range req.Split {
		if n == "" {
			return rbee.Errorf(rbee.CodeBadRequest, "--split %q: an empty hive name", strings.Join(req.Split, ","))
		}
		if seen[n] {
			return rbee.Errorf(rbee.CodeBadRequest, "--split: hive %s named twice", n)
		}
		seen[n] = true
	}
	return nil
}
