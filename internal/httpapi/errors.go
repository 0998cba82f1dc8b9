package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/gin-gonic/gin"
	"github.com/tenantplane/tenantplane/catalog"
)

// statusOf is the one place an error category becomes an HTTP status.
var statusOf = map[catalog.ErrorCode]int{
	catalog.CodeInvalid:      http.StatusBadRequest,
	catalog.CodeUnauthorized: http.StatusUnauthorized,
	catalog.CodeForbidden:    http.StatusForbidden,
	catalog.CodeNotFound:     http.StatusNotFound,
	catalog.CodeConflict:     http.StatusConflict,
	catalog.CodeTooLarge:     http.StatusRequestEntityTooLarge,
	catalog.CodeRateLimited:  http.StatusTooManyRequests,
	catalog.CodeUnavailable:  http.StatusServiceUnavailable,
	catalog.CodeInternal:     http.StatusInternalServerError,
}

// Status returns the HTTP status for err's category.
func Status(err error) int {
	if s, ok := statusOf[catalog.CodeOf(err)]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// ErrorBody is the JSON body of every error answer on both APIs.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// WriteError answers with err's status and JSON body, and aborts the chain.
// The message is err's caller-safe message; an error without one (a bug, an
// unexpected failure) is logged with its cause and answered with a generic text.
func WriteError(c *gin.Context, err error) {
	// A request cancelled for a reason (its dependency found hung, see
	// internal/stall) answers with that reason, not as a failure of ours.
	var cause *catalog.Error
	if errors.Is(err, context.Canceled) && errors.As(context.Cause(c.Request.Context()), &cause) {
		err = cause
	}
	code := catalog.CallerCodeOf(err)
	status := Status(err)
	msg := catalog.MessageOf(err)
	if msg == "" {
		msg = http.StatusText(status)
	}
	if status >= 500 {
		_ = c.Error(err) // the access log prints it
	}
	c.AbortWithStatusJSON(status, ErrorBody{Error: ErrorDetail{Code: code, Message: msg}})
}

// Fail answers with a new error of the given code and message.
func Fail(c *gin.Context, code catalog.ErrorCode, format string, args ...any) {
	WriteError(c, catalog.Errorf(code, format, args...))
}

// BindJSON decodes the request body into v. It is strict: an empty body,
// a field v does not have (a misspelt one would otherwise be lost without a
// word) or anything after the JSON value is CodeInvalid, naming the problem;
// an oversized body is CodeTooLarge.
func BindJSON(c *gin.Context, v any) error {
	raw, err := readBody(c)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return catalog.Errorf(catalog.CodeInvalid, "request body is empty: send a JSON value")
	}
	return decodeStrict(raw, v)
}

// BindOptionalJSON is BindJSON for a body the caller may leave out: an
// empty one (or only whitespace), however it is framed (Content-Length,
// chunked or none), leaves v as it is.
func BindOptionalJSON(c *gin.Context, v any) error {
	raw, err := readBody(c)
	if err != nil || len(bytes.TrimSpace(raw)) == 0 {
		return err
	}
	return decodeStrict(raw, v)
}

func readBody(c *gin.Context) ([]byte, error) {
	if c.Request.Body == nil || c.Request.Body == http.NoBody {
		return nil, nil
	}
	raw, err := io.ReadAll(c.Request.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, catalog.Errorf(catalog.CodeTooLarge, "request body is larger than %d bytes", tooBig.Limit)
		}
		return nil, catalog.WrapError(catalog.CodeInvalid, err, "request body could not be read")
	}
	return raw, nil
}

func decodeStrict(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return catalog.WrapError(catalog.CodeInvalid, err, "request body is not valid JSON for this call: %s", err.Error())
	}
	if _, err := dec.Token(); err != io.EOF {
		return catalog.Errorf(catalog.CodeInvalid, "request body is not valid JSON for this call: more after its JSON value")
	}
	return nil
}

func logAttrsOf(c *gin.Context) []any {
	attrs := []any{"request_id", RequestID(c)}
	if len(c.Errors) > 0 {
		attrs = append(attrs, "error", c.Errors.Last().Err.Error())
	}
	return attrs
}
