package catalog

import (
	"context"
	"errors"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// DescribeServerError says what went wrong on a tenant server in words for
// an operator: PostgreSQL's message, or why the connection failed. It never
// includes the DSN.
func DescribeServerError(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Message
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return "cannot connect: " + ConnectReason(err)
	}
	return err.Error()
}

// ConnectReason says in a few words why a connection to a server failed,
// without the DSN (pgx's messages can include the host and user, never the
// password, but these are kept short and uniform).
func ConnectReason(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "28P01", "28000":
			return "authentication failed"
		case "3D000":
			return "database does not exist"
		}
		return pgErr.Message
	}
	var netErr net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timed out"
	case strings.Contains(err.Error(), "connection refused"):
		return "connection refused"
	}
	return "unreachable"
}
