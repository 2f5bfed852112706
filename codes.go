package rbee

import (
	"errors"
	"fmt"
)

// Error codes carried by error events and API errors. They are stable: tools
// may match on them.
const (
	CodeBadRequest     = "bad_request"     // the request itself is wrong
	CodeModelNotFound  = "model_not_found" // no such model file or catalog entry
	CodeNotGGUF        = "not_gguf"        // the model file is not GGUF
	CodeHiveUnknown    = "hive_unknown"    // no hive by that name
	CodeHiveDown       = "hive_unreachable"
	CodeNoRoom         = "no_room"          // no device has room for the model
	CodeDeviceUnknown  = "device_unknown"   // --device names no device of the hive
	CodeWorkerFailed   = "worker_failed"    // the worker could not start
	CodeWorkerCrashed  = "worker_crashed"   // the worker died mid-stream
	CodeWorkerNotFound = "worker_not_found" // the worker is gone
	CodeCancelled      = "cancelled"
	CodeQueenDown      = "queen_unavailable"
	CodeInternal       = "internal"
)

// Exit codes of the rbee command. They are stable and documented in the
// README.
const (
	ExitOK          = 0
	ExitError       = 1   // anything not listed below
	ExitUsage       = 2   // bad or contradictory flags
	ExitQueen       = 3   // the queen could not be reached or started
	ExitNotFound    = 4   // model file missing or not GGUF, unknown hive or device
	ExitNoRoom      = 5   // no device has room for the model
	ExitWorker      = 6   // the worker failed to start or died mid-stream
	ExitHive        = 7   // a hive could not be reached (SSH, host key, agent)
	ExitInterrupted = 130 // Ctrl-C
)

// ExitCodeFor maps an error code to the command's exit code.
func ExitCodeFor(code string) int {
	switch code {
	case CodeBadRequest:
		return ExitUsage
	case CodeModelNotFound, CodeNotGGUF, CodeHiveUnknown, CodeDeviceUnknown:
		return ExitNotFound
	case CodeNoRoom:
		return ExitNoRoom
	case CodeWorkerFailed, CodeWorkerCrashed, CodeWorkerNotFound:
		return ExitWorker
	case CodeQueenDown:
		return ExitQueen
	case CodeHiveDown:
		return ExitHive
	case CodeCancelled:
		return ExitInterrupted
	}
	return ExitError
}

// Error is an error with a stable code, for the wire and for exit codes.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
}

func (e *Error) Error() string { return e.Message }

// Errorf returns an *Error with code.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code of the first *Error in err's chain, or
// CodeInternal.
func CodeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}
