package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/sse"
	"github.com/rbee-dev/rbee/supervisor"
)

// infer runs a prompt on a warm worker or a new one and streams rbee events:
// narration of the worker's start, tokens, then done or error.
func (a *Agent) infer(w http.ResponseWriter, r *http.Request) {
	var req hiveapi.InferRequest
	if !readJSON(w, r, &req) {
		return
	}
	if req.Prompt == "" || req.Model == "" {
		writeErr(w, http.StatusBadRequest, rbee.CodeBadRequest, "infer: prompt and model are required")
		return
	}
	if err := checkRPC(req); err != nil {
		writeErr(w, http.StatusBadRequest, rbee.CodeBadRequest, err.Error())
		return
	}
	ctx := r.Context()
	model, err := a.db.Model(ctx, req.Model)
	if err != nil {
		writeErr(w, http.StatusNotFound, rbee.CodeModelNotFound, fmt.Sprintf("model %q is not in hive %s's catalog", req.Model, a.cfg.Name))
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
		return sw.Send(ev)
	}
	fail := func(code, msg string) { _ = send(rbee.Fail(me, code, msg)) }

	var wp *supervisor.Worker
	start, engine := time.Now(), ""
	warm := req.Worker != ""
	if warm {
		var ok bool
		if wp, ok = a.sup.Get(req.Worker); !ok {
			fail(rbee.CodeWorkerNotFound, fmt.Sprintf("worker %s is no longer running on hive %s", req.Worker, a.cfg.Name))
			return
		}
		if req.Reservation != "" {
			a.vram.release(req.Reservation)
		}
		info := wp.Info()
		_ = send(rbee.Narrate(me, "worker_reused", fmt.Sprintf("worker %s already holds %s on %s: no spawn", info.ID, model.Path, info.Device)))
	} else {
		if req.Device == "" {
			fail(rbee.CodeBadRequest, "infer: a device or a worker is required")
			return
		}
		var joined bool
		ws := workerStart{model: model, device: req.Device, reservation: req.Reservation, workerType: req.WorkerType, rpc: req.RPC, tensorSplit: req.TensorSplit}
		wp, joined, engine, err = a.ensureWorker(ctx, ws, send)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			_ = send(rbee.FailErr(me, err))
			return
		}
		if joined {
			warm = true
			info := wp.Info()
			_ = send(rbee.Narrate(me, "worker_reused", fmt.Sprintf("worker %s was just started for %s on %s by another job: no spawn", info.ID, model.Path, info.Device)))
		}
	}
	// Counted in flight at once: the keep-alive must not unload it while
	// this request narrates.
	done := wp.Use()
	defer done()
	if !warm {
		info := wp.Info()
		ev := rbee.Narrate(me, "worker_started", fmt.Sprintf("worker %s is ready on %s (pid %d, loaded in %d ms, engine %s)",
			info.ID, info.Device, info.PID, time.Since(start).Milliseconds(), filepath.Base(engine)))
		ev.Worker = &info
		_ = send(ev)
		if strings.HasPrefix(req.Device, "gpu") && wp.EngineDevice() == "CPU" && req.WorkerType == "" {
			warn := rbee.Narrate(me, "engine_cpu_only", fmt.Sprintf("the engine bundle has no GPU backend: worker %s runs on the CPU although %s was picked", info.ID, req.Device))
			warn.Level = "warn"
			_ = send(warn)
		}
	}
	_ = a.db.TouchModel(ctx, model.ID, time.Now())
	a.stream(ctx, wp, req, warm, send, fail)
}

