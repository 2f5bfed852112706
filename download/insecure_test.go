package download

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// offMachine is a client that refuses, and counts, every dial to a host
// other than this machine's: a test that uses it sends nothing off the
// machine, and proves that nothing was tried.
type offMachine struct {
	dials atomic.Int32
}

func (o *offMachine) client(t *testing.T) *http.Client {
	var d net.Dialer
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if host, _, err := net.SplitHostPort(addr); err != nil || !isLoopback(host) {
			o.dials.Add(1)
			return nil, fmt.Errorf("test: dial %s refused: off this machine", addr)
		}
		return d.DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// calls are the ways a person's pull reaches the network: each must obey
// the rule.
var calls = []struct {
	name string
	call func(ctx context.Context, h *Hub, s *Store, r Ref) error
}{
	{"Resolve", func(ctx context.Context, h *Hub, _ *Store, r Ref) error {
		_, err := h.Resolve(ctx, Ref{Raw: "hf:org/repo", Kind: KindHF, Repo: "org/repo", Revision: "main"})
		return err
	}},
	{"Head", func(ctx context.Context, h *Hub, _ *Store, r Ref) error { _, err := h.Head(ctx, r); return err }},
	{"Estimate", func(ctx context.Context, h *Hub, _ *Store, r Ref) error {
		_, _, _, err := h.Estimate(ctx, r)
		return err
	}},
	{"Fetch", func(ctx context.Context, h *Hub, s *Store, r Ref) error {
		_, _, err := s.Fetch(ctx, h, r, fast)
		return err
	}},
}

// A plain-http endpoint on another machine (HF_ENDPOINT=http://HOST) would
// carry the token and the model unencrypted: refused before any dial,
// saying what to do.
func TestPlainHTTPEndpointRefused(t *testing.T) {
	t.Parallel()
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var off offMachine
			h := &Hub{Endpoint: "http://192.0.2.1:8080", Token: "secret", Client: off.client(t)}
			err := c.call(t.Context(), h, &Store{Dir: t.TempDir()}, mustRef(t, "hf:org/repo/x.gguf"))
			if !errors.Is(err, ErrInsecure) {
				t.Fatalf("got %v, want ErrInsecure", err)
			}
			for _, want := range []string{"http://192.0.2.1:8080", "HF_TOKEN", "https://", "127.0.0.1"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("got %q, want it to name %q", err, want)
				}
			}
			if n := off.dials.Load(); n != 0 {
				t.Errorf("got %d dials off the machine, want 0", n)
			}
		})
	}
	// A URL ref built without ParseRef (which refuses it) is refused too.
	var off offMachine
	r := Ref{Raw: "http://192.0.2.1/x.gguf", Kind: KindURL, URL: "http://192.0.2.1/x.gguf"}
	_, _, err := (&Store{Dir: t.TempDir()}).Fetch(t.Context(), &Hub{Client: off.client(t)}, r, fast)
	if !errors.Is(err, ErrInsecure) || off.dials.Load() != 0 {
		t.Errorf("Fetch(%s) = %v after %d dials off the machine; want ErrInsecure and none", r.URL, err, off.dials.Load())
	}
}

// A loopback server (or the hub itself) that redirects to plain http on
// another host is refused at the redirect, before any dial there.
func TestRedirectToPlainHTTPRefused(t *testing.T) {
	t.Parallel()
	var tokens atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			tokens.Add(1)
		}
		http.Redirect(w, r, "http://192.0.2.1/cdn/x.gguf", http.StatusFound)
	}))
	t.Cleanup(srv.Close)
	refs := map[string]Ref{
		"url": mustRef(t, srv.URL+"/x.gguf"),
		"hf":  mustRef(t, "hf:org/repo/x.gguf"),
	}
	for kind, r := range refs {
		for _, c := range calls {
			if c.name == "Resolve" {
				continue // the listing is not redirected here
			}
			t.Run(kind+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				var off offMachine
				h := &Hub{Endpoint: srv.URL, Token: "secret", Client: off.client(t)}
				err := c.call(t.Context(), h, &Store{Dir: t.TempDir()}, r)
				if !errors.Is(err, ErrInsecure) {
					t.Fatalf("got %v, want ErrInsecure", err)
				}
				for _, want := range []string{"redirect from " + srv.URL, "http://192.0.2.1/cdn/x.gguf", "https://"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("got %q, want it to contain %q", err, want)
					}
				}
				if n := off.dials.Load(); n != 0 {
					t.Errorf("got %d dials off the machine, want 0", n)
				}
			})
		}
	}
	t.Cleanup(func() {
		if n := tokens.Load(); n == 0 {
			t.Errorf("the loopback hub never got the token: the test did not test the hf path")
		}
	})
}
