package agent

import (
	"strings"
	"testing"

	"github.com/rbee-dev/rbee/hiveapi"
)

func TestCheckRPC(t *testing.T) {
	tests := []struct {
		name string
		req  hiveapi.InferRequest
		want string // "" = accepted
	}{
		{"none", hiveapi.InferRequest{}, ""},
		{"loopback", hiveapi.InferRequest{RPC: []string{"127.0.0.1:5000", "127.0.0.1:40123"}}, ""},
		{"another address", hiveapi.InferRequest{RPC: []string{"10.0.0.5:5000"}}, `"10.0.0.5:5000"`},
		{"all addresses", hiveapi.InferRequest{RPC: []string{"0.0.0.0:5000"}}, "0.0.0.0"},
		{"a name", hiveapi.InferRequest{RPC: []string{"localhost:5000"}}, "localhost"},
		{"port 0", hiveapi.InferRequest{RPC: []string{"127.0.0.1:0"}}, "127.0.0.1:0"},
		{"injection", hiveapi.InferRequest{RPC: []string{"127.0.0.1:5000,10.0.0.1:5000"}}, "10.0.0.1"},
		{"external", hiveapi.InferRequest{WorkerType: "llama-server", RPC: []string{"127.0.0.1:5000"}}, "llama-server"},
		{"shares", hiveapi.InferRequest{RPC: []string{"127.0.0.1:5000"}, TensorSplit: []float64{8, 14}}, ""},
		{"shares miscounted", hiveapi.InferRequest{RPC: []string{"127.0.0.1:5000"}, TensorSplit: []float64{1}}, "1 tensor-split shares for 2 devices"},
		{"negative share", hiveapi.InferRequest{RPC: []string{"127.0.0.1:5000"}, TensorSplit: []float64{1, -1}}, "-1"},
		{"warm", hiveapi.InferRequest{Worker: "w-1", RPC: []string{"127.0.0.1:5000"}}, "warm"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkRPC(tt.req)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got %v, want accepted", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %v, want an error naming %s", err, tt.want)
			}
		})
	}
}
