package router

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
)

// A write refused by a promotion's fence is a moment's unavailability (503,
// to retry); any other row-level security refusal stays an internal error.
func TestDBErrorOfAFencedWrite(t *testing.T) {
	t.Parallel()
	fenced := &pgconn.PgError{Code: "42501", Message: `new row violates row-level security policy "tenantplane_fence_0a1b" for table "users"`}
	require.Equal(t, catalog.CodeUnavailable, catalog.CodeOf(dbError(fenced, "user")))
	other := &pgconn.PgError{Code: "42501", Message: `new row violates row-level security policy for table "users"`}
	err := dbError(other, "user")
	require.True(t, errors.Is(err, other))
	require.NotEqual(t, catalog.CodeUnavailable, catalog.CodeOf(err))
}

// A statement cut by a move's fence (its session terminated) is a 503 that
// says why, to retry.
func TestDBErrorOfATerminatedSession(t *testing.T) {
	t.Parallel()
	cut := &pgconn.PgError{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"}
	err := dbError(cut, "user")
	require.Equal(t, catalog.CodeUnavailable, catalog.CodeOf(err))
	require.Contains(t, err.Error(), "a move's fence")
}
