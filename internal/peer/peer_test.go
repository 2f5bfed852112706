package peer

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestOwnerOnly: with the socket's modes loosened, another user's request
// is refused by its uid; the owner's goes through. The other user is uid
// 65534 (nobody), run through curl; the test runs as root, like CI.
func TestOwnerOnly(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		t.Fatal("this test runs as root (it acts as another user); CI does")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl is needed (apt-get install curl)")
	}
	dir, err := os.MkdirTemp("", "rbee-peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, sock} { // loosened, as a mistake would
		if err := os.Chmod(p, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	srv := &http.Server{Handler: OwnerOnly(ok, func(w http.ResponseWriter, me int) { w.WriteHeader(http.StatusForbidden) }), ConnContext: Context}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })

	for _, tt := range []struct {
		name string
		uid  uint32
		want string
	}{{"owner", 0, "418"}, {"another user", 65534, "403"}} {
		cmd := exec.Command(curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", sock, "http://hive/v1/worker-types")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: tt.uid, Gid: tt.uid}}
		out, err := cmd.Output()
		if got := strings.TrimSpace(string(out)); err != nil || got != tt.want {
			t.Errorf("%s (uid %d): status %q %v, want %s", tt.name, tt.uid, got, err, tt.want)
		}
	}
}

// TestTCPUID: the uid behind a loopback TCP connection is read from the
// kernel's tables: this process's own, and another user's (a curl run as
// uid 65534).
func TestTCPUID(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan int, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			uid, err := TCPUID(c)
			if err != nil {
				t.Error(err)
			}
			got <- uid
			c.Close()
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if uid := <-got; uid != os.Getuid() {
		t.Errorf("own connection: uid %d, want %d", uid, os.Getuid())
	}
	c.Close()
	cmd := exec.Command("curl", "-s", "-m", "5", "http://"+ln.Addr().String()+"/")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	_ = cmd.Start()
	if uid := <-got; uid != 65534 {
		t.Errorf("another user's connection: uid %d, want 65534", uid)
	}
	_ = cmd.Wait()
	if _, err := parseAddr("0100007F:1F90"); err != nil {
		t.Error(err)
	}
	if a, _ := parseAddr("0100007F:1F90"); a.String() != "127.0.0.1:8080" {
		t.Errorf("parseAddr = %s, want 127.0.0.1:8080", a)
	}
}
