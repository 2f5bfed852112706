package rbee

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestREADMEExitCodes: the README's exit-code table is ExitMeanings, row
// for row, and every exit code ExitCodeFor gives is in it.
func TestREADMEExitCodes(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(b), "Exit codes (stable")
	if !ok {
		t.Fatal("no exit-code table in README.md")
	}
	row := regexp.MustCompile(`^\| (\d+) \| (.+) \|$`)
	got := map[int]string{}
	started := false
	for _, line := range strings.Split(table, "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			started = true
			n, _ := strconv.Atoi(m[1])
			if _, dup := got[n]; dup {
				t.Errorf("README: exit code %d twice", n)
			}
			got[n] = m[2]
		} else if started && !strings.HasPrefix(line, "|") {
			break
		}
	}
	for n, want := range ExitMeanings {
		if got[n] != want {
			t.Errorf("README exit code %d: got %q, want %q (codes.go)", n, got[n], want)
		}
	}
	for n := range got {
		if _, ok := ExitMeanings[n]; !ok {
			t.Errorf("README documents exit code %d, which codes.go does not have", n)
		}
	}
	for _, code := range []string{CodeBadRequest, CodeModelNotFound, CodeNotGGUF, CodeHiveUnknown, CodeHiveDown, CodeNoRoom,
		CodeDeviceUnknown, CodeWorkerFailed, CodeWorkerCrashed, CodeWorkerNotFound, CodeCancelled, CodeQueenDown, CodeBusy, CodeDownload, CodeModelCorrupt, CodeEngine, CodeInternal} {
		if _, ok := ExitMeanings[ExitCodeFor(code)]; !ok {
			t.Errorf("ExitCodeFor(%s) = %d, which is not documented", code, ExitCodeFor(code))
		}
	}
}

// TestExitCodeFor: each error code exits with the code whose meaning
// matches it.
func TestExitCodeFor(t *testing.T) {
	for code, want := range map[string]int{
		CodeBusy:          ExitBusy,     // a worker's 503: busy, not broken
		CodeDownload:      ExitDownload, // the network, not a missing model
		CodeQueenDown:     ExitQueen,    // the queen shutting down
		CodeModelNotFound: ExitNotFound,
		CodeWorkerFailed:  ExitWorker,
		CodeHiveDown:      ExitHive,
		CodeBadRequest:    ExitUsage,
		CodeEngine:        ExitEngine, // an install problem, not a worker that failed (no worker ran)
		"unknown-code":    ExitError,
	} {
		if got := ExitCodeFor(code); got != want {
			t.Errorf("ExitCodeFor(%s) = %d, want %d", code, got, want)
		}
	}
}
