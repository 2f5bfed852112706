package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rbee-dev/rbee/internal/sshtest"
	"github.com/rbee-dev/rbee/remote"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// hostOptions are the Options that reach h as the harness intends.
func hostOptions(h *sshtest.Host) Options {
	ip, _, _ := net.SplitHostPort(h.Addr)
	return Options{
		Target:  &remote.Target{Host: ip, Port: h.Port, User: h.User, IdentityFiles: []string{h.ClientKey}},
		Config:  remote.Config{KnownHosts: h.KnownHosts, SSHConfig: "none"},
		Version: "test",
	}
}

func run(t *testing.T, opt Options) *Report {
	t.Helper()
	rep, err := Run(testCtx(t), opt)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	rep.WriteText(&b)
	t.Logf("\n%s", b.String())
	return rep
}

// verdicts checks the verdict of each named check.
func verdicts(t *testing.T, rep *Report, want map[string]Verdict) {
	t.Helper()
	for name, v := range want {
		c, ok := rep.Check(name)
		if !ok {
			t.Errorf("no %s check", name)
			continue
		}
		if c.Verdict != v {
			t.Errorf("%s: got %s (%s), want %s", name, c.Verdict, c.Detail, v)
		}
	}
}

// snapshot lists everything under the home with its mode, size and
// modification time: equal snapshots mean nothing was written there.
func snapshot(t *testing.T, home string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(home, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %v %d %d\n", p, fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// unchanged fails the test when the home's listing differs from before.
func unchanged(t *testing.T, h *sshtest.Host, before string) {
	t.Helper()
	if after := snapshot(t, h.Home); after != before {
		t.Errorf("the home of %s changed:\nbefore:\n%s\nafter:\n%s", h.Name, before, after)
	}
}

func TestHealthyHost(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	before := snapshot(t, h.Home)
	rep := run(t, hostOptions(h))
	for _, c := range rep.Checks {
		if c.Verdict == Fail || c.Verdict == Warn {
			t.Errorf("%s: got %s (%s), want ok or skip on a healthy host", c.Name, c.Verdict, c.Detail)
		}
	}
	verdicts(t, rep, map[string]Verdict{checkReach: OK, checkHostKey: OK, checkAuth: OK, checkForwarding: OK,
		checkPlatform: OK, checkGlibc: OK, checkLibs: OK, checkDisk: OK, checkHome: OK, checkInstalled: OK})
	if c, _ := rep.Check(checkAuth); !strings.Contains(c.Detail, h.ClientKey) {
		t.Errorf("auth: got %q, want the key used (%s)", c.Detail, h.ClientKey)
	}
	if want := h.User + "@" + h.Addr; rep.Target != want {
		t.Errorf("target: got %q, want %q", rep.Target, want)
	}
	f := rep.Facts
	if f.Home != h.Home || !f.HomeWritable || f.HostKey != "known" || f.Forwarding != "allowed" || f.AuthMethod == "" {
		t.Errorf("facts: got %+v", f)
	}

	t.Run("json", func(t *testing.T) {
		var buf bytes.Buffer
		if err := rep.WriteJSON(&buf); err != nil {
			t.Fatal(err)
		}
		var got Report
		if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
			t.Fatalf("decode %s: %v", buf.Bytes(), err)
		}
		if got.Target != rep.Target || len(got.Checks) != len(rep.Checks) || got.Facts.Glibc != rep.Facts.Glibc || got.Facts.Home != h.Home {
			t.Errorf("round trip: got %+v, want %+v", got, rep)
		}
		for _, key := range []string{`"verdict": "ok"`, `"home_writable": true`, `"free_bytes"`, `"libraries"`} {
			if !strings.Contains(buf.String(), key) {
				t.Errorf("json lacks %s:\n%s", key, buf.String())
			}
		}
	})
	t.Run("unknown host key", func(t *testing.T) {
		opt := hostOptions(h)
		opt.Config.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
		rep := run(t, opt)
		verdicts(t, rep, map[string]Verdict{checkReach: Fail, checkHostKey: Fail, checkAuth: Skip, checkGlibc: Skip})
		if rep.Facts.HostKey != "unknown" {
			t.Errorf("host key: got %q, want unknown", rep.Facts.HostKey)
		}
		if _, err := os.Stat(opt.Config.KnownHosts); err == nil {
			t.Errorf("known_hosts written without --accept-new-host-key")
		}
		opt.Config.AcceptNewHostKey = true
		rep = run(t, opt)
		verdicts(t, rep, map[string]Verdict{checkReach: OK, checkHostKey: OK, checkGlibc: OK})
		if rep.Facts.HostKey != "recorded" {
			t.Errorf("host key: got %q, want recorded", rep.Facts.HostKey)
		}
	})
	t.Run("changed host key", func(t *testing.T) {
		opt := hostOptions(h)
		opt.Config.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
		other := strings.Replace(readFile(t, h.KnownHosts), h.HostKeyPub, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl", 1)
		if err := os.WriteFile(opt.Config.KnownHosts, []byte(other), 0o600); err != nil {
			t.Fatal(err)
		}
		rep := run(t, opt)
		verdicts(t, rep, map[string]Verdict{checkReach: Fail, checkHostKey: Fail})
		if rep.Facts.HostKey != "changed" {
			t.Errorf("host key: got %q, want changed", rep.Facts.HostKey)
		}
	})
	t.Run("wrong key", func(t *testing.T) {
		opt := hostOptions(h)
		opt.Target.IdentityFiles = []string{filepath.Join(t.TempDir(), "no-such-key")}
		rep := run(t, opt)
		verdicts(t, rep, map[string]Verdict{checkReach: Fail, checkHostKey: OK, checkAuth: Fail})
		if c, _ := rep.Check(checkReach); !strings.Contains(c.Detail, "stopped at auth") {
			t.Errorf("reach: got %q, want it to name the auth step", c.Detail)
		}
	})
	t.Run("nothing listens", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().(*net.TCPAddr)
		l.Close()
		opt := hostOptions(h)
		opt.Target.Host, opt.Target.Port = "127.0.0.1", addr.Port
		rep := run(t, opt)
		verdicts(t, rep, map[string]Verdict{checkReach: Fail, checkHostKey: Skip})
		if c, _ := rep.Check(checkReach); !strings.HasPrefix(c.Detail, "connect to 127.0.0.1:"+strconv.Itoa(addr.Port)) {
			t.Errorf("reach: got %q, want the connect step", c.Detail)
		}
	})
	unchanged(t, h, before)
	// Last: it writes into the home.
	t.Run("installed", func(t *testing.T) {
		dir := filepath.Join(h.Home, ".rbee", "hive", "0.1.0")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(filepath.Join(h.Home, ".rbee")) })
		rep := run(t, hostOptions(h))
		if !slices.Equal(rep.Facts.Installed, []string{"0.1.0"}) {
			t.Errorf("installed: got %v, want [0.1.0]", rep.Facts.Installed)
		}
	})
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestForwardingDisabled(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{NoForwarding: true})[0]
	before := snapshot(t, h.Home)
	rep := run(t, hostOptions(h))
	verdicts(t, rep, map[string]Verdict{checkReach: OK, checkForwarding: Warn, checkGlibc: OK, checkHome: OK})
	if rep.Facts.Forwarding != "refused" {
		t.Errorf("forwarding: got %q, want refused", rep.Facts.Forwarding)
	}
	if c, _ := rep.Check(checkForwarding); !strings.Contains(c.Detail, "prohibited") {
		t.Errorf("forwarding: got %q, want the server's refusal", c.Detail)
	}
	unchanged(t, h, before)
}

