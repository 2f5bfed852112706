package remote

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/internal/sshtest"
	"golang.org/x/crypto/ssh"
)

// Unknown key refused, then accepted and recorded, then used; a changed
// key refused always. One host, in order.
func TestHostKeyPolicy(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	ctx := testCtx(t)
	ip, port, _ := net.SplitHostPort(h.Addr)
	oldFP := ssh.FingerprintSHA256(hostPub(t, h.HostKeyPub))
	kh := filepath.Join(t.TempDir(), "sub", "known_hosts") // parent made 0700
	cfg := Config{KnownHosts: kh, SSHConfig: "none"}

	_, err := Dial(ctx, target(h), cfg)
	if !errors.Is(err, ErrUnknownHostKey) {
		t.Fatalf("unknown host: got %v, want ErrUnknownHostKey", err)
	}
	t.Logf("unknown host: %v", err)
	for _, want := range []string{oldFP, "--accept-new-host-key", "[" + ip + "]:" + port, "dial " + ip} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("unknown-host error %q lacks %q", err, want)
		}
	}
	if _, err := os.Stat(kh); !os.IsNotExist(err) {
		t.Errorf("known_hosts written on refusal (stat: %v)", err)
	}

	accept := cfg
	accept.AcceptNewHostKey = true
	c, err := Dial(ctx, target(h), accept)
	if err != nil {
		t.Fatalf("accept-new: %v", err)
	}
	c.Close()
	b, err := os.ReadFile(kh)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), fmt.Sprintf("[%s]:%s %s\n", ip, port, h.HostKeyPub); got != want {
		t.Errorf("known_hosts = %q, want %q", got, want)
	}
	for path, want := range map[string]os.FileMode{kh: 0o600, filepath.Dir(kh): 0o700} {
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %v", path, fi.Mode().Perm(), err, want)
		}
	}

	// Known now: no flag needed, nothing appended.
	c, err = Dial(ctx, target(h), cfg)
	if err != nil {
		t.Fatalf("second dial: %v", err)
	}
	c.Close()
	if b2, _ := os.ReadFile(kh); string(b2) != string(b) {
		t.Errorf("known_hosts changed on a known host: %q", b2)
	}

	h.RotateHostKey(t)
	newFP := ssh.FingerprintSHA256(hostPub(t, h.HostKeyPub))
	for _, c := range []Config{cfg, accept} {
		t.Run(fmt.Sprintf("changed key, accept-new %v", c.AcceptNewHostKey), func(t *testing.T) {
			_, err := Dial(ctx, target(h), c)
			if !errors.Is(err, ErrHostKeyChanged) {
				t.Fatalf("got %v, want ErrHostKeyChanged", err)
			}
			t.Logf("changed key: %v", err)
			var hkErr *HostKeyError
			if !errors.As(err, &hkErr) || len(hkErr.Known) != 1 || hkErr.Known[0].Line != 1 {
				t.Errorf("got %#v, want a HostKeyError with the recorded key at line 1", hkErr)
			}
			for _, want := range []string{oldFP, newFP, kh + ":1", "[" + ip + "]:" + port, "ssh-keygen -R"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("changed-key error %q lacks %q", err, want)
				}
			}
			if b2, _ := os.ReadFile(kh); string(b2) != string(b) {
				t.Errorf("known_hosts changed on refusal: %q", b2)
			}
		})
	}
}

func TestWrongClientKey(t *testing.T) {
	t.Parallel()
	h := sshtest.Start(t, 1, sshtest.Options{})[0]
	wrong := newKey(t, "")
	locked := newKey(t, "secret")
	missing := filepath.Join(t.TempDir(), "absent")
	tg := target(h)
	tg.IdentityFiles = []string{wrong, locked, missing}
	_, err := Dial(testCtx(t), tg, config(t, h))
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("got %v, want ErrAuth", err)
	}
	t.Logf("wrong key: %v", err)
	var ae *AuthError
	if !errors.As(err, &ae) || len(ae.Tried) != 1 || len(ae.Skipped) != 2 {
		t.Errorf("got %#v, want one key tried and two skipped", ae)
	}
	for _, want := range []string{wrong, "passphrase-protected", missing, "no such file", "authorized_keys", h.User, "0700", "--identity"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("auth error %q lacks %q", err, want)
		}
	}

	tg.IdentityFiles = []string{missing}
	_, err = Dial(testCtx(t), tg, config(t, h))
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "no key to offer") {
		t.Errorf("no usable key: got %v, want ErrAuth saying there was no key", err)
	}
}
