package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/catalog"
	"github.com/rbee-dev/rbee/download"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/modelfile"
	"github.com/rbee-dev/rbee/sse"
)

// store is the hive's content-addressed model store.
func (a *Agent) store() *download.Store {
	return &download.Store{Dir: filepath.Join(a.cfg.Home, "models", "store")}
}

// pull downloads a model by reference on this host and registers it,
// streaming progress events; the last event is done (with the model) or an
// error. Concurrent pulls of one reference share one download.
func (a *Agent) pull(w http.ResponseWriter, r *http.Request) {
	var req hiveapi.PullRequest
	if !readJSON(w, r, &req) {
		return
	}
	ref, err := download.ParseRef(req.Ref)
	if err != nil {
		writeErr(w, http.StatusBadRequest, rbee.CodeBadRequest, err.Error())
		return
	}
	if err := checkAlias(req.Alias); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	sw := sse.NewWriter(w)
	defer sw.Close()
	me := actor(a.cfg.Name)
	send := func(ev rbee.Event) error {
		ev.Job = req.Job
		if ev.Actor == "" {
			ev.Actor = me
		}
		if ev.Time.IsZero() {
			ev.Time = time.Now()
		}
		return sw.Send(ev)
	}
	hub := &download.Hub{Endpoint: req.Endpoint, Token: req.Token}
	m, err := a.Pull(r.Context(), hub, ref, req.Alias, send)
	if err != nil {
		if r.Context().Err() == nil {
			_ = send(rbee.Fail(me, rbee.CodeOf(err), err.Error()))
		}
		return
	}
	data, _ := json.Marshal(m)
	_ = send(rbee.Event{Type: rbee.EventDone, Actor: me, Action: "model_ready", Data: data})
}

// Pull fetches ref into the store (resuming, verifying) and adds it to the
// model catalog.
func (a *Agent) Pull(ctx context.Context, hub *download.Hub, ref download.Ref, alias string, send func(rbee.Event) error) (hiveapi.Model, error) {
	me := actor(a.cfg.Name)
	if err := checkAlias(alias); err != nil {
		return hiveapi.Model{}, err
	}
	if ref.Kind == "hf" && ref.File == "" {
		r, err := hub.Resolve(ctx, ref)
		if err != nil {
			return hiveapi.Model{}, pullError(ref, err)
		}
		_ = send(rbee.Narrate(me, "model_resolved", fmt.Sprintf("%s resolved to %s", ref.Raw, r.File)))
		ref = r
	}
	if old, err := a.db.Model(ctx, ref.Raw); err == nil {
		if _, err := os.Stat(old.Path); err == nil {
			_ = send(rbee.Narrate(me, "model_ready", fmt.Sprintf("%s is already on hive %s", ref.Raw, a.cfg.Name)))
			return a.apiModel(old), nil
		}
	}
	_ = send(rbee.Narrate(me, "model_download", fmt.Sprintf("downloading %s on hive %s", ref.URL, a.cfg.Name)))
	checked := "verified" // a file already in the store was checked when it came
	p, _, err := a.store().Fetch(ctx, hub, ref, download.Options{Stated: func(sha bool) {
		checked = "downloaded; its sha256 matches the source's"
		if !sha {
			checked = "downloaded; its size matches (the source states no checksum)"
		}
	}, Progress: func(p download.Progress) {
		msg := fmt.Sprintf("%s of %s, %s/s", rbee.Bytes(uint64(p.Done)), rbee.Bytes(uint64(max(p.Total, 0))), rbee.Bytes(uint64(p.Rate)))
		if p.ETA > 0 {
			msg += fmt.Sprintf(", %s left", p.ETA.Round(time.Second))
		}
		switch {
		case p.Attempt > 1 && p.LastError != "":
			msg += fmt.Sprintf(" (attempt %d, retrying after: %s)", p.Attempt, p.LastError)
		case p.Attempt > 1:
			msg += fmt.Sprintf(" (attempt %d)", p.Attempt)
		}
		_ = send(rbee.Event{Type: rbee.EventProgress, Actor: me, Action: "model_download", Message: msg,
			BytesDone: p.Done, BytesTotal: p.Total, Rate: p.Rate})
	}, Check: func(p string) error {
		// Before the file enters the store: one that is not a loadable
		// GGUF is deleted there, not left behind as an uncatalogued blob.
		// Not ctx: a pull cancelled now must not delete a good file (the
		// header read is short).
		_, err := modelfile.Inspect(context.WithoutCancel(ctx), p, modelfile.Options{})
		return err
	}})
	if err != nil {
		return hiveapi.Model{}, pullError(ref, err)
	}
	m, err := a.AddModel(ctx, hiveapi.AddModelRequest{Path: p, Ref: ref.Raw, Alias: alias})
	if err != nil {
		return hiveapi.Model{}, err
	}
	_ = send(rbee.Narrate(me, "model_ready", fmt.Sprintf("%s %s: %s %s, %s", ref.Raw, checked, m.Arch, m.Quant, rbee.Bytes(uint64(m.Size)))))
	return m, nil
}

func pullError(ref download.Ref, err error) error {
	switch {
	case errors.Is(err, download.ErrNotFound):
		return rbee.Errorf(rbee.CodeModelNotFound, "%v", err)
	case errors.Is(err, download.ErrAuth):
		return &rbee.Error{Code: rbee.CodeModelNotFound, Message: err.Error(), Hint: "set HF_TOKEN"}
	case errors.Is(err, modelfile.ErrNotGGUF):
		return rbee.Errorf(rbee.CodeNotGGUF, "%v", err)
	case errors.Is(err, download.ErrInsecure): // the endpoint's setting (HF_ENDPOINT), not the server
		return rbee.Errorf(rbee.CodeBadRequest, "%v", err)
	case errors.Is(err, download.ErrNoSpace):
		return rbee.Errorf(rbee.CodeNoRoom, "%v", err)
	case errors.Is(err, context.Canceled):
		return err
	}
	return rbee.Errorf(rbee.CodeDownload, "download %s: %w", strings.TrimSpace(ref.Raw), err)
}

// checkAlias refuses an alias outside the documented set (the agent is the
// authority: the keeper checks early, but any client may call).
func checkAlias(alias string) error {
	if alias == "" {
		return nil
	}
	if err := catalog.ValidAlias(alias); err != nil {
		return rbee.Errorf(rbee.CodeBadRequest, "%w", err).WithHint("an alias is 1 to 64 letters, digits, '.', '_' and '-', starting with a letter or a digit, e.g. --alias qwen2.5-0.5b")
	}
	return nil
}
