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
	CodeModelCorrupt   = "model_corrupt"   // the model file no longer matches its sha256
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
	case CodeModelNotFound, CodeNotGGUF, CodeModelCorrupt, CodeHiveUnknown, CodeDeviceUnknown:
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

// Error is rbee's one error shape: a stable code for the wire and for exit
// codes, a message for people, a hint saying what to do, and the cause it
// wraps. On the wire it is {"code","message","hint"}.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
	Err     error  `json:"-"` // the cause, for errors.Is/As; not sent
}

func (e *Error) Error() string {
	if e.Message == "" && e.Err != nil {
		return e.Err.Error()
	}
	return e.Message
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with code. A %w verb in format makes the
// wrapped error its cause.
func Errorf(code, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	return &Error{Code: code, Message: err.Error(), Err: errors.Unwrap(err)}
}

// WithHint returns e with hint set.
func (e *Error) WithHint(hint string) *Error {
	e.Hint = hint
	return e
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

// HintOf returns the first hint in err's chain, or "".
func HintOf(err error) string {
	for err != nil {
		var e *Error
		if !errors.As(err, &e) {
			return ""
		}
		if e.Hint != "" {
			return e.Hint
		}
		err = e.Err
	}
	return ""
}
