package peer

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

// ErrNoSocket: no socket of the machine's tables matches.
var ErrNoSocket = errors.New("no such TCP connection")

// TCPUID is the uid of the process at the other end of a TCP connection
// made on this machine (a loopback connection): the owner of the socket
// whose local address is c's remote one, from the kernel's socket tables.
func TCPUID(c net.Conn) (int, error) {
	l, ok1 := c.LocalAddr().(*net.TCPAddr)
	r, ok2 := c.RemoteAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		return -1, errors.New("peer uid: not a TCP connection")
	}
	return TCPOwner(r, l)
}

// TCPOwner is the uid owning the TCP socket of this machine's network
// namespace whose local address is local and remote address remote.
func TCPOwner(local, remote *net.TCPAddr) (int, error) {
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		uid, err := tcpOwnerIn(table, local, remote)
		if err == nil || !errors.Is(err, ErrNoSocket) {
			return uid, err
		}
	}
	return -1, fmt.Errorf("peer uid: %s → %s: %w", local, remote, ErrNoSocket)
}

func tcpOwnerIn(table string, local, remote *net.TCPAddr) (int, error) {
	f, err := os.Open(table)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return -1, ErrNoSocket
		}
		return -1, fmt.Errorf("peer uid: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 8 {
			continue
		}
		l, err1 := parseAddr(fs[1])
		r, err2 := parseAddr(fs[2])
		if err1 != nil || err2 != nil || !sameAddr(l, local) || !sameAddr(r, remote) {
			continue
		}
		uid, err := strconv.Atoi(fs[7])
		if err != nil {
			return -1, fmt.Errorf("peer uid: %s: %w", table, err)
		}
		return uid, nil
	}
	if err := sc.Err(); err != nil {
		return -1, fmt.Errorf("peer uid: %w", err)
	}
	return -1, ErrNoSocket
}

func sameAddr(a, b *net.TCPAddr) bool { return a.Port == b.Port && a.IP.Equal(b.IP) }

// parseAddr reads the kernel's "IP:PORT" of a socket table: the address in
// 32-bit words of host (little-endian) order, the port big-endian, in hex.
func parseAddr(s string) (*net.TCPAddr, error) {
	ipHex, portHex, ok := strings.Cut(s, ":")
	if !ok {
		return nil, fmt.Errorf("socket address %q", s)
	}
	raw, err := hex.DecodeString(ipHex)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return nil, fmt.Errorf("socket address %q", s)
	}
	ip := make(net.IP, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(ip[i:], binary.LittleEndian.Uint32(raw[i:]))
	}
	port, err := strconv.ParseUint(portHex, 16, 16)
	if err != nil {
		return nil, fmt.Errorf("socket address %q", s)
	}
	return &net.TCPAddr{IP: ip, Port: int(port)}, nil
}
