package main

import (
	"strings"
	"testing"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/queenapi"
)

// A newer rbee leaves an older queen of its own alone while it serves
// keeper jobs or front-door requests (a stream is one until its last
// byte): it uses it, saying why, instead of restarting it under the
// client. Nothing here reaches a queen: a restart would.
func TestReplaceOldQueenBusy(t *testing.T) {
	t.Parallel()
	g := &globals{Queen: "127.0.0.1:7833", Home: t.TempDir()}
	for _, tt := range []struct {
		name string
		h    queenapi.Health
		want string
	}{
		{"a stream", queenapi.Health{Version: "0.0.1-old", Protocol: rbee.ProtocolVersion, Requests: 1}, "serving 1 front-door request(s)"},
		{"a job and streams", queenapi.Health{Version: "0.0.1-old", Protocol: rbee.ProtocolVersion, Jobs: 1, Requests: 2}, "serving 1 job(s) and 2 front-door request(s)"},
	} {
		var said []string
		replaced, err := replaceOldQueen(t.Context(), g, nil, tt.h, func(_, msg string) { said = append(said, msg) })
		if replaced || err != nil || len(said) != 1 || !strings.Contains(said[0], tt.want) || strings.Contains(said[0], "restarting") {
			t.Errorf("%s: replaced %v, err %v, said %q; want it used, saying %q", tt.name, replaced, err, said, tt.want)
		}
	}
}
