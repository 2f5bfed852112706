package doctor

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/inventory"
	"github.com/rbee-dev/rbee/remote"
)

func TestTargetFor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inventory.toml")
	err := os.WriteFile(path, []byte(`[[hive]]
name = "gpu-box"
host = "10.0.0.5"
user = "al"
port = 2222
identity = "/keys/id"
known_hosts = "/kh"
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := inventory.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		spec    string
		want    remote.Target
		wantKH  string
		wantErr string
		noHive  bool
	}{
		{spec: "gpu-box", want: remote.Target{Host: "10.0.0.5", User: "al", Port: 2222, IdentityFiles: []string{"/keys/id"}}, wantKH: "/kh"},
		{spec: "bob@host.lan", want: remote.Target{Host: "host.lan", User: "bob"}},
		{spec: "bob@host.lan:2200", want: remote.Target{Host: "host.lan", User: "bob", Port: 2200}},
		{spec: "10.1.2.3:22", want: remote.Target{Host: "10.1.2.3", Port: 22}},
		{spec: "al@[::1]:2222", want: remote.Target{Host: "::1", User: "al", Port: 2222}},
		{spec: "host.lan:x", wantErr: `port "x"`},
		{spec: "al@", wantErr: "no host"},
		{spec: "gpu-bx", want: remote.Target{Host: "gpu-bx"}, noHive: true},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			got, kh, err := TargetFor(tt.spec, inv)
			switch {
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
				}
				return
			case tt.noHive:
				if !errors.Is(err, ErrNoHive) {
					t.Errorf("err: got %v, want ErrNoHive", err)
				}
			case err != nil:
				t.Fatal(err)
			}
			if got.Host != tt.want.Host || got.User != tt.want.User || got.Port != tt.want.Port || !slices.Equal(got.IdentityFiles, tt.want.IdentityFiles) || kh != tt.wantKH {
				t.Errorf("got %+v %q, want %+v %q", got, kh, tt.want, tt.wantKH)
			}
		})
	}
}
