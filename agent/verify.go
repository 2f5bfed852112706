package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/download"
)

// verifyModel checks, before a worker loads it, that the model file still
// has the content its catalog entry names (hashing it only when its size
// or mtime changed). A file that does not match leaves the catalog; one
// rbee owns (a store blob, a pushed model) is moved into the store's
// quarantine, a file of the user's is left where it is.
func (a *Agent) verifyModel(ctx context.Context, m catalog.Model) error {
	err := a.store().Verify(ctx, m.Path, m.SHA256)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrNotExist):
		_, _ = a.db.RemoveModel(context.WithoutCancel(ctx), m.ID)
		return rbee.Errorf(rbee.CodeModelNotFound, "model file %s of %s is gone from hive %s; its catalog entry was removed", m.Path, m.ID, a.cfg.Name)
	case !errors.Is(err, download.ErrCorrupt):
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return rbee.Errorf(rbee.CodeModelNotFound, "check model %s on hive %s: %w", m.ID, a.cfg.Name, err)
	}
	_, _ = a.db.RemoveModel(context.WithoutCancel(ctx), m.ID)
	if !a.owns(m.Path) {
		return rbee.Errorf(rbee.CodeModelCorrupt, "model file %s on hive %s changed since it was registered as %s (%w); its stale catalog entry was removed",
			m.Path, a.cfg.Name, m.ID, err).WithHint("run the job again to use the file as it is now")
	}
	q, qerr := a.store().Quarantine(m.Path)
	where := "moved aside to " + q
	if qerr != nil {
		where = fmt.Sprintf("it could not be moved aside (%v)", qerr)
		a.log.Warn("quarantine model", "path", m.Path, "err", qerr)
	}
	a.log.Warn("corrupt model", "model", m.ID, "path", m.Path, "quarantine", q)
	hint := "the next job fetches it again"
	if m.Ref != "" && m.Ref != m.Path {
		hint = "rbee model pull " + m.Ref + " fetches it again (a job naming it does too)"
	}
	return rbee.Errorf(rbee.CodeModelCorrupt, "model %s on hive %s is corrupt: %w; %s, and it left the catalog",
		m.ID, a.cfg.Name, err, where).WithHint(hint)
}

// owns reports whether path is a file rbee put on this hive (under its
// home), not one of the user's.
func (a *Agent) owns(path string) bool {
	home, err := filepath.Abs(a.cfg.Home)
	return err == nil && strings.HasPrefix(path, home+string(filepath.Separator))
}
