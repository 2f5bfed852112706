package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rbee-dev/rbee/bundle"
	"github.com/rbee-dev/rbee/internal/testenv"
	"github.com/rbee-dev/rbee/internal/testmodel"
	"github.com/rbee-dev/rbee/llm"
)

// rpcServerBin returns the bundle's rpc-server, skipping the test for a
// bundle built before make engine added it.
func rpcServerBin(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(engineDir, bundle.RPCServer)
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("the engine bundle %s has no %s (an older bundle; make engine adds it): %v", engineDir, bundle.RPCServer, err)
	}
	return bin
}

// rpcServer is a running llama.cpp rpc-server on loopback.
type rpcServer struct {
	*testenv.Proc
	Addr string
}

// startRPCServer starts the bundle's rpc-server on a free loopback port,
// its tensor cache (-c) in a directory of the test, and waits until it
// answers the protocol's hello. Cleanup stops it by PID.
func startRPCServer(t testing.TB, bin string, args ...string) *rpcServer {
	t.Helper()
	addr, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	p := testenv.Start(t, bin, []string{"LLAMA_CACHE=" + t.TempDir()}, append([]string{"-H", "127.0.0.1", "-p", port, "-t", "1", "-c"}, args...)...)
	// rpc-server says nothing a pipe gets before it exits (its stdout is
	// buffered): it is up when it answers.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		err := llm.ProbeRPC(pctx, addr)
		pcancel()
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("rpc-server on %s never answered: %v; stderr:\n%s", addr, err, p.StderrText())
		case <-time.After(wait):
		}
	}
	return &rpcServer{Proc: p, Addr: addr}
}

var (
	model75mOnce sync.Once
	model75m     string
	model75mErr  error
)

// randomModel75m writes testmodel.Bench (random-75m, F32) once per test
// binary.
func randomModel75m(t testing.TB) string {
	t.Helper()
	model75mOnce.Do(func() {
		model75m, model75mErr = testenv.WriteModel(tmpDir, testmodel.Bench.Name+"-f32.gguf", testmodel.Random(testmodel.Bench))
	})
	if model75mErr != nil {
		t.Fatal(model75mErr)
	}
	return model75m
}

const splitPrompt = "The quick brown fox"

// complete64 asks for 64 greedy tokens and returns the text.
func complete64(t *testing.T, url string) string {
	t.Helper()
	resp, body := post(t, url, "/v1/completions", greedy(splitPrompt, map[string]any{"max_tokens": 64}))
	if resp.StatusCode != 200 {
		t.Fatalf("completion: %d %s", resp.StatusCode, body)
	}
	var c chunk
	if err := json.Unmarshal(body, &c); err != nil {
		t.Fatal(err)
	}
	if c.Usage == nil || c.Usage.CompletionTokens != 64 || len(c.Choices) != 1 {
		t.Fatalf("completion: got %s, want 64 completion tokens", body)
	}
	return c.Choices[0].Text
}

// TestRPCSplit runs random-75m greedily for 64 tokens on this process's
// CPU alone, then split over it and two rpc-servers, and wants the same
// bytes; then it kills one server and wants the worker to end, naming it.
func TestRPCSplit(t *testing.T) {
	bin := rpcServerBin(t)
	model := randomModel75m(t)
	common := []string{"--model", model, "--ctx-size", "256", "--slots", "1"}

	w := startWorker(t, common...)
	want := complete64(t, w.URL)
	w.Stop(10 * time.Second)

	a, b := startRPCServer(t, bin), startRPCServer(t, bin)
	w = startWorker(t, append(common, "--rpc", a.Addr+","+b.Addr, "--tensor-split", "1,1,1")...)
	got := complete64(t, w.URL)
	if got != want {
		t.Errorf("split output differs from the unsplit one:\n got %q\nwant %q", got, want)
	}

	_, h := health(t, w.URL)
	place, _ := h["placement"].([]any)
	wantPlace := []struct {
		device, endpoint string
		output           bool
	}{{"CPU", "", false}, {"RPC0", a.Addr, false}, {"RPC1", b.Addr, true}}
	if len(place) != len(wantPlace) {
		t.Fatalf("placement: got %v, want %d devices", place, len(wantPlace))
	}
	layers := 0
	for i, wp := range wantPlace {
		p, _ := place[i].(map[string]any)
		n, _ := p["layers"].(float64)
		layers += int(n)
		ep, _ := p["endpoint"].(string)
		out, _ := p["output"].(bool)
		if p["device"] != wp.device || ep != wp.endpoint || out != wp.output || n < 7 {
			t.Errorf("placement[%d]: got %v, want %s at %q with 7 or 8 layers, output %v", i, p, wp.device, wp.endpoint, wp.output)
		}
	}
	if layers != testmodel.Bench.Layers {
		t.Errorf("placement: %d layers in all, want %d", layers, testmodel.Bench.Layers)
	}

	// A lost server ends the worker, idle as it is, with its name.
	if err := b.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	code, err := w.Wait(15 * time.Second)
	if err != nil {
		t.Fatalf("worker after its rpc server was killed: %v", err)
	}
	if wantErr := "rpc server lost: " + b.Addr; code == 0 || !strings.Contains(w.StderrText(), wantErr) {
		t.Errorf("worker after its rpc server was killed: exit %d, want non-zero with %q; stderr:\n%s", code, wantErr, w.StderrText())
	}
}

