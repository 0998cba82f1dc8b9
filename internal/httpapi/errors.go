package httpapi

import (
	"bytes"
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
	code := catalog.CodeOf(err)
	status := Status(err)
	msg := catalog.MessageOf(err)
	if msg == "" {
		msg = http.StatusText(status)
	}
	if status >= 500 {
		_ = c.Error(err) // the access log prints it
	}
	c.AbortWithStatusJSON(status, ErrorBody{Error: ErrorDetail{Code: string(code), Message: msg}})
}

// Fail answers with a new error of the given code and message.
func Fail(c *gin.Context, code catalog.ErrorCode, format string, args ...any) {
	WriteError(c, catalog.Errorf(code, format, args...))
}

// BindJSON decodes the request body into v, turning decoding failures into
// clear CodeInvalid errors and an oversized body into CodeTooLarge.
func BindJSON(c *gin.Context, v any) error {
	if err := c.ShouldBindJSON(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return catalog.Errorf(catalog.CodeTooLarge, "request body is larger than %d bytes", tooBig.Limit)
		}
		return catalog.WrapError(catalog.CodeInvalid, err, "request body is not valid JSON for this call: %s", err.Error())
	}
	return nil
}

// BindOptionalJSON decodes a body the caller may leave out into v. The body
// is read whatever its framing (Content-Length, chunked, or none), so
// nothing sent is ignored; an empty one (or only whitespace) leaves v as it
// is. Unlike BindJSON it refuses unknown fields and anything after the JSON
// value, so a misspelt field is an error rather than a field silently lost.
func BindOptionalJSON(c *gin.Context, v any) error {
	if c.Request.Body == nil || c.Request.Body == http.NoBody {
		return nil
	}
	raw, err := io.ReadAll(c.Request.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return catalog.Errorf(catalog.CodeTooLarge, "request body is larger than %d bytes", tooBig.Limit)
		}
		return catalog.WrapError(catalog.CodeInvalid, err, "request body could not be read")
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil
	}
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
