package provision

import (
	"context"
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/remote"
)

// pushReserve is the room a model push leaves free on the host beyond the
// file, so that the host's logs and catalogs can still be written.
const pushReserve = 16 << 20

// hostFree returns the bytes free to the user in dir on the host (the
// nearest existing parent counts).
func hostFree(ctx context.Context, c *remote.Conn, dir string) (uint64, error) {
	out, err := c.Run(ctx, []string{"sh", "-c", `d=$1; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; df -Pk "$d" | tail -n 1 | awk '{print $4}'`, "sh", dir}, nil)
	if err != nil {
		return 0, fmt.Errorf("free space in %s: %w", dir, err)
	}
	kb, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("free space in %s: df said %q", dir, strings.TrimSpace(string(out)))
	}
	return kb << 10, nil
}

// checkPushSpace refuses a push of need more bytes into dir when the
// host's disk cannot take them (and the reserve). Before refusing it
// removes what earlier failed pushes left there (other models' .partial
// files untouched for 10 minutes; keep, the one this push resumes, stays),
// and looks again.
func checkPushSpace(ctx context.Context, c *remote.Conn, dir, keep string, need int64) error {
	full := diskFull(ctx, c, dir, need)
	if full == nil {
		return nil
	}
	// Only partials untouched for 10 minutes: one being written by a push
	// running now must not be pulled from under it.
	if _, err := c.Run(ctx, []string{"find", dir, "-maxdepth", "1", "-name", "*.partial", "!", "-name", path.Base(keep), "-mmin", "+10", "-delete"}, nil); err != nil {
		return full
	}
	return diskFull(ctx, c, dir, need)
}

// diskFull returns the "disk full" error when the host has less free in
// dir than need and the reserve; nil when it has room or cannot tell.
func diskFull(ctx context.Context, c *remote.Conn, dir string, need int64) error {
	free, err := hostFree(ctx, c, dir)
	if err != nil {
		return nil
	}
	want := uint64(max(need, 0)) + pushReserve
	if free >= want {
		return nil
	}
	return rbee.Errorf(rbee.CodeNoRoom, "disk full on %s: the model needs %s (with %s kept free) in %s, it has %s",
		c.Resolved().Host, rbee.Bytes(want), rbee.Bytes(pushReserve), dir, rbee.Bytes(free)).
		WithHint("free space on the host, or remove models it no longer needs (rbee model rm NAME --hive HIVE)")
}
