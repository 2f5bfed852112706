package remote

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config")
	cfgText := `Host gpu-box
  HostName 10.0.0.5
  User alice
  Port 2222
  IdentityFile /keys/gpu
  IdentityFile /keys/second

Host bastioned
  HostName %h.internal
  ProxyJump jump1,bob@jump2:2200

Host *.lan
  User lanuser

Host proxied
  ProxyCommand nc %h %p

Host known
  HostName 10.0.0.9
  UserKnownHostsFile /etc/rbee/known_%h "/second file"
`
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{SSHConfig: cfgPath}
	tests := []struct {
		name    string
		target  Target
		want    Resolved
		wantErr string
	}{
		{"alias", Target{Host: "gpu-box"}, Resolved{Host: "gpu-box", Addr: "10.0.0.5:2222", User: "alice", IdentityFiles: []string{"/keys/gpu", "/keys/second"}}, ""},
		{"target wins", Target{Host: "gpu-box", User: "root", Port: 22, IdentityFiles: []string{"/keys/mine"}},
			Resolved{Host: "gpu-box", Addr: "10.0.0.5:22", User: "root", IdentityFiles: []string{"/keys/mine", "/keys/gpu", "/keys/second"}}, ""},
		{"proxy jump and %h", Target{Host: "bastioned", User: "u", IdentityFiles: []string{"/k"}},
			Resolved{Host: "bastioned", Addr: "bastioned.internal:22", User: "u", IdentityFiles: []string{"/k"}, ProxyJump: []string{"jump1", "bob@jump2:2200"}}, ""},
		{"wildcard", Target{Host: "box.lan", IdentityFiles: []string{"/k"}}, Resolved{Host: "box.lan", Addr: "box.lan:22", User: "lanuser", IdentityFiles: []string{"/k"}}, ""},
		{"ipv6", Target{Host: "::1", User: "u", Port: 2200, IdentityFiles: []string{"/k"}}, Resolved{Host: "::1", Addr: "[::1]:2200", User: "u", IdentityFiles: []string{"/k"}}, ""},
		{"proxy command refused", Target{Host: "proxied"}, Resolved{}, "ProxyCommand"},
		// The hosts ssh knows are rbee's too: a host ssh knows was "unknown".
		{"UserKnownHostsFile", Target{Host: "known", User: "u", IdentityFiles: []string{"/k"}},
			Resolved{Host: "known", Addr: "10.0.0.9:22", User: "u", IdentityFiles: []string{"/k"}, KnownHosts: "/etc/rbee/known_10.0.0.9"}, ""},
		{"command substitution", Target{Host: "$(touch /tmp/x)"}, Resolved{}, "no host name has"},
		{"backticks", Target{Host: "`id`"}, Resolved{}, "no host name has"},
		{"semicolon", Target{Host: "a;b"}, Resolved{}, "no host name has"},
		{"option", Target{Host: "-oProxyCommand=x"}, Resolved{}, "no host name has"},
		{"empty", Target{}, Resolved{}, "no host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Resolve(tt.target, cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// Default keys (~/.ssh/id_*) are offered only when no key is named, and
// "none" reads no config; HOME is changed, so this test is not parallel.
func TestResolveDefaults(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("USER", "me")
	if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"id_rsa", "id_ed25519"} {
		if err := os.WriteFile(filepath.Join(home, ".ssh", name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(home, ".ssh", "config"), []byte("Host box\n  User fromconfig\n  IdentityFile ~/.ssh/special\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		target    Target
		sshConfig string
		wantUser  string
		wantIDs   []string
	}{
		{"defaults", Target{Host: "other"}, "", "me", []string{home + "/.ssh/id_ed25519", home + "/.ssh/id_rsa"}},
		{"config key, ~ expanded", Target{Host: "box"}, "", "fromconfig", []string{home + "/.ssh/special"}},
		{"no config", Target{Host: "box"}, "none", "me", []string{home + "/.ssh/id_ed25519", home + "/.ssh/id_rsa"}},
		{"missing config", Target{Host: "box"}, filepath.Join(home, "nope"), "me", []string{home + "/.ssh/id_ed25519", home + "/.ssh/id_rsa"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Resolve(tt.target, Config{SSHConfig: tt.sshConfig})
			if err != nil {
				t.Fatal(err)
			}
			if got.User != tt.wantUser || !reflect.DeepEqual(got.IdentityFiles, tt.wantIDs) {
				t.Errorf("got user %q keys %v, want %q %v", got.User, got.IdentityFiles, tt.wantUser, tt.wantIDs)
			}
		})
	}
	if got, want := (Config{}).withDefaults().KnownHosts, home+"/.ssh/known_hosts"; got != want {
		t.Errorf("default known_hosts = %s, want %s", got, want)
	}
}

func TestParseHop(t *testing.T) {
	tests := []struct {
		in      string
		want    Target
		wantErr bool
	}{
		{"jump", Target{Host: "jump"}, false},
		{"bob@jump", Target{Host: "jump", User: "bob"}, false},
		{"bob@jump:2200", Target{Host: "jump", User: "bob", Port: 2200}, false},
		{"ssh://bob@10.0.0.1:22", Target{Host: "10.0.0.1", User: "bob", Port: 22}, false},
		{"[::1]:2222", Target{Host: "::1", Port: 2222}, false},
		{"jump:notaport", Target{}, true},
		{"bob@", Target{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseHop(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
