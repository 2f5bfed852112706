package queen

import (
	"strings"
	"testing"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/queenapi"
)

func TestValidateSplit(t *testing.T) {
	tests := []struct {
		name string
		req  queenapi.JobRequest
		want string // "" = accepted
	}{
		{"none", queenapi.JobRequest{}, ""},
		{"two", queenapi.JobRequest{Split: []string{"a", "b"}}, ""},
		{"one", queenapi.JobRequest{Split: []string{"a"}}, "at least two"},
		{"twice", queenapi.JobRequest{Split: []string{"a", "b", "a"}}, "hive a named twice"},
		{"empty name", queenapi.JobRequest{Split: []string{"a", ""}}, "empty hive name"},
		{"with --hive", queenapi.JobRequest{Split: []string{"a", "b"}, Hive: "a"}, "--hive"},
		{"with --device", queenapi.JobRequest{Split: []string{"a", "b"}, Device: "gpu0"}, "--device"},
		{"with --worker-type", queenapi.JobRequest{Split: []string{"a", "b"}, WorkerType: "x"}, "--worker-type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateSplit(tt.req)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got %v, want accepted", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || rbee.CodeOf(err) != rbee.CodeBadRequest):
				t.Errorf("got %v, want a bad request naming %q", err, tt.want)
			}
		})
	}
}

func TestSplitKeyIgnoresOrder(t *testing.T) {
	spec := &ModelSpec{SHA256: "abc"}
	if a, b := splitKey(spec, []string{"h2", "h1", "localhost"}), splitKey(spec, []string{"localhost", "h1", "h2"}); a != b {
		t.Errorf("keys differ: %q %q", a, b)
	}
	if a, b := splitKey(spec, []string{"h1", "h2"}), splitKey(spec, []string{"h1", "h3"}); a == b {
		t.Errorf("different hives, same key %q", a)
	}
}
