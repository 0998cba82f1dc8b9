package mover_test

import (
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/mover"
)

// definitions lists a database's indexes and constraints with their
// definitions and comments.
func definitions(t *testing.T, conn *pgx.Conn) []string {
	t.Helper()
	ctx := testContext(t)
	rows, err := conn.Query(ctx, `
		SELECT indexdef || coalesce(' -- ' || obj_description((schemaname || '.' || indexname)::regclass, 'pg_class'), '')
			FROM pg_indexes WHERE schemaname = 'public'
		UNION ALL
		SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) || ' valid ' || convalidated
			|| coalesce(' -- ' || obj_description(oid, 'pg_constraint'), '')
			FROM pg_constraint WHERE connamespace = 'public'::regnamespace
		ORDER BY 1`)
	require.NoError(t, err)
	defs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return defs
}

// Copy drops the target's indexes and constraints for the load and makes
// them again: the same names, definitions and comments after it.
func TestCopyRebuildsIndexesAndConstraints(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setupCopy(t)
	_, err := b.target.admin.Exec(ctx, `COMMENT ON INDEX users_email_key IS 'one per email';
		COMMENT ON CONSTRAINT orders_user_id_fkey ON orders IS 'the buyer';
		CREATE INDEX orders_placed_on_idx ON orders (placed_on) WHERE amount > 10;
		ALTER TABLE orders ADD CONSTRAINT orders_amount_check CHECK (amount >= 0)`)
	require.NoError(t, err)
	before := definitions(t, b.target.admin)

	res, err := mover.Copy(ctx, b.source.admin, b.target.admin, mover.CopyOptions{})
	require.NoError(t, err)
	require.Equal(t, before, definitions(t, b.target.admin))
	// Primary keys 4, users' email key 1, an index, foreign keys 3, comments 2.
	require.Equal(t, 11, res.IndexesRebuilt)
	_, err = mover.Verify(ctx, b.source.admin, b.target.admin)
	require.NoError(t, err)
}