// openAIChunk is what the hive reads from a worker's stream.
type openAIChunk struct {
	Choices []struct {
		Text  string `json:"text"`
		Delta *struct {
			Content string `json:"content"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
	Timings *struct {
		PromptMS           float64 `json:"prompt_ms"`
		PredictedPerSecond float64 `json:"predicted_per_second"`
	} `json:"timings"`
	Error *struct {
		Message string `json:"message"`
		Code    string `json:"code"`
	} `json:"error"`
}

// stream sends the prompt to the worker and turns its OpenAI stream into
// rbee events.
func (a *Agent) stream(ctx context.Context, wp *supervisor.Worker, req hiveapi.InferRequest, warm bool, send func(rbee.Event) error, fail func(code, msg string)) {
	info := wp.Info()
	// The usage comes in a chunk of its own after the last choice's finish
	// chunk, only when asked for (OpenAI's include_usage).
	body := map[string]any{"stream": true, "stream_options": map[string]any{"include_usage": true}}
	if req.MaxTokens > 0 {
		body["max_tokens"] = req.MaxTokens
	}
	if req.Temperature != nil {
		body["temperature"] = *req.Temperature
	}
	if req.Seed != nil {
		body["seed"] = *req.Seed
	}
	path := "/v1/completions"
	chat := req.Mode == "chat" || (req.Mode != "raw" && wp.ModelChat())
	if chat {
		path = "/v1/chat/completions"
		body["messages"] = []map[string]string{{"role": "user", "content": req.Prompt}}
	} else {
		body["prompt"] = req.Prompt
	}
	b, _ := json.Marshal(body)
	rctx, cancelReq := context.WithCancel(ctx)
	defer cancelReq()
	hreq, err := http.NewRequestWithContext(rctx, "POST", wp.URL(path), bytes.NewReader(b))
	if err != nil {
		fail(rbee.CodeInternal, err.Error())
		return
	}
	hreq.Header.Set("Content-Type", "application/json")
	// From here on a worker that goes silent is watched: a broken stream
	// is first asked whether the watchdog killed it.
	wd := a.watch(rctx, wp, cancelReq)
	defer wd.stop()
	broken := func(err error) {
		if hung := wd.stop(); hung != nil {
			_ = send(rbee.FailErr(actor(a.cfg.Name), hung))
			return
		}
		if ctx.Err() == nil {
			a.brokenStream(wp, err, fail)
		}
	}
	resp, err := wp.Client().Do(hreq)
	if err != nil {
		broken(fmt.Errorf("send the prompt: %w", err))
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 32<<10))
		var c openAIChunk
		msg := strings.TrimSpace(string(raw))
		if json.Unmarshal(raw, &c) == nil && c.Error != nil {
			msg = c.Error.Message
		}
		code := rbee.CodeWorkerFailed
		switch resp.StatusCode {
		case http.StatusBadRequest:
			code = rbee.CodeBadRequest
		case http.StatusServiceUnavailable, http.StatusTooManyRequests: // queue full: busy, not broken
			code = rbee.CodeBusy
		}
		fail(code, fmt.Sprintf("worker %s refused the prompt (%d): %s", info.ID, resp.StatusCode, msg))
		return
	}
	wactor := "worker " + info.ID
	rd := sse.NewReader(resp.Body)
	var done *rbee.Done // sent at [DONE], once the usage chunk filled it in
	for {
		_, data, err := rd.NextRaw()
		if err != nil {
			broken(err)
			return
		}
		wd.alive()
		if string(data) == "[DONE]" {
			if done != nil {
				_ = send(rbee.Event{Type: rbee.EventDone, Time: time.Now(), Actor: wactor, Done: done})
			}
			return
		}
		var c openAIChunk
		if err := json.Unmarshal(data, &c); err != nil {
			fail(rbee.CodeWorkerFailed, fmt.Sprintf("worker %s sent a chunk that is not JSON: %.200q", info.ID, data))
			return
		}
		if c.Error != nil {
			fail(rbee.CodeWorkerFailed, fmt.Sprintf("worker %s: %s (%s)", info.ID, c.Error.Message, c.Error.Code))
			return
		}
		for _, ch := range c.Choices {
			text := ch.Text
			if ch.Delta != nil {
				text = ch.Delta.Content
			}
			if text != "" {
				if send(rbee.Event{Type: rbee.EventToken, Time: time.Now(), Actor: wactor, Text: text}) != nil {
					return // the queen went away; ctx cancels the worker request
				}
			}
			if ch.FinishReason != nil {
				done = &rbee.Done{FinishReason: *ch.FinishReason, Hive: a.cfg.Name, Worker: info.ID, Device: info.Device, Warm: warm}
			}
		}
		if done != nil {
			if c.Usage != nil {
				done.PromptTokens, done.CompletionTokens = c.Usage.PromptTokens, c.Usage.CompletionTokens
			}
			if c.Timings != nil {
				done.PromptMS, done.TokensPerSecond = c.Timings.PromptMS, c.Timings.PredictedPerSecond
			}
		}
	}
}

// brokenStream reports a worker stream that ended without [DONE]: a crash
// when the process is gone, else a broken connection.
func (a *Agent) brokenStream(wp *supervisor.Worker, err error, fail func(code, msg string)) {
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	select {
	case <-wp.Exited():
		fail(rbee.CodeWorkerCrashed, wp.ExitReason()+"; the next request starts a new worker")
	case <-t.C:
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			err = errors.New("the stream ended early")
		}
		fail(rbee.CodeWorkerFailed, fmt.Sprintf("worker %s: %v", wp.Info().ID, err))
	}
}

// DefaultStallTimeout is how long a generating worker may send nothing
// before the hive probes its health; a worker that answers neither is
// hung, and is killed. RBEE_WORKER_STALL overrides it.
const DefaultStallTimeout = 30 * time.Second

// watchdog watches one request to a worker for progress.
type watchdog struct {
	tick   chan struct{}
	done   chan struct{}
	cancel context.CancelFunc
	hung   error // set before done is closed
}

// watch starts a watchdog over a request to wp: when the worker sends
// nothing for the stall timeout and does not answer a health probe
// either, it kills the worker and cancels the request (cancel). It ends
// with ctx, or with stop.
func (a *Agent) watch(ctx context.Context, wp *supervisor.Worker, cancel context.CancelFunc) *watchdog {
	wd := &watchdog{tick: make(chan struct{}, 1), done: make(chan struct{}), cancel: cancel}
	stall := a.cfg.StallTimeout
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer close(wd.done)
		t := time.NewTimer(stall)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-wd.tick:
				t.Reset(stall)
				continue
			case <-t.C:
			}
			// A worker busy with a long prompt still answers its health.
			perr := wp.Probe(ctx, min(max(stall, 2*time.Second), 10*time.Second))
			if perr == nil {
				t.Reset(stall)
				continue
			}
			if ctx.Err() != nil {
				return
			}
			info := wp.Info()
			wd.hung = rbee.Errorf(rbee.CodeWorkerCrashed, "worker %s (pid %d) on hive %s made no progress for %s and did not answer its health probe: killed it; the next request starts a new worker",
				info.ID, info.PID, a.cfg.Name, stall).WithHint("its log: " + filepath.Join(rbee.Home(a.cfg.Home).LogDir(), info.ID+".log"))
			a.log.Warn("worker hung", "worker", info.ID, "pid", info.PID, "stall", stall, "probe", perr)
			cancel() // the job ends now, whatever the kill takes
			_ = a.sup.Kill(info.ID)
			return
		}
	}()
	return wd
}

// alive records progress: a chunk came.
func (wd *watchdog) alive() {
	select {
	case wd.tick <- struct{}{}:
	default:
	}
}

// stop ends the watch (and the request) and says whether the watchdog
// killed the worker, and why.
func (wd *watchdog) stop() error {
	wd.cancel()
	<-wd.done
	return wd.hung
}
