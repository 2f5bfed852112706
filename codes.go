package rbee

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Error codes carried by error events and API errors. They are stable: tools
// may match on them.
const (
	CodeBadRequest        = "bad_request"     // the request itself is wrong
	CodeModelNotFound     = "model_not_found" // no such model file or catalog entry
	CodeNotGGUF           = "not_gguf"        // the model file is not GGUF
	CodeModelCorrupt      = "model_corrupt"   // the model file no longer matches its sha256
	CodeHiveUnknown       = "hive_unknown"    // no hive by that name
	CodeHiveDown          = "hive_unreachable"
	CodeNoRoom            = "no_room"             // no device has room for the model
	CodeDeviceUnknown     = "device_unknown"      // --device names no device of the hive
	CodeWorkerTypeUnknown = "worker_type_unknown" // no worker type by that name
	CodeWorkerFailed      = "worker_failed"       // the worker could not start
	CodeWorkerCrashed     = "worker_crashed"      // the worker died mid-stream
	CodeWorkerNotFound    = "worker_not_found"    // the worker is gone
	CodeCancelled         = "cancelled"
	CodeQueenDown         = "queen_unavailable"
	CodeBusy              = "busy"            // every slot and queue place of the worker is taken
	CodeDownload          = "download_failed" // a download could not be completed (network, server, stall, checksum)
	CodeEngine            = "engine_unusable" // the hive's engine bundle is damaged, incomplete or lacks what the job needs
	CodeInternal          = "internal"
)

// Exit codes of the rbee command. They are stable and documented in the
// README.
const (
	ExitOK          = 0
	ExitError       = 1   // anything not listed below
	ExitUsage       = 2   // bad or contradictory flags
	ExitQueen       = 3   // the queen could not be reached or started, or stopped mid-command
	ExitNotFound    = 4   // model file missing, corrupt or not GGUF, unknown hive or device
	ExitNoRoom      = 5   // no device has room for the model
	ExitWorker      = 6   // the worker failed to start or died mid-stream
	ExitHive        = 7   // a hive could not be reached (SSH, host key, agent)
	ExitBusy        = 8   // the worker is busy: its slots and queue are full
	ExitDownload    = 9   // a download failed: network, server error, stall, checksum
	ExitEngine      = 10  // a hive's engine bundle is damaged or lacks what the job needs
	ExitInterrupted = 130 // Ctrl-C
)

// ExitMeanings is what each exit code means, word for word as the README's
// table says it (a test keeps them equal).
var ExitMeanings = map[int]string{
	ExitOK:          "ok",
	ExitError:       "an error not listed below",
	ExitUsage:       "bad or contradictory flags or arguments",
	ExitQueen:       "the queen could not be reached or started, or stopped during the command",
	ExitNotFound:    "model file missing, corrupt or not GGUF; unknown hive, device or worker type",
	ExitNoRoom:      "no device has room for the model",
	ExitWorker:      "the worker failed to start or died mid-stream",
	ExitHive:        "a hive could not be reached (SSH, host key, authentication, agent)",
	ExitBusy:        "the worker is busy (its slots and queue are full): retry later",
	ExitDownload:    "a download failed: the server could not be reached, answered an error, stalled, or sent other bytes than announced",
	ExitEngine:      "a hive's engine bundle is damaged (its files no longer match its manifest), missing, or lacks what the job needs (rpc-server for a split): the hint says the command that installs one",
	ExitInterrupted: "interrupted (Ctrl-C)",
}

// ExitCodeFor maps an error code to the command's exit code.
func ExitCodeFor(code string) int {
	switch code {
	case CodeBadRequest:
		return ExitUsage
	case CodeModelNotFound, CodeNotGGUF, CodeModelCorrupt, CodeHiveUnknown, CodeDeviceUnknown, CodeWorkerTypeUnknown:
		return ExitNotFound
	case CodeNoRoom:
		return ExitNoRoom
	case CodeWorkerFailed, CodeWorkerCrashed, CodeWorkerNotFound:
		return ExitWorker
	case CodeQueenDown:
		return ExitQueen
	case CodeHiveDown:
		return ExitHive
	case CodeBusy:
		return ExitBusy
	case CodeDownload:
		return ExitDownload
	case CodeEngine:
		return ExitEngine
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

// ErrorFromBody reads rbee's wire shape {"error":{"code","message","hint"}}
// from an error answer's body; ok is false when the body is not that.
func ErrorFromBody(raw []byte) (e Error, ok bool) {
	var wrapper struct {
		Error Error `json:"error"`
	}
	if json.Unmarshal(raw, &wrapper) != nil || wrapper.Error.Message == "" {
		return Error{}, false
	}
	return wrapper.Error, true
}
