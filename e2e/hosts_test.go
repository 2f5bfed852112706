package e2e

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/internal/sshtest"
	"github.com/rbee-dev/rbee/internal/testenv"
	"github.com/rbee-dev/rbee/queenapi"
)

// sshConfig writes ~/.ssh/config in the env's home naming each host's key,
// as a person with several keys would: then targets need no --identity.
func (e *env) sshConfig(t *testing.T, hosts ...*sshtest.Host) {
	t.Helper()
	var b strings.Builder
	for _, h := range hosts {
		ip, _, _ := strings.Cut(h.Addr, ":")
		fmt.Fprintf(&b, "Host %s\n  IdentityFile %s\n\n", ip, h.ClientKey)
	}
	writeHomeFile(t, e, filepath.Join(".ssh", "config"), b.String())
}

func writeHomeFile(t *testing.T, e *env, rel, text string) string {
	t.Helper()
	p := filepath.Join(e.home, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// hiveName is the name hive add gives a host of the harness.
func hiveName(h *sshtest.Host) string {
	ip, _, _ := strings.Cut(h.Addr, ":")
	return strings.ReplaceAll(ip, ".", "-")
}

func (e *env) inventory(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.home, "inventory.toml"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

func lines(s string) []string { return strings.Split(strings.TrimSuffix(s, "\n"), "\n") }

// TestHostsAddMany: hive add takes several targets, adds them in parallel
// with one line each, and a bad one fails alone.
func TestHostsAddMany(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 4, sshtest.Options{})
	e.sshConfig(t, hosts...)

	r := e.rbee("hive", "add", target(hosts[0]), target(hosts[1]), target(hosts[2]), "--accept-new-host-key")
	if r.code != 0 {
		t.Fatalf("hive add of 3 hosts: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if got := lines(r.stdout); len(got) != 3 {
		t.Errorf("hive add of 3 hosts: got %d lines, want one per host:\n%s", len(got), r.stdout)
	}
	inv := e.inventory(t)
	for _, h := range hosts[:3] {
		name := hiveName(h)
		if !strings.Contains(r.stdout, name+": added: started rbee-hive") || !strings.Contains(r.stdout, "1 device(s): cpu") {
			t.Errorf("no line for %s:\n%s", name, r.stdout)
		}
		if !strings.Contains(inv, `name = "`+name+`"`) {
			t.Errorf("%s is not in the inventory:\n%s", name, inv)
		}
		if len(hostProcs(h.UID, "rbee-hive")) != 1 {
			t.Errorf("no agent runs on %s", name)
		}
	}

	// One bad target among good ones: it fails alone, the command fails.
	closed, err := testenv.FreePort() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	bad := "nobody@" + closed
	r = e.rbee("hive", "add", target(hosts[3]), bad, target(hosts[0]), "--accept-new-host-key")
	t.Logf("hive add with a bad target:\n%s%s", r.stdout, r.stderr)
	if r.code != rbee.ExitHive {
		t.Errorf("hive add with a bad target: exit %d, want %d\n%s\n%s", r.code, rbee.ExitHive, r.stdout, r.stderr)
	}
	for _, want := range []string{hiveName(hosts[3]) + ": added", hiveName(hosts[0]) + ": added", "127-0-0-1: FAILED: "} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("hive add with a bad target: %q missing in:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "1 of 3 host(s) failed: "+bad) {
		t.Errorf("the summary does not name the bad target:\n%s", r.stderr)
	}
	inv = e.inventory(t)
	if !strings.Contains(inv, hiveName(hosts[3])) || strings.Contains(inv, `name = "127-0-0-1"`) || strings.Count(inv, "[[hive]]") != 4 {
		t.Errorf("inventory after the bad add:\n%s", inv)
	}

	// A target refused before anything is sent fails alone too.
	marker := filepath.Join(e.home, "pwned")
	r = e.rbee("hive", "add", target(hosts[1]), "u@$(touch "+marker+")")
	if r.code != rbee.ExitUsage || !strings.Contains(r.stdout, hiveName(hosts[1])+": added") {
		t.Errorf("hive add with a metacharacter target: exit %d, want %d\n%s\n%s", r.code, rbee.ExitUsage, r.stdout, r.stderr)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a command in a target ran")
	}
	if r := e.rbee("hive", "add", target(hosts[1]), target(hosts[2]), "--name", "x"); r.code != rbee.ExitUsage || !strings.Contains(r.stderr, "--name") {
		t.Errorf("--name with 2 targets: exit %d, want %d\n%s", r.code, rbee.ExitUsage, r.stderr)
	}
	e.stopQueen()
}

// listing is every path under root with its mode and size (directories
// without size): what a dry run must leave as it was.
func listing(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		size := fi.Size()
		if fi.IsDir() {
			size = 0
		}
		out = append(out, fmt.Sprintf("%s %v %d", p, fi.Mode(), size))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestHostsDryRun: hive add --dry-run prints the install plan with its
// bytes and changes nothing: not the host's home, not the inventory, not
// the catalog, not known_hosts.
func TestHostsDryRun(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 1, sshtest.Options{})
	h := hosts[0]
	before := listing(t, h.Home)
	r := e.rbee("hive", "add", target(h), "--name", "h1", "--identity", h.ClientKey, "--accept-new-host-key", "--dry-run")
	if r.code != 0 {
		t.Fatalf("hive add --dry-run: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("hive add --dry-run:\n%s", r.stdout)
	if after := listing(t, h.Home); !slices.Equal(before, after) {
		t.Errorf("the dry run changed the host's home:\nbefore\n%s\nafter\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
	agent, err := os.Stat(bins.Hive)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"hive h1 (" + target(h) + "): linux/",
		"new host key SHA256:",
		"upload",
		"rbee-hive",
		fmt.Sprintf(" %d bytes", agent.Size()),
		filepath.Join(h.Home, ".rbee", "hive"),
		"rbee-worker",
		filepath.Join(h.Home, ".rbee", "engines"),
		"total: ",
		"hive h1: dry run, nothing changed",
	}
	inOrder(t, r.stdout, want...)
	if e.inventory(t) != "" {
		t.Errorf("the dry run wrote the inventory:\n%s", e.inventory(t))
	}
	if b, _ := os.ReadFile(filepath.Join(e.home, ".ssh", "known_hosts")); len(b) > 0 {
		t.Errorf("the dry run recorded a host key:\n%s", b)
	}
	var ls []queenapi.HiveInfo
	r = e.rbee("hive", "ls", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &ls); err != nil {
		t.Fatalf("hive ls --json: %v %q", err, r.stdout)
	}
	for _, x := range ls {
		if x.Kind == "ssh" {
			t.Errorf("the dry run put a hive in the catalog: %+v", x)
		}
	}
	// --json: the plan as data, with its bytes.
	r = e.rbee("hive", "add", target(h), "--name", "h1", "--identity", h.ClientKey, "--accept-new-host-key", "--dry-run", "--json")
	var plan queenapi.InstallPlan
	for _, line := range lines(r.stdout) {
		var ev rbee.Event
		if json.Unmarshal([]byte(line), &ev) == nil && ev.Action == queenapi.EventInstallPlan {
			_ = json.Unmarshal(ev.Data, &plan)
		}
	}
	if r.code != 0 || plan.Hive != "h1" || plan.UploadBytes <= agent.Size() || plan.UploadFiles != len(plan.Files) || plan.Files[0].Name != "rbee-hive" {
		t.Errorf("hive add --dry-run --json: exit %d, plan %+v\n%s", r.code, plan, r.stderr)
	}
	if after := listing(t, h.Home); !slices.Equal(before, after) {
		t.Errorf("the second dry run changed the host's home")
	}

	// Installed: the plan says there is nothing to do.
	if r := e.addHive(h, "h1"); r.code != 0 {
		t.Fatalf("hive add: exit %d\n%s", r.code, r.stderr)
	}
	r = e.rbee("hive", "add", target(h), "--name", "h1", "--identity", h.ClientKey, "--dry-run")
	if r.code != 0 || !strings.Contains(r.stdout, "already runs there: nothing would be uploaded or started") {
		t.Errorf("dry run on an installed host: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	e.stopQueen()
}

// TestHostsUpAcceptNewHostKey: rbee up --accept-new-host-key brings up the
// hosts of a hand-written inventory that known_hosts does not know, and
// records their keys; a changed key is refused all the same.
func TestHostsUpAcceptNewHostKey(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 2, sshtest.Options{})
	var inv strings.Builder
	for i, h := range hosts {
		ip, port, _ := strings.Cut(h.Addr, ":")
		fmt.Fprintf(&inv, "# written by hand\n[[hive]]\nname = \"n%d\"\nhost = %q\nport = %s\nuser = %q\nidentity = %q\n\n", i+1, ip, port, h.User, h.ClientKey)
	}
	writeHomeFile(t, e, "inventory.toml", inv.String())
	knownHosts := filepath.Join(e.home, ".ssh", "known_hosts")

	r := e.rbee("up")
	if r.code != rbee.ExitHive || strings.Count(r.stdout, ": FAILED: ") != 2 || !strings.Contains(r.stdout, "--accept-new-host-key") {
		t.Fatalf("rbee up on unknown hosts: exit %d, want %d with two FAILED lines\n%s\n%s", r.code, rbee.ExitHive, r.stdout, r.stderr)
	}
	r = e.rbee("up", "--accept-new-host-key")
	if r.code != 0 {
		t.Fatalf("rbee up --accept-new-host-key: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	kh, _ := os.ReadFile(knownHosts)
	for i, h := range hosts {
		if !strings.Contains(r.stdout, fmt.Sprintf("n%d: up: rbee-hive", i+1)) {
			t.Errorf("no up line for n%d:\n%s", i+1, r.stdout)
		}
		ip, port, _ := strings.Cut(h.Addr, ":")
		if !strings.Contains(string(kh), "["+ip+"]:"+port+" "+h.HostKeyPub) {
			t.Errorf("the key of n%d was not recorded:\n%s", i+1, kh)
		}
	}
	if got := e.inventory(t); got != inv.String() {
		t.Errorf("rbee up changed the hand-written inventory:\n%s", got)
	}

	// A changed key: refused even with the flag, the other host comes up.
	e.stopQueen()
	hosts[1].RotateHostKey(t)
	r = e.rbee("up", "--accept-new-host-key")
	if r.code != rbee.ExitHive || !strings.Contains(r.stdout, "n1: up: ") || !strings.Contains(r.stdout, "n2: FAILED: ") || strings.Count(r.stdout, "SHA256:") < 2 {
		t.Errorf("rbee up with a changed key: exit %d, want %d\n%s\n%s", r.code, rbee.ExitHive, r.stdout, r.stderr)
	}
	e.stopQueen()
}

// TestHostsMalformedEntry: an inventory entry with a problem is reported
// with its file and line and stops nothing that does not involve it.
func TestHostsMalformedEntry(t *testing.T) {
	t.Parallel()
	e, hosts := sshEnv(t, 2, sshtest.Options{})
	var kh strings.Builder
	for _, h := range hosts {
		b, err := os.ReadFile(h.KnownHosts)
		if err != nil {
			t.Fatal(err)
		}
		kh.Write(b)
	}
	writeHomeFile(t, e, filepath.Join(".ssh", "known_hosts"), kh.String())
	entry := func(name string, h *sshtest.Host) string {
		ip, port, _ := strings.Cut(h.Addr, ":")
		return fmt.Sprintf("[[hive]]\nname = %q\nhost = %q\nport = %s\nuser = %q\nidentity = %q\n\n", name, ip, port, h.User, h.ClientKey)
	}
	text := entry("a", hosts[0]) + "[[hive]]\nname = \"b\"\nhost = \"10.9.9.9\"\nport = \"x\"\n\n" + entry("c", hosts[1])
	path := writeHomeFile(t, e, "inventory.toml", text)
	wantErr := path + `:11: hive "b": port: want an integer, got string "x"`

	r := e.rbee("up")
	t.Logf("rbee up:\n%s%s", r.stdout, r.stderr)
	if r.code == 0 {
		t.Errorf("rbee up with a malformed entry: exit 0, want non-zero")
	}
	for _, want := range []string{"a: up: rbee-hive", "c: up: rbee-hive", "b: FAILED: " + wantErr} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("rbee up: %q missing in:\n%s\n%s", want, r.stdout, r.stderr)
		}
	}
	r = e.rbee("hive", "ls")
	t.Logf("hive ls:\n%s", r.stdout)
	if r.code != 0 || !strings.Contains(r.stdout, "invalid ("+path+":11:") {
		t.Errorf("hive ls: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, name := range []string{"a", "c"} {
		if !strings.Contains(r.stdout, "\n"+name+" ") {
			t.Errorf("hive ls lacks %s:\n%s", name, r.stdout)
		}
	}
	r = e.rbee("infer", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Errorf("infer on localhost: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	r = e.rbee("infer", "--hive", "a", "--model", alphabet, "--temperature", "0", "abc")
	if r.code != 0 || r.stdout != alphabetRest+"\n" {
		t.Errorf("infer on hive a: exit %d %q\n%s", r.code, r.stdout, r.stderr)
	}
	// The malformed entry goes by its name; the rest of the file stays.
	if r := e.rbee("hive", "rm", "b"); r.code != 0 {
		t.Errorf("hive rm b: exit %d\n%s", r.code, r.stderr)
	}
	if got, want := e.inventory(t), entry("a", hosts[0])+entry("c", hosts[1]); got != want {
		t.Errorf("inventory after hive rm b:\n%s\nwant\n%s", got, want)
	}
	if r := e.rbee("up"); r.code != 0 {
		t.Errorf("rbee up after the fix: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	e.stopQueen()
}

// TestHiveLsTruth: hive ls sorts names as people do (h2 before h10), drops
// a hive taken out of the inventory by hand (even one the catalog knew),
// and says so when the inventory does not parse instead of showing the
// catalog's last view.
func TestHiveLsTruth(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	inv := filepath.Join(e.home, "inventory.toml")
	e.vars = append(e.vars, "RBEE_INVENTORY="+inv)
	write := func(names ...string) {
		t.Helper()
		var b strings.Builder
		for _, n := range names {
			fmt.Fprintf(&b, "[[hive]]\nname = %q\nhost = \"127.0.0.1\"\nport = 1\n\n", n)
		}
		if err := os.WriteFile(inv, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("h10", "h2", "h1")
	// h10 enters the catalog: a job names it (its host does not answer).
	if r := e.rbee("infer", "--hive", "h10", "--model", alphabet, "abc"); r.code == 0 {
		t.Fatalf("infer on a hive that does not answer: exit 0\n%s", r.stderr)
	}
	r := e.rbee("hive", "ls")
	if r.code != 0 {
		t.Fatalf("hive ls: exit %d\n%s", r.code, r.stderr)
	}
	inOrder(t, r.stdout, "\nh1 ", "\nh2 ", "\nh10 ", "\nlocalhost ")
	write("h2", "h1") // h10 taken out by hand
	if r := e.rbee("hive", "ls"); r.code != 0 || strings.Contains(r.stdout, "h10") {
		t.Errorf("hive ls after h10 left the inventory: exit %d\n%s", r.code, r.stdout)
	}
	if err := os.WriteFile(inv, []byte("[[hive]\nname = \"h1\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := e.rbee("hive", "ls"); r.code != rbee.ExitUsage || !strings.Contains(r.stderr, inv) {
		t.Errorf("hive ls with a syntax error: exit %d, want %d naming the file:\n%s%s", r.code, rbee.ExitUsage, r.stdout, r.stderr)
	}
	e.stopQueen()
}