func TestHomeNotWritable(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	// 0555: still accepted by sshd's StrictModes, not writable by the user.
	if err := os.Chmod(h.Home, 0o555); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, h.Home)
	rep := run(t, hostOptions(h))
	verdicts(t, rep, map[string]Verdict{checkReach: OK, checkHome: Fail, checkLibs: OK})
	if c, _ := rep.Check(checkHome); !strings.Contains(c.Detail, "not writable by "+h.User) || c.Hint == "" {
		t.Errorf("home: got %+v, want it not writable by %s, with a hint", c, h.User)
	}
	if !rep.Failed() {
		t.Error("Failed: got false, want true")
	}
	unchanged(t, h, before)
}

// TestLibffiMissing runs the host's sshd in a mount namespace where an
// overlay hides libffi.so.8 from the library directories (whiteouts), so
// the host looks like one without libffi while this machine keeps it.
func TestLibffiMissing(t *testing.T) {
	t.Parallel()
	hideLibrary(t, "libffi.so")
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	before := snapshot(t, h.Home)
	rep := run(t, hostOptions(h))
	verdicts(t, rep, map[string]Verdict{checkReach: OK, checkLibs: Fail, checkGlibc: OK, checkHome: OK})
	c, _ := rep.Check(checkLibs)
	if !strings.Contains(c.Detail, "missing libffi.so.8") || !strings.Contains(c.Hint, "libffi8") {
		t.Errorf("libraries: got %+v, want libffi.so.8 missing with an install hint", c)
	}
	for _, l := range rep.Facts.Libraries {
		if l.Name == "libffi.so.8" && l.Path != "" {
			t.Errorf("libffi.so.8 found at %s", l.Path)
		}
	}
	unchanged(t, h, before)
}

