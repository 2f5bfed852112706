package supervisor

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rbee-dev/rbee/internal/peer"
)

// SandboxCommand is the hive agent's subcommand that runs an RPC server in
// a network namespace of its own (see RunSandbox).
const SandboxCommand = "rpc-sandbox"

// RunSandbox is `rbee-hive rpc-sandbox --socket PATH --port P -- BIN
// ARGS…`, started by StartRPC in a user and network namespace of its own
// (proc.Options.Isolate). llama.cpp's RPC server has no authentication and
// listens only on TCP: here its 127.0.0.1 is the namespace's, which no
// other process of the machine can reach. It brings the namespace's
// loopback up, starts the server, waits until it accepts, then listens on
// the unix socket PATH (0600, this user only, told by the peer's uid) and
// carries each connection to 127.0.0.1:P. It ends with the server, whose
// exit status it returns.
func RunSandbox(args []string) error {
	fs := flag.NewFlagSet("rbee-hive "+SandboxCommand, flag.ContinueOnError)
	sock := fs.String("socket", "", "unix socket to serve the RPC server on")
	port := fs.Int("port", 0, "the RPC server's port inside the namespace")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cmdline := fs.Args()
	if *sock == "" || *port <= 0 || len(cmdline) == 0 {
		return errors.New("usage: rbee-hive rpc-sandbox --socket PATH --port P -- BIN ARGS…")
	}
	if err := loopbackUp(); err != nil {
		return fmt.Errorf("rpc sandbox: %w", err)
	}
	cmd := exec.Command(cmdline[0], cmdline[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // it dies with us
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("rpc sandbox: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		for sig := range term {
			_ = cmd.Process.Signal(sig)
		}
	}()

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(*port))
	for { // until the server accepts (the agent bounds the wait)
		select {
		case err := <-exited:
			return fmt.Errorf("rpc sandbox: the server exited before it listened: %w", err)
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = os.Remove(*sock)
	old := syscall.Umask(0o177) // 0600 from its creation
	ln, err := net.Listen("unix", *sock)
	syscall.Umask(old)
	if err != nil {
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("rpc sandbox: %w", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		serveSandbox(ln, addr)
	}()
	err = <-exited
	ln.Close()
	wg.Wait()
	os.Remove(*sock)
	return err
}

// serveSandbox carries each connection of this user to addr until ln
// closes; then it closes the connections it carries (the server is gone).
func serveSandbox(ln net.Listener, addr string) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	defer func() {
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		conns = nil
		mu.Unlock()
		wg.Wait()
	}()
	track := func(c net.Conn, on bool) bool {
		mu.Lock()
		defer mu.Unlock()
		if conns == nil {
			return false
		}
		if on {
			conns[c] = true
		} else {
			delete(conns, c)
		}
		return true
	}
	for {
		down, err := ln.Accept()
		if err != nil {
			return
		}
		// Inside the namespace this user is root; any other user of the
		// machine is the overflow uid.
		if uid, err := peer.UID(down); err != nil || !peer.Allowed(uid) {
			fmt.Fprintf(os.Stderr, "rpc sandbox: refused a connection of another user (uid %d here)\n", uid)
			down.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer down.Close()
			up, err := net.Dial("tcp", addr) // Go sets TCP_NODELAY
			if err != nil {
				return
			}
			defer up.Close()
			if !track(down, true) || !track(up, true) {
				return
			}
			defer track(down, false)
			defer track(up, false)
			done := make(chan struct{})
			go func() {
				_, _ = io.Copy(up, down)
				_ = up.(*net.TCPConn).CloseWrite()
				close(done)
			}()
			_, _ = io.Copy(down, up)
			_ = down.(*net.UnixConn).CloseWrite()
			<-done
		}()
	}
}

// loopbackUp brings the namespace's lo up: a new network namespace's is
// down.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}
