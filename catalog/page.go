package catalog

import (
	"context"
	"encoding/base64"
	"math"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Every list of both APIs pages the same way: ?limit= from 1 to
// MaxPageLimit (DefaultPageLimit when absent) and ?cursor=, the next_cursor
// of the previous page, which is absent on the last page. Cursors are
// opaque: each list encodes the sort key of the last row it returned.
const (
	DefaultPageLimit = 100
	MaxPageLimit     = 1000
)

// LimitMessage is what a limit out of bounds answers, on every list.
const LimitMessage = "limit must be a whole number from 1 to 1000"

// CheckLimit applies the page bounds: 0 is the default, anything else
// outside 1..MaxPageLimit a CodeInvalid error.
func CheckLimit(limit int) (int, error) {
	switch {
	case limit == 0:
		return DefaultPageLimit, nil
	case limit < 1 || limit > MaxPageLimit:
		return 0, Errorf(CodeInvalid, LimitMessage)
	}
	return limit, nil
}

// ErrBadCursor is a cursor no list of ours made.
func ErrBadCursor() error {
	return Errorf(CodeInvalid, "cursor is malformed: pass next_cursor from the previous page")
}

// EncodeCursor makes an opaque cursor of a row's sort key.
func EncodeCursor(key ...string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strings.Join(key, "|")))
}

// DecodeCursor reads a cursor of n key parts; "" is the first page (nil).
func DecodeCursor(cursor string, n int) ([]string, error) {
	if cursor == "" {
		return nil, nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil {
		return nil, ErrBadCursor()
	}
	parts := strings.Split(string(raw), "|")
	if len(parts) != n {
		return nil, ErrBadCursor()
	}
	return parts, nil
}

// IDCursor reads a cursor of a list ordered by a numeric id, newest first
// (EncodeCursor of the last id listed): the ids to list are below it.
func IDCursor(cursor string) (int64, error) {
	parts, err := DecodeCursor(cursor, 1)
	if err != nil || parts == nil {
		return math.MaxInt64, err
	}
	id, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil {
		return 0, ErrBadCursor()
	}
	return id, nil
}

// IDPage pages a list ordered by a numeric id, newest first: it runs query
// with args followed by the id to list below and the row limit (so those
// are its last two parameters), scans each row, and returns at most limit
// of them (CheckLimit's bounds) after cursor, with the next page's cursor
// ("" on the last). what names the list in errors.
func IDPage[T any](ctx context.Context, q Querier, limit int, cursor, what, query string,
	scan func(pgx.Row) (T, error), id func(T) int64, args ...any) ([]T, string, error) {
	limit, err := CheckLimit(limit)
	if err != nil {
		return nil, "", err
	}
	before, err := IDCursor(cursor)
	if err != nil {
		return nil, "", err
	}
	rows, err := q.Query(ctx, query, append(args, before, limit+1)...)
	if err != nil {
		return nil, "", Classify(err, what)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (T, error) { return scan(r) })
	if err != nil {
		return nil, "", Classify(err, what)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = EncodeCursor(strconv.FormatInt(id(out[limit-1]), 10))
	}
	return out, next, nil
}