// TestRPCFlags: bad --rpc and --tensor-split values, and servers that are
// not there, end the worker with a clear error, not llama.cpp's abort.
func TestRPCFlags(t *testing.T) {
	rpcServerBin(t)
	free, err := testenv.FreePort() // nobody listens there
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no port", []string{"--rpc", "127.0.0.1"}, `rpc server "127.0.0.1": want HOST:PORT`},
		{"bad port", []string{"--rpc", "127.0.0.1:99999"}, `port "99999" is not a number from 1 to 65535`},
		{"twice", []string{"--rpc", free + "," + free}, "given twice"},
		{"split without rpc", []string{"--tensor-split", "1,1"}, "--tensor-split needs --rpc"},
		{"bad share", []string{"--rpc", free, "--tensor-split", "1,x"}, `"x" is not a number ≥ 0`},
		{"too few shares", []string{"--rpc", free, "--tensor-split", "1"}, "1 shares for this device and 1 rpc servers"},
		{"nobody there", []string{"--rpc", free}, "rpc server " + free + ": dial tcp " + free + ": connect: connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := startRaw(t, tt.args...)
			code, err := p.Wait(60 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			stderr := p.StderrText()
			if code != 1 || !strings.Contains(stderr, tt.want) {
				t.Errorf("got exit %d, stderr:\n%s\nwant exit 1 and %q", code, stderr, tt.want)
			}
		})
	}
}

// A server of another protocol version is refused by the hello probe.
func TestProbeRPCRefusesOtherServers(t *testing.T) {
	ln := listenOnce(t, func(b []byte) []byte { return append([]byte{4, 0, 0, 0, 0, 0, 0, 0}, 6, 0, 0, 0) })
	err := llm.ProbeRPC(t.Context(), ln)
	if !errors.Is(err, llm.ErrRPCServer) || !strings.Contains(err.Error(), "protocol 6.0.0") {
		t.Errorf("probe a 6.0.0 server: got %v, want ErrRPCServer naming 6.0.0", err)
	}
	ln = listenOnce(t, func(b []byte) []byte { return []byte("HTTP/1.1 400 Bad Request\r\n\r\n") })
	if err := llm.ProbeRPC(t.Context(), ln); !errors.Is(err, llm.ErrRPCServer) {
		t.Errorf("probe an HTTP server: got %v, want ErrRPCServer", err)
	}
}

// listenOnce serves one connection on loopback: it reads the 33-byte hello
// and writes answer(hello).
func listenOnce(t *testing.T, answer func([]byte) []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 33)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		_, _ = c.Write(answer(buf))
	}()
	return ln.Addr().String()
}

// TestRPCLostMidStream kills an rpc-server while the worker streams from
// the split model: llama.cpp aborts the worker (SIGABRT) at once, the
// stream ends without [DONE], and nothing hangs.
func TestRPCLostMidStream(t *testing.T) {
	bin := rpcServerBin(t)
	model := randomModel75m(t)
	a, b := startRPCServer(t, bin), startRPCServer(t, bin)
	w := startWorker(t, "--model", model, "--ctx-size", "4096", "--slots", "1", "--rpc", a.Addr+","+b.Addr, "--tensor-split", "1,1,1")
	s := openStream(t, w.URL, "/v1/completions", greedy(splitPrompt, map[string]any{"max_tokens": 4000, "ignore_eos": true, "stream": true}))
	defer s.close()
	for range 3 {
		if _, err := s.next(); err != nil {
			t.Fatalf("stream before the kill: %v", err)
		}
	}
	if err := b.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	code, err := w.Wait(15 * time.Second)
	if err != nil {
		t.Fatalf("worker after its rpc server was killed mid-stream: %v", err)
	}
	if code == 0 {
		t.Errorf("worker after its rpc server was killed mid-stream: exit 0; stderr:\n%s", w.StderrText())
	}
	t.Logf("exit %d (%v); stderr tail: %s", code, w.ExitErr(), lastLine(w.StderrText()))
	for {
		data, err := s.next()
		if err != nil {
			break // the connection went with the worker
		}
		if data == "[DONE]" {
			t.Fatal("the stream ended with [DONE] though the worker died")
		}
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndexByte(s, '\n')+1:]
}
