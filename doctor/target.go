package doctor

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/rbee-dev/rbee/inventory"
	"github.com/rbee-dev/rbee/remote"
)

// ErrNoHive reports a name that is neither an inventory hive nor an
// address.
var ErrNoHive = errors.New("no such hive")

// TargetFor turns what `rbee doctor --hive` was given into a target: the
// inventory hive of that name (with its known_hosts file, if it names one),
// else USER@HOST[:PORT], HOST:PORT or an alias of ~/.ssh/config. inv may be
// nil (no inventory). A bare name that no hive has, where the inventory has
// hives, returns an error wrapping ErrNoHive together with the name as a
// host to try (it may be an ssh alias).
func TargetFor(spec string, inv *inventory.Inventory) (t remote.Target, knownHosts string, err error) {
	if inv != nil {
		if h, ok := inv.Hive(spec); ok {
			t = remote.Target{Host: h.Host, User: h.User, Port: h.Port}
			if h.Identity != "" {
				t.IdentityFiles = []string{h.Identity}
			}
			return t, h.KnownHosts, nil
		}
	}
	rest := spec
	if u, r, ok := strings.Cut(rest, "@"); ok {
		t.User, rest = u, r
	}
	t.Host = rest
	if h, p, err := net.SplitHostPort(rest); err == nil {
		port, perr := strconv.Atoi(p)
		if perr != nil || port < 1 || port > 65535 {
			return remote.Target{}, "", fmt.Errorf("target %q: port %q is not a number from 1 to 65535", spec, p)
		}
		t.Host, t.Port = h, port
	} else if strings.Count(rest, ":") == 1 {
		return remote.Target{}, "", fmt.Errorf("target %q: %w", spec, err)
	}
	t.Host = strings.TrimSuffix(strings.TrimPrefix(t.Host, "["), "]")
	if t.Host == "" {
		return remote.Target{}, "", fmt.Errorf("target %q: no host", spec)
	}
	if inv != nil && len(inv.Hives) > 0 && t.User == "" && t.Port == 0 && !strings.Contains(t.Host, ".") && net.ParseIP(t.Host) == nil {
		// A bare word not in the inventory: an ssh alias, or a typo.
		// remote.Resolve says which; name the hives meanwhile.
		var names []string
		for _, h := range inv.Hives {
			names = append(names, h.Name)
		}
		return t, "", fmt.Errorf("%w %q in %s (hives: %s); as a host name it is tried over SSH",
			ErrNoHive, spec, inv.Path, strings.Join(names, ", "))
	}
	return t, "", nil
}
