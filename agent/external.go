package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/hiveapi"
)

var typeName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

func (a *Agent) typesDir() string { return filepath.Join(a.cfg.Home, "worker-types") }

// addWorkerType declares an external OpenAI-speaking engine.
func (a *Agent) addWorkerType(w http.ResponseWriter, r *http.Request) {
	var wt hiveapi.WorkerType
	if !readJSON(w, r, &wt) {
		return
	}
	if err := a.AddWorkerType(r.Context(), wt); err != nil {
		writeError(w, http.StatusUnprocessableEntity, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// AddWorkerType checks a worker type and records it: its template in
// ~/.rbee/worker-types/NAME.json, an entry in the worker catalog.
func (a *Agent) AddWorkerType(ctx context.Context, wt hiveapi.WorkerType) error {
	switch {
	case !typeName.MatchString(wt.Name):
		return rbee.Errorf(rbee.CodeBadRequest, "worker type name %q: use lowercase letters, digits and '-'", wt.Name)
	case !filepath.IsAbs(wt.Command):
		return rbee.Errorf(rbee.CodeBadRequest, "worker type %s: command %q must be an absolute path on hive %s", wt.Name, wt.Command, a.cfg.Name)
	case !strings.HasPrefix(wt.Health, "/"):
		return rbee.Errorf(rbee.CodeBadRequest, "worker type %s: health %q must be a path such as /health", wt.Name, wt.Health)
	case !strings.Contains(strings.Join(wt.Args, " "), "{model}") || !strings.Contains(strings.Join(wt.Args, " "), "{port}"):
		return rbee.Errorf(rbee.CodeBadRequest, "worker type %s: the arguments must place {model} and {port}", wt.Name)
	}
	st, err := os.Stat(wt.Command)
	if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return rbee.Errorf(rbee.CodeBadRequest, "worker type %s: %s is not an executable file on hive %s", wt.Name, wt.Command, a.cfg.Name)
	}
	if err := os.MkdirAll(a.typesDir(), 0o700); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(wt, "", "  ")
	p := filepath.Join(a.typesDir(), wt.Name+".json")
	if err := os.WriteFile(p+".tmp", b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		return err
	}
	return a.db.AddWorkerBinary(ctx, catalog.WorkerBinary{ID: "external-" + wt.Name + "-template", Type: "external-" + wt.Name,
		Version: "template", Path: p, Capabilities: []string{"openai", "external"}, Added: time.Now()})
}

func (a *Agent) workerType(name string) (hiveapi.WorkerType, error) {
	var wt hiveapi.WorkerType
	if !typeName.MatchString(name) {
		return wt, rbee.Errorf(rbee.CodeBadRequest, "worker type %q: not a valid name", name)
	}
	b, err := os.ReadFile(filepath.Join(a.typesDir(), name+".json"))
	if err != nil {
		return wt, rbee.Errorf(rbee.CodeWorkerFailed, "hive %s has no worker type %q (rbee worker add-type declares one)", a.cfg.Name, name)
	}
	err = json.Unmarshal(b, &wt)
	return wt, err
}

// removeWorkerType forgets a worker type: its template and its catalog
// entry. A type a running worker uses is refused.
func (a *Agent) removeWorkerType(w http.ResponseWriter, r *http.Request) {
	if err := a.RemoveWorkerType(r.Context(), r.PathValue("name")); err != nil {
		status := http.StatusInternalServerError
		switch rbee.CodeOf(err) {
		case rbee.CodeBadRequest:
			status = http.StatusConflict
		case rbee.CodeWorkerTypeUnknown:
			status = http.StatusNotFound
		}
		writeError(w, status, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// RemoveWorkerType removes the worker type name, unless a worker of it runs.
func (a *Agent) RemoveWorkerType(ctx context.Context, name string) error {
	if !typeName.MatchString(name) {
		return rbee.Errorf(rbee.CodeWorkerTypeUnknown, "worker type %q: not a valid name (lowercase letters, digits and '-')", name)
	}
	p := filepath.Join(a.typesDir(), name+".json")
	if _, err := os.Stat(p); err != nil {
		return rbee.Errorf(rbee.CodeWorkerTypeUnknown, "hive %s has no worker type %s", a.cfg.Name, name).
			WithHint("rbee worker ls lists the types (external-NAME)")
	}
	for _, wi := range a.sup.List() {
		if wi.Type == name {
			return rbee.Errorf(rbee.CodeBadRequest, "worker %s of type %s is running on hive %s", wi.ID, name, a.cfg.Name).
				WithHint("it unloads after the keep-alive (RBEE_KEEP_ALIVE); rbee queen stop stops every worker now")
		}
	}
	if err := a.db.RemoveWorkerBinary(ctx, "external-"+name+"-template"); err != nil && !errors.Is(err, catalog.ErrNotFound) {
		return fmt.Errorf("remove worker type %s: %w", name, err)
	}
	if err := os.Remove(p); err != nil {
		return fmt.Errorf("remove worker type %s: %w", name, err)
	}
	return nil
}
