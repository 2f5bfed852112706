package sshtest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// SSHD is the server the hosts run. It must be an absolute path: sshd
// re-executes itself for every connection.
const SSHD = "/usr/sbin/sshd"

// statePrefix names every state directory this package makes under
// os.TempDir(), so a later run can find what a crashed one left.
const statePrefix = "rbee-sshtest-"

// Host is one running sshd with its own user, as a test sees it.
type Host struct {
	Name       string // "h1", "h2", … in the order Start made them
	User       string
	Addr       string // "127.0.0.N:PORT"
	Port       int
	Home       string // the user's home directory
	Dir        string // harness state: host key, sshd_config, sshd.log
	ClientKey  string // private key that logs in as User (ed25519, no passphrase)
	KnownHosts string // known_hosts with this host's current key: "[127.0.0.N]:PORT ssh-ed25519 …"
	HostKeyPub string // the host's public key line ("ssh-ed25519 AAAA…")
	PID        int    // the listening sshd's pid (0 while killed)
	UID, GID   int

	ip     string
	config string
	log    string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed once the running sshd has been reaped
	frozen []int         // pids Freeze stopped
}

// Options shape the sshd_config of every host of one Start.
type Options struct {
	// NoForwarding sets AllowTcpForwarding and AllowStreamLocalForwarding
	// to no (they are yes otherwise): the "forwarding refused" fault.
	NoForwarding bool
	// ExtraConfig is written at the top of sshd_config. sshd keeps the
	// first value it reads for a keyword, so these lines win over the
	// harness's own; a Match block does not belong here.
	ExtraConfig string
}

var (
	hostSeq   atomic.Int64 // hosts begun by this process; picks addresses
	portMu    sync.Mutex
	port      int        // this process's port, re-picked on a collision
	passwdMu  sync.Mutex // useradd and userdel both lock /etc/passwd
	sweepOnce sync.Once
)

var errAddrInUse = errors.New("address in use")

// Available says why hosts cannot run here, or nil when they can.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("sshtest: must run as root (useradd, and sshd logging in as other users)")
	}
	if _, err := os.Stat(SSHD); err != nil {
		return fmt.Errorf("sshtest: %s missing: apt-get install -y openssh-server", SSHD)
	}
	for _, tool := range []string{"useradd", "userdel", "ssh"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("sshtest: %s not found: apt-get install -y openssh-server passwd", tool)
		}
	}
	return nil
}

// Start starts n hosts and registers a cleanup that kills every process
// they started (sshd by PID, then everything running as their users, found
// by uid in /proc), deletes the users with their homes and removes the
// state. It fails the test when hosts cannot run (see Available).
func Start(t testing.TB, n int, opt Options) []*Host {
	t.Helper()
	if err := Available(); err != nil {
		t.Fatal(err)
	}
	if n < 1 || n > 250 {
		t.Fatalf("sshtest: %d hosts asked, want 1 to 250", n)
	}
	sweepOnce.Do(sweepStale)
	base, err := newBase()
	if err != nil {
		t.Fatal(err)
	}
	var hosts []*Host
	t.Cleanup(func() { cleanup(t, base, hosts) })
	for i := 1; i <= n; i++ {
		h := &Host{Name: fmt.Sprintf("h%d", i)}
		hosts = append(hosts, h)
		if err := h.setup(base, i, opt); err != nil {
			t.Fatalf("sshtest: start host %s: %v", h.Name, err)
		}
	}
	return hosts
}

// newBase makes this Start's state directory: 0755 and below traversable
// parents, since each user must reach its home inside it.
func newBase() (string, error) {
	tmp, err := filepath.Abs(os.TempDir())
	if err != nil {
		return "", err
	}
	for p := tmp; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("sshtest: %w", err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return "", fmt.Errorf("sshtest: %s (mode %v) cannot be traversed by the host users; set TMPDIR elsewhere", p, fi.Mode().Perm())
		}
		if p == "/" {
			break
		}
	}
	base, err := os.MkdirTemp(tmp, fmt.Sprintf("%s%d-", statePrefix, os.Getpid()))
	if err != nil {
		return "", fmt.Errorf("sshtest: %w", err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		return "", fmt.Errorf("sshtest: %w", err)
	}
	owner := fmt.Sprintf("%d %s\n", os.Getpid(), procStartTime(os.Getpid()))
	if err := os.WriteFile(filepath.Join(base, "owner"), []byte(owner), 0o644); err != nil {
		return "", fmt.Errorf("sshtest: %w", err)
	}
	return base, nil
}

