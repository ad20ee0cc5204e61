package control

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/volback/volback/control/inventory"
)

// ZStack error codes the API answers with.
const (
	CodeInternal       = "SYS.1000"
	CodeTimeout        = "SYS.1001"
	CodeNotFound       = "SYS.1003"
	CodeOperationFail  = "SYS.1006"
	CodeInvalidArg     = "SYS.1007"
	CodeAuthFailed     = "ID.1000"
	CodeInvalidSession = "ID.1001"
)

// ErrorCode is ZStack's error body: {"error": {...}}, nulls omitted. API
// errors are answered 503 with it, as ZStack's REST server does.
type ErrorCode struct {
	Code        string     `json:"code"`
	Description string     `json:"description,omitempty"`
	Details     string     `json:"details,omitempty"`
	Cause       *ErrorCode `json:"cause,omitempty"`
}

func (e *ErrorCode) Error() string {
	if e.Details != "" {
		return e.Code + ": " + e.Description + ": " + e.Details
	}
	return e.Code + ": " + e.Description
}

// badRequest is a request that cannot be parsed at all: 400, plain text.
type badRequest string

func (e badRequest) Error() string { return string(e) }

func badRequestf(format string, args ...any) error { return badRequest(fmt.Sprintf(format, args...)) }

// errInvalid is SYS.1007 for a bad argument.
func errInvalid(format string, args ...any) *ErrorCode {
	return &ErrorCode{Code: CodeInvalidArg, Description: "invalid argument", Details: fmt.Sprintf(format, args...)}
}

// errTag is SYS.1007 for a bad system tag; err names the tag.
func errTag(err error) *ErrorCode {
	return &ErrorCode{Code: CodeInvalidArg, Description: "invalid system tag", Details: err.Error()}
}

// errNotFound is SYS.1003 naming what is missing.
func errNotFound(format string, args ...any) *ErrorCode {
	return &ErrorCode{Code: CodeNotFound, Description: "resource not found", Details: fmt.Sprintf(format, args...)}
}

// errFailed is SYS.1006: what could not be done, and why.
func errFailed(what string, err error) *ErrorCode {
	return &ErrorCode{Code: CodeOperationFail, Description: what, Details: err.Error()}
}

// errRefused is SYS.1006 for an operation refused in the current state.
func errRefused(what, format string, args ...any) *ErrorCode {
	return &ErrorCode{Code: CodeOperationFail, Description: what, Details: fmt.Sprintf(format, args...)}
}

// errorCodeOf turns any error into ZStack's body: an ErrorCode stays as it
// is, anything else is SYS.1000 with its text.
func errorCodeOf(err error) *ErrorCode {
	var e *ErrorCode
	if errors.As(err, &e) {
		return e
	}
	return &ErrorCode{Code: CodeInternal, Description: "internal error", Details: err.Error()}
}

// answerError answers a handler's error: 400 plain text for a request that
// cannot be parsed, else 503 with ZStack's error body.
func (a *API) answerError(w http.ResponseWriter, err error) {
	var br badRequest
	if errors.As(err, &br) {
		plainText(w, http.StatusBadRequest, string(br))
		return
	}
	e := errorCodeOf(err)
	a.Metrics.apiError(e.Code)
	writeZJSON(w, http.StatusServiceUnavailable, map[string]*ErrorCode{"error": e})
}

// notFoundOr maps inventory.ErrNotFound to SYS.1003 naming the resource,
// and leaves other errors (SYS.1000) as they are.
func notFoundOr(err error, format string, args ...any) error {
	if errors.Is(err, inventory.ErrNotFound) {
		return errNotFound(format, args...)
	}
	return err
}

func isNotFound(err error) bool { return errors.Is(err, inventory.ErrNotFound) }
