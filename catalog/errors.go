package catalog

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrorCode is the category of an error. Each API maps a code to one HTTP status
// in one place; nothing else decides statuses.
type ErrorCode string

const (
	CodeInvalid      ErrorCode = "invalid"      // the caller's input is wrong (400)
	CodeUnauthorized ErrorCode = "unauthorized" // no or bad credentials (401)
	CodeForbidden    ErrorCode = "forbidden"    // authenticated, but not allowed now, e.g. suspended (403)
	CodeNotFound     ErrorCode = "not_found"    // no such thing (404)
	CodeConflict     ErrorCode = "conflict"     // clashes with what exists (409)
	CodeTooLarge     ErrorCode = "too_large"    // body over the limit (413)
	CodeRateLimited  ErrorCode = "rate_limited" // over the plan's rate (429)
	CodeUnavailable  ErrorCode = "unavailable"  // a dependency is down or slow (503)
	CodeInternal     ErrorCode = "internal"     // a bug or an unexpected failure (500)
)

// Finer codes a caller sees in place of the category's, where telling the
// cases apart helps it; the status still follows the category.
const (
	SubcodeInsufficientScope = "insufficient_scope"  // CodeForbidden: the key lacks the route's scope
	SubcodeNetworkNotAllowed = "network_not_allowed" // CodeForbidden: the client is outside the tenant's allowlist
)

// Error is an error with a category and a message that is safe to show to the
// caller. Err, when set, holds the underlying cause for logs. Subcode, when
// set, is the code the caller sees instead of Code's (one of the Subcode
// constants); the HTTP status is still Code's.
type Error struct {
	Code    ErrorCode
	Message string
	Err     error
	Subcode string

	// down marks Classify's CodeUnavailable: the catalog itself did not
	// answer (CatalogDown).
	down bool
}

func (e *Error) Error() string {
	switch {
	case e.Message == "" && e.Err == nil:
		return string(e.Code)
	case e.Err == nil:
		return e.Message
	case e.Message == "":
		return e.Err.Error()
	}
	return e.Message + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes the sentinels below match any Error of the same code:
// errors.Is(err, catalog.ErrNotFound).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.Err == nil && t.Code == e.Code
}

// Sentinels for errors.Is.
var (
	ErrInvalid      = &Error{Code: CodeInvalid}
	ErrUnauthorized = &Error{Code: CodeUnauthorized}
	ErrForbidden    = &Error{Code: CodeForbidden}
	ErrNotFound     = &Error{Code: CodeNotFound}
	ErrConflict     = &Error{Code: CodeConflict}
	ErrUnavailable  = &Error{Code: CodeUnavailable}
)

// Errorf returns an *Error of the given code with a formatted, caller-safe message.
func Errorf(code ErrorCode, format string, args ...any) error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// SubErrorf is Errorf with a finer code for the caller (a Subcode constant).
func SubErrorf(code ErrorCode, subcode, format string, args ...any) error {
	return &Error{Code: code, Subcode: subcode, Message: fmt.Sprintf(format, args...)}
}

// WrapError returns an *Error of the given code whose message is shown to the
// caller and whose cause is kept for logs only.
func WrapError(code ErrorCode, err error, format string, args ...any) error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Err: err}
}

// CodeOf returns the category of err: the code of the outermost *Error in its
// chain, or CodeInternal.
func CodeOf(err error) ErrorCode {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return CodeUnavailable
	}
	return CodeInternal
}

// CallerCodeOf returns the code a caller is shown for err: the outermost
// *Error's Subcode when it has one, else its category.
func CallerCodeOf(err error) string {
	var e *Error
	if errors.As(err, &e) && e.Subcode != "" {
		return e.Subcode
	}
	return string(CodeOf(err))
}

// MessageOf returns the caller-safe message of err, or "" when err carries none.
func MessageOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return ""
}

// Classify turns a pgx error from a catalog query into a categorised one:
// no rows is CodeNotFound, a unique violation CodeConflict, bad data
// CodeInvalid, a timeout or a lost connection CodeUnavailable. what names
// the thing the query was about, for the message ("server \"pg-1\"").
// Every capability's store classifies its catalog errors with it.
func Classify(err error, what string) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return &Error{Code: CodeNotFound, Message: what + " not found", Err: err}
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "23505": // unique_violation
			return &Error{Code: CodeConflict, Message: what + " already exists", Err: err}
		case pgErr.Code == "23503", pgErr.Code == "23514", pgErr.Code[:2] == "22": // fk, check, data exception
			return &Error{Code: CodeInvalid, Message: "invalid " + what, Err: err}
		case pgErr.Code == "57014", pgErr.Code == "55P03": // query_canceled (statement timeout), lock_not_available
			return &Error{Code: CodeUnavailable, Message: "catalog database is busy", Err: err, down: true}
		case pgErr.Code[:2] == "08", pgErr.Code[:2] == "53", pgErr.Code[:3] == "57P":
			return &Error{Code: CodeUnavailable, Message: "catalog database is unavailable", Err: err, down: true}
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	// Anything that is not a server-side error is the transport: the catalog
	// could not be reached, or did not answer in time.
	return &Error{Code: CodeUnavailable, Message: "catalog database is unavailable", Err: err, down: true}
}

// CatalogDown reports whether err is, or wraps, a catalog query's failure to
// get an answer (Classify's CodeUnavailable: the catalog was unreachable,
// lost the connection, timed out or was too busy), as opposed to an answer
// that refused or a failure of something else. Background work meets it when
// the catalog hangs or resets for a moment: it is nothing the item being
// worked on did, so the work waits and tries again instead of failing the
// item for an operator to retry.
func CatalogDown(err error) bool {
	for err != nil {
		var e *Error
		if !errors.As(err, &e) {
			return false
		}
		if e.down {
			return true
		}
		err = e.Err
	}
	return false
}

// ValidText reports whether s can be stored as PostgreSQL text: valid UTF-8
// without NUL characters.
func ValidText(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}