// hostRecord is what a later run needs to clean up after a crashed one.
type hostRecord struct {
	User   string `json:"user"`
	Home   string `json:"home"`
	Config string `json:"config"`
}

func (h *Host) setup(base string, idx int, opt Options) error {
	h.Dir = filepath.Join(base, h.Name)
	h.Home = filepath.Join(h.Dir, "home")
	h.User = userName(base, idx)
	h.config = filepath.Join(h.Dir, "sshd_config")
	h.log = filepath.Join(h.Dir, "sshd.log")
	h.KnownHosts = filepath.Join(h.Dir, "known_hosts")
	h.ClientKey = filepath.Join(h.Dir, "id_ed25519")
	if err := os.Mkdir(h.Dir, 0o755); err != nil {
		return err
	}
	rec, err := json.Marshal(hostRecord{User: h.User, Home: h.Home, Config: h.config})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(h.Dir, "host.json"), rec, 0o644); err != nil {
		return err
	}
	hostPub, err := writeKey(filepath.Join(h.Dir, "ssh_host_ed25519_key"), "sshtest-host-"+h.Name)
	if err != nil {
		return err
	}
	h.HostKeyPub = hostPub
	clientPub, err := writeKey(h.ClientKey, "sshtest-client-"+h.Name)
	if err != nil {
		return err
	}
	if err := h.addUser(clientPub); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		p := currentPort()
		h.ip = nextIP()
		h.Port = p
		h.Addr = net.JoinHostPort(h.ip, strconv.Itoa(p))
		if err := h.writeConfig(opt); err != nil {
			return err
		}
		if err := h.writeKnownHosts(); err != nil {
			return err
		}
		err := errAddrInUse
		if addrFree(h.Addr) {
			err = h.startSSHD()
		}
		if !errors.Is(err, errAddrInUse) {
			return err
		}
		if attempt == 20 {
			return fmt.Errorf("no free loopback address after %d tries", attempt+1)
		}
		repickPort(p)
	}
}

// userName is ≤ 31 characters and unique to the state directory and index,
// so parallel tests and processes never share (or delete) a user.
func userName(base string, idx int) string {
	sum := sha256.Sum256([]byte(base))
	return fmt.Sprintf("rb%sh%d", hex.EncodeToString(sum[:])[:10], idx)
}

// nextIP spreads processes (by pid) and hosts (by a counter) over
// 127.0.0.2–254; the port tells apart the rare pair that meets.
func nextIP() string {
	n := (int64(os.Getpid())*7 + hostSeq.Add(1) - 1) % 253
	return fmt.Sprintf("127.0.0.%d", 2+n)
}

func currentPort() int {
	portMu.Lock()
	defer portMu.Unlock()
	if port == 0 {
		port = randomPort()
	}
	return port
}

func repickPort(old int) {
	portMu.Lock()
	defer portMu.Unlock()
	if port == old {
		port = randomPort()
	}
}

func randomPort() int {
	n, err := rand.Int(rand.Reader, big.NewInt(40000))
	if err != nil {
		panic(err)
	}
	return 20000 + int(n.Int64())
}

func addrFree(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// writeKey writes a new ed25519 private key (OpenSSH format, 0600) and its
// .pub, and returns the public key line.
func writeKey(path, comment string) (string, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	blk, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
		return "", err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return "", err
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub)))
	if err := os.WriteFile(path+".pub", []byte(line+" "+comment+"\n"), 0o644); err != nil {
		return "", err
	}
	return line, nil
}

