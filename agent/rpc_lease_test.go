package agent

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/hiveapi"
	"github.com/rbee-dev/rbee/internal/testenv"
)

// rpcAgent serves an agent with the real engine bundle on a unix socket
// and returns a client for it; it skips without an rpc-server.
func rpcAgent(t *testing.T) (*Agent, *hiveapi.Client) {
	t.Helper()
	engine, err := testenv.EngineDir()
	if err != nil {
		t.Skip(err)
	}
	if _, err := os.Stat(filepath.Join(engine, "rpc-server")); err != nil {
		t.Skipf("the engine bundle has no rpc-server: %v", err)
	}
	home := t.TempDir()
	worker := filepath.Join(home, "rbee-worker")
	if err := os.WriteFile(worker, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	a, err := New(t.Context(), Config{Home: filepath.Join(home, ".rbee"), WorkerBin: worker, EngineDir: engine, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(home, "hive.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: a.Handler()}
	go func() { _ = srv.Serve(ln) }()
	c := hiveapi.NewClient("test", hiveapi.UnixDialer(sock))
	t.Cleanup(func() {
		c.Close()
		srv.Close()
		a.Close()
	})
	return a, c
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// TestRPCLease: the lease starts rpc-server on 127.0.0.1 with a unix
// relay, closing it stops the server; a server that dies ends its lease
// with the reason; a bad device is refused before anything starts.
func TestRPCLease(t *testing.T) {
	a, c := rpcAgent(t)
	ctx := t.Context()

	if _, err := c.StartRPC(ctx, hiveapi.RPCRequest{Device: "cpu; rm -rf /"}); err == nil || !strings.Contains(err.Error(), "want cpu or gpuN") {
		t.Errorf("bad device: got %v", err)
	}
	if got := a.sup.RPCServers(); len(got) != 0 {
		t.Errorf("a refused lease started %v", got)
	}

	l, err := c.StartRPC(ctx, hiveapi.RPCRequest{Device: "cpu", Job: "job-1"})
	if err != nil {
		t.Fatal(err)
	}
	srv := l.Server
	if srv.Port == 0 || srv.PID == 0 || srv.Job != "job-1" {
		t.Errorf("server %+v", srv)
	}
	st, err := os.Stat(srv.Socket)
	if err != nil || st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Errorf("relay socket %s: %v %v", srv.Socket, st, err)
	}
	if ls, err := c.RPCServers(ctx); err != nil || len(ls) != 1 || ls[0].ID != srv.ID {
		t.Errorf("GET /v1/rpc: %v %v", ls, err)
	}
	// The relay reaches the server: a connection through it is accepted
	// and held (the server waits for llama.cpp's hello).
	nc, err := net.Dial("unix", srv.Socket)
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := nc.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a connection through the relay: got %v, want it held open", err)
	}
	nc.Close()

	l.Close()
	if l.Err() != nil {
		t.Errorf("a lease closed by its owner: Err %v", l.Err())
	}
	waitTrue(t, "the server to stop with its lease", func() bool { return !alive(srv.PID) && len(a.sup.RPCServers()) == 0 })
	if _, err := os.Stat(srv.Socket); !os.IsNotExist(err) {
		t.Errorf("the relay socket is left: %v", err)
	}

	// A server that dies ends its lease, saying why.
	l2, err := c.StartRPC(ctx, hiveapi.RPCRequest{Device: "cpu"})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if err := syscall.Kill(l2.Server.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l2.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the lease outlived its server")
	}
	var ae *hiveapi.APIError
	if err := l2.Err(); !errors.As(err, &ae) || ae.Code() != rbee.CodeWorkerCrashed || !strings.Contains(err.Error(), l2.Server.ID) {
		t.Errorf("lease error %v, want worker_crashed naming %s", err, l2.Server.ID)
	}

	// The lease's start is bounded by its ctx only.
	cctx, cancel := context.WithCancel(ctx)
	l3, err := c.StartRPC(cctx, hiveapi.RPCRequest{Device: "cpu"})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-l3.Done():
		t.Error("the lease ended with its start's ctx")
	case <-time.After(200 * time.Millisecond):
	}
	l3.Close()
	waitTrue(t, "the third server to stop", func() bool { return !alive(l3.Server.PID) })
}

func waitTrue(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
