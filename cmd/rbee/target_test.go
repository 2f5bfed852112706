package main

import (
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/queen"
	"github.com/rbee-dev/rbee/queenapi"
)

func TestParseTarget(t *testing.T) {
	for _, tt := range []struct {
		in         string
		user, host string
		port       int
		err        string
	}{
		{in: "gpu-box", host: "gpu-box"},
		{in: "me@gpu-box", user: "me", host: "gpu-box"},
		{in: "me@10.0.0.7:2222", user: "me", host: "10.0.0.7", port: 2222},
		{in: "me@[::1]:2470", user: "me", host: "::1", port: 2470},
		{in: "[fe80::1]", host: "fe80::1"},
		{in: "me@::1", user: "me", host: "::1"},
		{in: "h:0", err: "port 0 is out of range"},
		{in: "h:65536", err: "port 65536 is out of range"},
		{in: "h:+22", err: "is not a number"},
		{in: "h:x", err: "is not a number"},
		{in: "@h", err: "nothing before '@'"},
		{in: "me@", err: "no host"},
		{in: "", err: "no host"},
		{in: ":22", err: "no host"},
		{in: "[::1", err: "no ']'"},
		{in: "[::1]2222", err: "after ']'"},
		{in: "[10.0.0.1]:22", err: "IPv6 only"},
		{in: "[]:22", err: "IPv6 only"},
		{in: "a:b:c", err: "neither HOST:PORT nor an IPv6 address"},
	} {
		t.Run(tt.in, func(t *testing.T) {
			user, host, port, err := parseTarget(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parseTarget(%q): got %v, want an error with %q", tt.in, err, tt.err)
				}
				return
			}
			if err != nil || user != tt.user || host != tt.host || port != tt.port {
				t.Fatalf("parseTarget(%q) = %q %q %d %v, want %q %q %d", tt.in, user, host, port, err, tt.user, tt.host, tt.port)
			}
		})
	}
}

func TestDefaultName(t *testing.T) {
	for in, want := range map[string]string{"gpu-box.lan": "gpu-box", "10.0.0.7": "10-0-0-7", "::1": "1", "fe80::a:1": "fe80-a-1", "My_Box": "my-box"} {
		if got := defaultName(in); got != want {
			t.Errorf("defaultName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReservedHiveName(t *testing.T) {
	err := queen.ValidateAdd(queenapi.AddHiveRequest{Name: "localhost", Host: "gpu-box"})
	if err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("ValidateAdd of an SSH host named localhost: got %v, want it refused as reserved", err)
	}
}

// FuzzTarget: whatever a person types as a hive add target, parsing never
// panics, and what it accepts (and the queen's check lets through) is a
// host an SSH dial reads back the same way, with a port in range.
func FuzzTarget(f *testing.F) {
	for _, s := range []string{"gpu-box", "me@10.0.0.7:2222", "me@[::1]:2470", "h:0", "@h", "me@", "[::1", "a:b:c", "u@$(touch x)", "me@h\n", "ü@h", "me@[fe80::1%eth0]:22"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		user, host, port, err := parseTarget(s)
		if err != nil {
			return
		}
		if port < 0 || port > 65535 || host == "" {
			t.Fatalf("parseTarget(%q) accepted host %q port %d", s, host, port)
		}
		req := queenapi.AddHiveRequest{Name: defaultName(host), Host: host, User: user, Port: port}
		if queen.ValidateAdd(req) != nil {
			return
		}
		if strings.ContainsAny(host+user, " \t\r\n\x00@[]/$;`'\"\\") {
			t.Fatalf("target %q passed with user %q host %q", s, user, host)
		}
		if port > 0 {
			// The dial address reads back as the same host and port.
			h, p, err := net.SplitHostPort(net.JoinHostPort(host, strconv.Itoa(port)))
			if err != nil || h != host || p != strconv.Itoa(port) {
				t.Fatalf("target %q: dial address does not read back: %q %q %v", s, h, p, err)
			}
		}
	})
}