func (h *Host) addUser(clientPub string) error {
	// -p '*': no password, but not locked: with UsePAM no, sshd refuses
	// locked accounts ("!") even for keys.
	if out, err := passwdTool("useradd", "-m", "-d", h.Home, "-s", "/bin/bash", "-p", "*", h.User); err != nil {
		return fmt.Errorf("useradd %s: %w: %s", h.User, err, out)
	}
	u, err := user.Lookup(h.User)
	if err != nil {
		return err
	}
	if h.UID, err = strconv.Atoi(u.Uid); err != nil {
		return err
	}
	if h.GID, err = strconv.Atoi(u.Gid); err != nil {
		return err
	}
	sshDir := filepath.Join(h.Home, ".ssh")
	keys := filepath.Join(sshDir, "authorized_keys")
	if err := os.Mkdir(sshDir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(keys, []byte(clientPub+"\n"), 0o600); err != nil {
		return err
	}
	for _, p := range []string{h.Home, sshDir, keys} {
		if err := os.Chown(p, h.UID, h.GID); err != nil {
			return err
		}
	}
	return os.Chmod(h.Home, 0o755)
}

// passwdTool runs useradd or userdel, retrying while another process
// (a parallel test binary) holds the lock on /etc/passwd.
func passwdTool(name string, args ...string) ([]byte, error) {
	passwdMu.Lock()
	defer passwdMu.Unlock()
	for try := 0; ; try++ {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err == nil || try == 100 || !bytes.Contains(out, []byte("lock")) {
			return out, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (h *Host) writeConfig(opt Options) error {
	fwd := "yes"
	if opt.NoForwarding {
		fwd = "no"
	}
	var b strings.Builder
	if opt.ExtraConfig != "" {
		b.WriteString(strings.TrimRight(opt.ExtraConfig, "\n") + "\n")
	}
	fmt.Fprintf(&b, `ListenAddress %s
HostKey %s
PidFile %s
AllowUsers %s
AuthorizedKeysFile .ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
StrictModes yes
AllowTcpForwarding %s
AllowStreamLocalForwarding %s
GatewayPorts no
AllowAgentForwarding no
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
ClientAliveInterval 5
ClientAliveCountMax 3
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp internal-sftp
LogLevel INFO
`, h.Addr, filepath.Join(h.Dir, "ssh_host_ed25519_key"), filepath.Join(h.Dir, "sshd.pid"), h.User, fwd, fwd)
	if sshdHasPenalties() {
		// OpenSSH 9.8+ would lock out 127.0.0.1 after the fault tests.
		b.WriteString("PerSourcePenalties no\n")
	}
	return os.WriteFile(h.config, []byte(b.String()), 0o644)
}

func (h *Host) writeKnownHosts() error {
	line := fmt.Sprintf("[%s]:%d %s\n", h.ip, h.Port, h.HostKeyPub)
	return os.WriteFile(h.KnownHosts, []byte(line), 0o644)
}

var (
	penaltiesOnce sync.Once
	penalties     bool
)

// sshdHasPenalties reports whether sshd knows PerSourcePenalties (9.8+).
func sshdHasPenalties() bool {
	penaltiesOnce.Do(func() {
		out, _ := exec.Command(SSHD, "-V").CombinedOutput()
		m := regexp.MustCompile(`OpenSSH_(\d+)\.(\d+)`).FindSubmatch(out)
		if m == nil {
			return
		}
		major, _ := strconv.Atoi(string(m[1]))
		minor, _ := strconv.Atoi(string(m[2]))
		penalties = major > 9 || major == 9 && minor >= 8
	})
	return penalties
}

// startSSHD starts sshd in the foreground of a child process and waits
// until it says it listens and the port answers. It reports errAddrInUse
// when another process holds the address.
func (h *Host) startSSHD() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cmd != nil {
		return fmt.Errorf("sshd for %s already running (pid %d)", h.Addr, h.PID)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return err
	}
	if err := os.Chmod("/run/sshd", 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(h.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fi, err := logf.Stat()
	if err != nil {
		logf.Close()
		return err
	}
	off := fi.Size()
	cmd := exec.Command(SSHD, "-D", "-e", "-f", h.config)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig: a test binary that dies (timeout panic) takes its sshd
	// listeners with it; the next run's sweep removes the rest.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("start sshd: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	h.cmd, h.exited, h.PID = cmd, exited, cmd.Process.Pid

	listening := fmt.Sprintf("Server listening on %s port %d", h.ip, h.Port)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if strings.Contains(readFrom(h.log, off), listening) {
			if c, err := net.DialTimeout("tcp", h.Addr, time.Second); err == nil {
				c.Close()
				return nil
			}
		}
		select {
		case <-exited:
			h.cmd, h.PID = nil, 0
			out := readFrom(h.log, off)
			if strings.Contains(out, "Address already in use") {
				return errAddrInUse
			}
			return fmt.Errorf("sshd for %s exited: %s", h.Addr, strings.TrimSpace(out))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			h.killLocked()
			return fmt.Errorf("sshd for %s not listening after 15s: %s", h.Addr, strings.TrimSpace(readFrom(h.log, off)))
		}
	}
}

func readFrom(path string, off int64) string {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < off {
		return ""
	}
	return string(b[off:])
}

// Kill sends SIGKILL to this host's listening sshd and to every process
// below it (the per-connection sshd processes and their commands), so open
// connections break as they would when a machine dies. Processes that left
// the tree (setsid daemons whose parent exited) keep running.
func (h *Host) Kill() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.killLocked()
}

func (h *Host) killLocked() {
	if h.cmd == nil {
		return
	}
	select {
	case <-h.exited: // died on its own; its pid may already be reused
		h.cmd, h.PID = nil, 0
		return
	default:
	}
	tree := h.stopTree()
	_ = syscall.Kill(h.PID, syscall.SIGKILL)
	for _, pid := range tree {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	select {
	case <-h.exited:
	case <-time.After(10 * time.Second):
	}
	waitGone(tree, 5*time.Second)
	h.cmd, h.PID, h.frozen = nil, 0, nil
}

// Freeze stops (SIGSTOP) the listening sshd and every process below it:
// connections stay open but nothing answers, as with a host that hangs or
// a network that drops packets. Thaw resumes them.
func (h *Host) Freeze() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cmd == nil {
		return
	}
	h.frozen = append([]int{h.PID}, h.stopTree()...)
}

// stopTree sends SIGSTOP to the listener and everything below it, again
// and again until no new process appears: a process caught mid-fork (the
// monitor forking the post-auth child) would otherwise leave a child
// outside the snapshot. It returns the stopped descendants.
func (h *Host) stopTree() []int {
	_ = syscall.Kill(h.PID, syscall.SIGSTOP)
	stopped := map[int]bool{}
	var tree []int
	for range 100 {
		fresh := 0
		for _, pid := range descendants(h.PID) {
			if !stopped[pid] {
				stopped[pid] = true
				tree = append(tree, pid)
				_ = syscall.Kill(pid, syscall.SIGSTOP)
				fresh++
			}
		}
		if fresh == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	return tree
}

// Thaw resumes what Freeze stopped.
func (h *Host) Thaw() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, pid := range h.frozen {
		if alive(pid) {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	h.frozen = nil
}

// Restart starts sshd again on the same address with the same host key.
func (h *Host) Restart(t testing.TB) {
	t.Helper()
	if err := h.startSSHD(); err != nil {
		t.Fatalf("sshtest: restart %s: %v", h.Name, err)
	}
}

// RotateHostKey gives the host a new host key and restarts it: clients
// that recorded the old key must now refuse it. KnownHosts and HostKeyPub
// follow the new key; copy the old file first to keep it.
func (h *Host) RotateHostKey(t testing.TB) {
	t.Helper()
	h.Kill()
	pub, err := writeKey(filepath.Join(h.Dir, "ssh_host_ed25519_key"), "sshtest-host-"+h.Name)
	if err != nil {
		t.Fatalf("sshtest: rotate host key of %s: %v", h.Name, err)
	}
	h.HostKeyPub = pub
	if err := h.writeKnownHosts(); err != nil {
		t.Fatalf("sshtest: rotate host key of %s: %v", h.Name, err)
	}
	h.Restart(t)
}

// SSHArgs are the arguments for OpenSSH's ssh to log in to the host,
// destination last: append the remote command. No user or system ssh
// config is read.
func (h *Host) SSHArgs() []string {
	return []string{
		"-F", "/dev/null",
		"-i", h.ClientKey,
		"-p", strconv.Itoa(h.Port),
		"-l", h.User,
		"-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile=" + h.KnownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes",
		"-o", "ConnectTimeout=10",
		h.ip,
	}
}

// Run runs a shell command on the host as its user through OpenSSH's ssh
// and returns its stdout; any failure is fatal. A command that leaves a
// background process holding stdout open must redirect it, or Run waits
// for that process. Call it from the test's goroutine.
func (h *Host) Run(t testing.TB, cmd string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, "ssh", append(h.SSHArgs(), cmd)...)
	var stderr bytes.Buffer
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		t.Fatalf("sshtest: ssh %s %q: %v\n%s", h.Name, cmd, err, stderr.Bytes())
	}
	return string(out)
}

func cleanup(t testing.TB, base string, hosts []*Host) {
	for _, h := range hosts {
		if t.Failed() {
			if b, err := os.ReadFile(h.log); err == nil {
				if len(b) > 4096 {
					b = b[len(b)-4096:]
				}
				t.Logf("sshtest: sshd log of %s (%s):\n%s", h.Name, h.Addr, b)
			}
		}
		h.Kill()
		if err := removeUser(h.User, h.Home); err != nil {
			t.Errorf("sshtest: clean up %s: %v", h.Name, err)
		}
	}
	if err := os.RemoveAll(base); err != nil {
		t.Errorf("sshtest: clean up: %v", err)
	}
}

// removeUser kills every process running as the user and deletes it with
// its home, but only a user whose home is the one this package gave it.
func removeUser(name, home string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return nil // never made, or already gone
	}
	if u.HomeDir != home {
		return fmt.Errorf("user %s has home %s, not %s: left alone", name, u.HomeDir, home)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil || uid == 0 {
		return fmt.Errorf("user %s has uid %q: left alone", name, u.Uid)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var left []int
		for _, p := range listProcs() {
			if p.uid == uid && !p.zombie {
				left = append(left, p.pid)
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes of %s still running: %v", name, left)
		}
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// -f: zombies still count as the user's processes where pid 1 does
	// not reap them.
	if out, err := passwdTool("userdel", "-r", "-f", name); err != nil {
		if _, lerr := user.Lookup(name); lerr == nil {
			return fmt.Errorf("userdel %s: %w: %s", name, err, out)
		}
	}
	return nil
}

// sweepStale removes what earlier test processes left when they died
// before their cleanups ran: their sshd processes, users and state.
func sweepStale() {
	bases, _ := filepath.Glob(filepath.Join(os.TempDir(), statePrefix+"*"))
	for _, base := range bases {
		if !stale(base) {
			continue
		}
		recs, _ := filepath.Glob(filepath.Join(base, "h*", "host.json"))
		for _, path := range recs {
			b, err := os.ReadFile(path)
			if err != nil {
				continue
			}
			var rec hostRecord
			if json.Unmarshal(b, &rec) != nil || rec.Config == "" {
				continue
			}
			for _, p := range listProcs() {
				// sshd rewrites its argv ("sshd: … -f CONFIG [listener]"); the
				// config path, random per run, still names it.
				if cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.pid)); err == nil &&
					bytes.Contains(cmd, []byte(rec.Config)) {
					_ = syscall.Kill(p.pid, syscall.SIGKILL)
				}
			}
			_ = removeUser(rec.User, rec.Home)
		}
		_ = os.RemoveAll(base)
	}
}

// stale reports whether the process that made base is gone.
func stale(base string) bool {
	b, err := os.ReadFile(filepath.Join(base, "owner"))
	if err != nil {
		fi, serr := os.Stat(base)
		return serr == nil && time.Since(fi.ModTime()) > time.Minute
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return true
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		return true
	}
	return procStartTime(pid) != f[1]
}

type proc struct {
	pid, ppid, uid int
	zombie         bool
}

// listProcs reads every process's parent, real uid and state from /proc.
func listProcs() []proc {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var ps []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		p := proc{pid: pid, uid: -1}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			f := strings.Fields(v)
			if len(f) == 0 {
				continue
			}
			switch k {
			case "State":
				p.zombie = f[0] == "Z" || f[0] == "X"
			case "PPid":
				p.ppid, _ = strconv.Atoi(f[0])
			case "Uid":
				p.uid, _ = strconv.Atoi(f[0])
			}
		}
		ps = append(ps, p)
	}
	return ps
}

// descendants lists the live processes below pid.
func descendants(pid int) []int {
	children := map[int][]int{}
	for _, p := range listProcs() {
		if !p.zombie {
			children[p.ppid] = append(children[p.ppid], p.pid)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		next := queue[0]
		queue = queue[1:]
		for _, c := range children[next] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// alive reports whether pid runs and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	st := b[i+2]
	return st != 'Z' && st != 'X'
}

func waitGone(pids []int, d time.Duration) {
	deadline := time.Now().Add(d)
	for _, pid := range pids {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// procStartTime is the process's start time in clock ticks since boot
// (field 22 of /proc/PID/stat): with the pid it names one process, even
// after the pid is reused. "" when there is no such process.
func procStartTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return ""
	}
	return f[19]
}