// hideLibrary moves the test's goroutine, locked to its thread for good
// (the thread ends with the test), into a new mount namespace in which
// every file named prefix* in the loader's directories is whited out by an
// overlay. Processes the goroutine starts from then on (the harness's
// sshd, and so every session on the host) inherit the namespace; the rest
// of the machine is untouched.
func hideLibrary(t *testing.T, prefix string) {
	t.Helper()
	machine := map[string]string{"amd64": "x86_64", "arm64": "aarch64"}[runtime.GOARCH]
	var dirs []string
	for _, d := range []string{"/lib/" + machine + "-linux-gnu", "/usr/lib/" + machine + "-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"} {
		real, err := filepath.EvalSymlinks(d)
		if err != nil || slices.Contains(dirs, real) {
			continue
		}
		if m, _ := filepath.Glob(filepath.Join(real, prefix+"*")); len(m) > 0 {
			dirs = append(dirs, real)
		}
	}
	if len(dirs) == 0 {
		t.Fatalf("no %s* on this machine to hide", prefix)
	}
	runtime.LockOSThread() // never unlocked: the thread dies with the test
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		t.Skipf("no mount namespace here (needed to hide libffi): %v", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		t.Skipf("cannot make mounts private here (needed to hide libffi): %v", err)
	}
	for i, d := range dirs {
		upper, work := filepath.Join(t.TempDir(), "upper"), filepath.Join(t.TempDir(), "work")
		for _, p := range []string{upper, work} {
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		matches, _ := filepath.Glob(filepath.Join(d, prefix+"*"))
		for _, m := range matches {
			if err := unix.Mknod(filepath.Join(upper, filepath.Base(m)), unix.S_IFCHR, 0); err != nil {
				t.Skipf("no whiteout files here (needed to hide libffi): %s: %v", m, err)
			}
		}
		opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", d, upper, work)
		if err := unix.Mount("overlay", d, "overlay", 0, opts); err != nil {
			t.Skipf("no overlayfs here (needed to hide libffi): %s (%d of %d): %v", d, i+1, len(dirs), err)
		}
		t.Cleanup(func() { unix.Unmount(d, unix.MNT_DETACH) })
	}
	if m, _ := filepath.Glob(filepath.Join(dirs[0], prefix+"*")); len(m) > 0 {
		t.Fatalf("still visible after the overlay: %v", m)
	}
}
