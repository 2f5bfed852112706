package llm

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrRPCLost means an RPC server the engine splits a model over closed
// its connection: the server or the link to it is gone, and the next
// token would make llama.cpp abort the process.
var ErrRPCLost = errors.New("rpc server lost")

// WatchRPC returns when ctx ends (nil) or when the connection to one of
// the RPC servers added with AddRPCServers is lost: no longer open, or
// closed by the server (ErrRPCLost naming it). llama.cpp notices a lost
// server only when it next sends it work, and then aborts the process; a
// worker that is idle would go on answering /health meanwhile. The
// connections are looked up in /proc every interval, and one must be
// seen lost twice in a row (llama.cpp may reconnect in between); where
// /proc cannot be read (not Linux), WatchRPC waits for ctx alone.
func (e *Engine) WatchRPC(ctx context.Context, every time.Duration) error {
	e.rpcMu.Lock()
	eps := make([]string, 0, len(e.rpcAdded))
	for ep := range e.rpcAdded {
		eps = append(eps, ep)
	}
	e.rpcMu.Unlock()
	slices.Sort(eps)
	remotes := map[string][]string{} // endpoint → "ip:port" forms
	for _, ep := range eps {
		host, port, err := net.SplitHostPort(ep)
		if err != nil {
			return err
		}
		ips, err := net.DefaultResolver.LookupHost(ctx, host)
		if err != nil {
			return fmt.Errorf("watch rpc server %s: %w", ep, err)
		}
		for _, ip := range ips {
			remotes[ep] = append(remotes[ep], net.JoinHostPort(ip, port))
		}
	}
	if len(eps) == 0 {
		<-ctx.Done()
		return nil
	}
	if _, err := os.Stat("/proc/self/net/tcp"); err != nil {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(every)
	defer t.Stop()
	missed := map[string]int{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		conns, err := ownTCP()
		if err != nil {
			continue // a /proc hiccup is no lost server
		}
		for _, ep := range eps {
			state := ""
			for _, r := range remotes[ep] {
				if s, ok := conns[r]; ok && (state == "" || s == tcpEstablished) {
					state = s
				}
			}
			if state == tcpEstablished {
				missed[ep] = 0
				continue
			}
			if missed[ep]++; missed[ep] < 2 {
				continue
			}
			why := "no connection to it is open"
			if state == tcpCloseWait {
				why = "it closed the connection"
			} else if state != "" {
				why = "its connection is in TCP state " + state
			}
			return fmt.Errorf("%w: %s: %s", ErrRPCLost, ep, why)
		}
	}
}

// TCP states of /proc/net/tcp.
const (
	tcpEstablished = "01"
	tcpCloseWait   = "08"
)

// ownTCP maps the remote address ("ip:port") of each IPv4 TCP socket this
// process holds to its state, an established one winning over others.
func ownTCP() (map[string]string, error) {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err != nil {
			continue
		}
		if ino, ok := strings.CutPrefix(l, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	f, err := os.Open("/proc/self/net/tcp")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		fs := strings.Fields(sc.Text())
		if len(fs) < 10 || !inodes[fs[9]] {
			continue
		}
		remote, ok := procAddr(fs[2])
		if !ok {
			continue
		}
		if out[remote] != tcpEstablished {
			out[remote] = fs[3]
		}
	}
	return out, sc.Err()
}

// procAddr turns /proc/net/tcp's "0100007F:C476" into "127.0.0.1:50294".
func procAddr(s string) (string, bool) {
	h, p, ok := strings.Cut(s, ":")
	if !ok || len(h) != 8 {
		return "", false
	}
	b, err := hex.DecodeString(h)
	if err != nil {
		return "", false
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return "", false
	}
	var ip [4]byte
	binary.LittleEndian.PutUint32(ip[:], binary.BigEndian.Uint32(b))
	return net.JoinHostPort(net.IP(ip[:]).String(), strconv.FormatUint(port, 10)), true
}
