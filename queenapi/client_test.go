package queenapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/sse"
)

// serveUnix serves h on a unix socket and returns a client for it.
func serveUnix(t *testing.T, h http.Handler) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "q.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	c := Unix(sock)
	t.Cleanup(c.Close)
	return c
}

func TestHealthTellsAQueenFromAnythingElse(t *testing.T) {
	t.Parallel()
	q := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(Health{Service: ServiceName, State: StateReady, PID: 42})
	}))
	if h, err := q.Health(context.Background()); err != nil || h.PID != 42 {
		t.Errorf("Health = %+v, %v", h, err)
	}
	other := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{"status":"ok"}`)) }))
	if _, err := other.Health(context.Background()); !errors.Is(err, ErrNotQueen) {
		t.Errorf("Health of something else: %v, want ErrNotQueen", err)
	}
	gone := Unix(filepath.Join(t.TempDir(), "none.sock"))
	if _, err := gone.Health(context.Background()); !errors.Is(err, ErrUnreachable) {
		t.Errorf("Health with nothing listening: %v, want ErrUnreachable", err)
	}
}

// An error answer keeps its code and hint, and its status.
func TestErrorShape(t *testing.T) {
	t.Parallel()
	c := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		json.NewEncoder(w).Encode(map[string]any{"error": rbee.Error{Code: rbee.CodeHiveUnknown, Message: "no hive named \"x\"", Hint: "rbee hive ls lists the hives"}})
	}))
	_, err := c.HiveStatus(context.Background(), "x")
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Fatalf("err = %v, want an APIError with status 404", err)
	}
	if rbee.CodeOf(err) != rbee.CodeHiveUnknown || rbee.HintOf(err) != "rbee hive ls lists the hives" {
		t.Errorf("code %q hint %q", rbee.CodeOf(err), rbee.HintOf(err))
	}
}

// A stream hands over every event, those of types it does not know too
// (consumers ignore them), and ends with io.EOF.
func TestStreamPassesUnknownEvents(t *testing.T) {
	t.Parallel()
	c := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req JobRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Prompt != "abc" {
			http.Error(w, "bad job", http.StatusBadRequest)
			return
		}
		sw := sse.NewWriter(w)
		defer sw.Close()
		sw.Send(rbee.Event{Type: rbee.EventJob, Job: "job-1"})
		sw.Send(rbee.Event{Type: "from-the-future", Message: "grease"})
		sw.Send(rbee.Event{Type: rbee.EventToken, Text: "d"})
		sw.Send(rbee.Event{Type: rbee.EventDone, Done: &rbee.Done{CompletionTokens: 1}})
	}))
	s, err := c.Job(context.Background(), JobRequest{Prompt: "abc", Model: "/m.gguf"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var types []string
	for {
		ev, err := s.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		types = append(types, ev.Type)
	}
	want := []string{rbee.EventJob, "from-the-future", rbee.EventToken, rbee.EventDone}
	if len(types) != len(want) {
		t.Fatalf("types %v, want %v", types, want)
	}
	for i := range want {
		if types[i] != want[i] {
			t.Errorf("event %d: %s, want %s", i, types[i], want[i])
		}
	}
}

// Over TCP the token goes with every request.
func TestTCPSendsTheToken(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer 0123456789abcdef" {
			w.WriteHeader(http.StatusUnauthorized)
			json.NewEncoder(w).Encode(map[string]any{"error": rbee.Error{Code: rbee.CodeQueenDown, Message: "token"}})
			return
		}
		json.NewEncoder(w).Encode(Workers{Workers: []rbee.WorkerInfo{{ID: "w-1"}}})
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	if ws, err := TCP(addr, "0123456789abcdef").Workers(context.Background()); err != nil || len(ws) != 1 {
		t.Errorf("with the token: %v %v", ws, err)
	}
	if _, err := TCP(addr, "").Workers(context.Background()); rbee.CodeOf(err) != rbee.CodeQueenDown {
		t.Errorf("without the token: %v", err)
	}
}
