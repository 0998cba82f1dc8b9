package mover_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/mover"
)

func TestVerifyNamesWhatDiffers(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setupCopy(t)
	_, err := mover.Copy(ctx, b.source.admin, b.target.admin, mover.CopyOptions{})
	require.NoError(t, err)
	_, err = mover.Verify(ctx, b.source.admin, b.target.admin)
	require.NoError(t, err)

	// By hand on the target: one row changed, one deleted, a sequence set
	// back, and the schema version moved.
	_, err = b.target.admin.Exec(ctx, `
		UPDATE users SET note = 'changed by hand' WHERE id = 5000;
		DELETE FROM orders WHERE id = (SELECT id FROM orders ORDER BY id LIMIT 1);
		SELECT setval('audit_id_seq', 10);
		UPDATE schema_migrations SET version = 4`)
	require.NoError(t, err)

	res, err := mover.Verify(ctx, b.source.admin, b.target.admin)
	require.ErrorIs(t, err, mover.ErrMismatch)
	var mismatch *mover.MismatchError
	require.True(t, errors.As(err, &mismatch))
	require.Len(t, mismatch.Differences, 4)
	require.Equal(t, "schema version 3 on the source, 4 on the target", mismatch.Differences[0])
	require.Regexp(t, `^table users: 10000 rows on both sides, but their contents differ \(row hash -?\d+ on the source, -?\d+ on the target\)$`, mismatch.Differences[1])
	require.Equal(t, "table orders: 20000 rows on the source, 19999 on the target", mismatch.Differences[2])
	require.Equal(t, "sequence audit_id_seq: next value 1001 on the source, 11 on the target (behind)", mismatch.Differences[3])
	require.Equal(t, mismatch.Differences, res.Differences)

	// The result has every table, equal or not.
	equal := map[string]bool{}
	for _, c := range res.Tables {
		equal[c.Table] = c.Equal()
	}
	require.Equal(t, map[string]bool{"accounts": true, "audit": true, "users": false, "orders": false}, equal)

	// Putting the row back, after the table was rewritten in another
	// order (a new physical place for every row), makes users equal again:
	// the hash does not depend on where or in which order rows are.
	_, err = b.target.admin.Exec(ctx, `
		CLUSTER users USING users_email_key;
		UPDATE users SET note = E'line one\nline\ttwo \\ back5000' WHERE id = 5000`)
	require.NoError(t, err)
	res, err = mover.Verify(ctx, b.source.admin, b.target.admin)
	require.ErrorIs(t, err, mover.ErrMismatch)
	require.Len(t, res.Differences, 3)
	require.True(t, res.Tables[2].Equal(), res.Tables[2].String())
}

// Rows in another physical order, and columns in another order, hash alike.
func TestVerifyIgnoresOrder(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	srv := pgtest.Shared(t)
	source := newTenantDB(t, srv, `CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
		CREATE TABLE t (id int PRIMARY KEY, name text, at timestamptz);
		INSERT INTO t SELECT i, 'n' || i, timestamptz '2024-05-01 12:00+02' + i * interval '1 hour' FROM generate_series(1, 500) i;`)
	target := newTenantDB(t, srv, `CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
		CREATE TABLE t (at timestamptz, name text, id int PRIMARY KEY);
		INSERT INTO t (id, name, at) SELECT i, 'n' || i, timestamptz '2024-05-01 12:00+02' + i * interval '1 hour' FROM generate_series(500, 1, -1) i;`)
	// A session setting of the admin role does not change what is hashed.
	_, err := target.admin.Exec(ctx, "SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'SQL, DMY'")
	require.NoError(t, err)
	res, err := mover.Verify(ctx, source.admin, target.admin)
	require.NoError(t, err)
	require.Equal(t, []mover.TableCheck{{Table: "t", SourceRows: 500, TargetRows: 500, SourceHash: res.Tables[0].SourceHash, TargetHash: res.Tables[0].SourceHash}}, res.Tables)
	require.Equal(t, mover.SchemaVersion{}, res.SourceSchema, "no schema_migrations row")
}

// With the copy's own count and hash of what it sent, Verify reads only the
// target back, and still names what differs there.
func TestVerifyAgainstTheCopy(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setupCopy(t)
	// Escapes in COPY's text: a newline, a tab and a backslash in a value.
	_, err := b.source.admin.Exec(ctx, `UPDATE users SET note = E'line one\nline\ttwo \\ back' WHERE id = 7`)
	require.NoError(t, err)
	copied, err := mover.Copy(ctx, b.source.admin, b.target.admin, mover.CopyOptions{})
	require.NoError(t, err)
	require.Len(t, copied.Copied, 4)
	var rows int64
	for _, c := range copied.Copied {
		rows += c.Rows
	}
	require.Equal(t, copied.Rows, rows, "the rows hashed on the way are the rows the target stored")

	res, err := mover.VerifyWith(ctx, b.source.admin, b.target.admin, mover.VerifyOptions{Copied: copied.Copied})
	require.NoError(t, err)
	require.Len(t, res.Tables, 4)
	for _, c := range res.Tables {
		require.True(t, c.Equal(), c.String())
		require.Regexp(t, `^xxh:[0-9a-f]+$`, c.TargetHash)
	}

	_, err = b.target.admin.Exec(ctx, `
		UPDATE users SET note = 'changed by hand' WHERE id = 5000;
		DELETE FROM orders WHERE id = (SELECT id FROM orders ORDER BY id LIMIT 1)`)
	require.NoError(t, err)
	res, err = mover.VerifyWith(ctx, b.source.admin, b.target.admin, mover.VerifyOptions{Copied: copied.Copied})
	require.ErrorIs(t, err, mover.ErrMismatch)
	require.Len(t, res.Differences, 2, res.Differences)
	require.Regexp(t, `^table users: 10000 rows on both sides, but their contents differ \(row hash xxh:[0-9a-f]+ on the source, xxh:[0-9a-f]+ on the target\)$`, res.Differences[0])
	require.Equal(t, "table orders: 20000 rows on the source, 19999 on the target", res.Differences[1])
}
