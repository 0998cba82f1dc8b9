package mover_test

import (
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/mover"
)

// copyBundle is a filled source database and an empty target on another
// server, both of schemaDDL.
type copyBundle struct {
	source, target *tenantDB
}

func setupCopy(t *testing.T) *copyBundle {
	t.Helper()
	source := newTenantDB(t, pgtest.NewServer(t), schemaDDL)
	target := newTenantDB(t, pgtest.NewServer(t), schemaDDL)
	fillSource(t, source)
	return &copyBundle{source: source, target: target}
}

func TestCopy(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setupCopy(t)

	var mu sync.Mutex
	var reports []mover.TableProgress
	res, err := mover.Copy(ctx, b.source.admin, b.target.admin, mover.CopyOptions{
		ProgressEvery: 256 << 10,
		Progress: func(p mover.TableProgress) {
			mu.Lock()
			defer mu.Unlock()
			reports = append(reports, p)
		},
	})
	require.NoError(t, err)

	// Foreign-key order: users after accounts, orders after users.
	var order []string
	for _, p := range res.Tables {
		order = append(order, p.Table)
		require.True(t, p.Done)
		require.Positive(t, p.Bytes)
	}
	require.Equal(t, []string{"accounts", "audit", "users", "orders"}, order)
	rows := map[string]int64{}
	for _, p := range res.Tables {
		rows[p.Table] = p.Rows
	}
	require.Equal(t, map[string]int64{"accounts": accountRows, "audit": auditRows, "users": userRows, "orders": orderRows}, rows)
	require.EqualValues(t, accountRows+auditRows+userRows+orderRows, res.Rows)
	require.Equal(t, 4, res.SequencesMoved) // accounts, audit, users' identity, invoice_numbers

	// Progress came while the big tables streamed, counting rows by the
	// newline, and ended with each table's final report.
	var partial, final int
	for _, p := range reports {
		if p.Done {
			final++
			continue
		}
		partial++
		require.Less(t, p.Rows, rows[p.Table])
	}
	require.Equal(t, 4, final)
	require.Positive(t, partial)

	vr, err := mover.Verify(ctx, b.source.admin, b.target.admin)
	require.NoError(t, err)
	require.Len(t, vr.Tables, 4)
	require.Len(t, vr.Sequences, 4)
	require.Equal(t, mover.SchemaVersion{Version: 3, Known: true}, vr.TargetSchema)

	// The generated column was computed on the target, and escaped text
	// came through intact.
	var lower, note string
	require.NoError(t, b.target.admin.QueryRow(ctx, "SELECT email_lower, note FROM users WHERE id = 42").Scan(&lower, &note))
	require.Equal(t, "user42@example.com", lower)
	require.Equal(t, "line one\nline\ttwo \\ back42", note)

	// The target's sequences continue past the source's: the tenant's next
	// inserts there take new ids, whichever side used them last.
	var srcMax, srcNext int64
	require.NoError(t, b.source.admin.QueryRow(ctx, "SELECT max(id) FROM accounts").Scan(&srcMax))
	tenant, err := b.target.connect(ctx)
	require.NoError(t, err)
	defer tenant.Close(ctx)
	var accountID, userID int64
	require.NoError(t, tenant.QueryRow(ctx, "INSERT INTO accounts (name) VALUES ('new') RETURNING id").Scan(&accountID))
	require.Greater(t, accountID, srcMax+5, "the source had used 5 more values of accounts_id_seq")
	require.NoError(t, tenant.QueryRow(ctx, "INSERT INTO users (account_id, email) VALUES ($1, 'new@example.com') RETURNING id", accountID).Scan(&userID))
	require.EqualValues(t, userRows+1, userID)
	var auditID int64
	require.NoError(t, tenant.QueryRow(ctx, "INSERT INTO audit (msg) VALUES ('new') RETURNING id").Scan(&auditID))
	require.EqualValues(t, auditRows+1, auditID)
	require.NoError(t, b.source.admin.QueryRow(ctx, "SELECT last_value FROM invoice_numbers").Scan(&srcNext))
	var invoice int64
	require.NoError(t, tenant.QueryRow(ctx, "SELECT nextval('invoice_numbers')").Scan(&invoice))
	require.Equal(t, srcNext+1, invoice)

	// A second copy into the now filled target is refused, unless asked to
	// truncate; then it is the source's rows again, and the sequences that
	// moved ahead on the target are not moved back.
	_, err = mover.Copy(ctx, b.source.admin, b.target.admin, mover.CopyOptions{})
	require.ErrorIs(t, err, mover.ErrTargetNotEmpty)
	res, err = mover.Copy(ctx, b.source.admin, b.target.admin, mover.CopyOptions{Truncate: true})
	require.NoError(t, err)
	require.Zero(t, res.SequencesMoved)
	_, err = mover.Verify(ctx, b.source.admin, b.target.admin)
	require.NoError(t, err)
}

func TestCopyRefusesAnotherSchema(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	srv := pgtest.Shared(t)
	source := newTenantDB(t, srv, schemaDDL)
	fillSource(t, source)
	target := newTenantDB(t, srv, schemaDDL+`ALTER TABLE orders DROP COLUMN blob; CREATE TABLE extra (id int PRIMARY KEY);`)

	_, err := mover.Copy(ctx, source.admin, target.admin, mover.CopyOptions{})
	var mismatch *mover.SchemaMismatchError
	require.ErrorAs(t, err, &mismatch)
	require.Equal(t, []string{
		"table orders: columns (id, user_id, amount, placed_on, tags, blob) on the source, (id, user_id, amount, placed_on, tags) on the target",
		"table extra: on the target only",
	}, mismatch.Differences)

	var n int
	require.NoError(t, target.admin.QueryRow(ctx, "SELECT count(*) FROM accounts").Scan(&n))
	require.Zero(t, n, "nothing is written to a target of another schema")
}

func TestCopyRollsBackOnFailure(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	srv := pgtest.Shared(t)
	source := newTenantDB(t, srv, schemaDDL)
	fillSource(t, source)
	// The target refuses a row the source has: its CHECK is stricter.
	target := newTenantDB(t, srv, schemaDDL+`ALTER TABLE orders ADD CHECK (amount < 20000);`)

	_, err := mover.Copy(ctx, source.admin, target.admin, mover.CopyOptions{})
	require.ErrorContains(t, err, "target: writing table orders")

	// Tables copied before it are rolled back with it.
	var n int
	require.NoError(t, target.admin.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&n))
	require.Zero(t, n)
}

func TestTablesOrder(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	srv := pgtest.Shared(t)
	td := newTenantDB(t, srv, `
		CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
		CREATE TABLE c (id int PRIMARY KEY, b_id int);
		CREATE TABLE b (id int PRIMARY KEY, c_id int REFERENCES c DEFERRABLE);
		ALTER TABLE c ADD FOREIGN KEY (b_id) REFERENCES b;
		CREATE TABLE a (id int PRIMARY KEY, c_id int REFERENCES c, gone int, dropped_later int);
		ALTER TABLE a DROP COLUMN dropped_later;`)

	tables, err := mover.Tables(ctx, td.admin)
	require.NoError(t, err)
	// The deferrable key from b to c does not order them: b, c, a.
	require.Equal(t, []mover.Table{
		{Name: "b", Columns: []string{"id", "c_id"}},
		{Name: "c", Columns: []string{"id", "b_id"}, References: []string{"b"}},
		{Name: "a", Columns: []string{"id", "c_id", "gone"}, References: []string{"c"}},
	}, tables)

	_, err = td.admin.Exec(ctx, `ALTER TABLE b ADD FOREIGN KEY (c_id) REFERENCES c`)
	require.NoError(t, err)
	_, err = mover.Tables(ctx, td.admin)
	require.ErrorIs(t, err, mover.ErrForeignKeyCycle)
	require.ErrorContains(t, err, "among tables a, b, c")
}

// A copy through a pool works as through a connection.
func TestCopyThroughPool(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	srv := pgtest.Shared(t)
	source := newTenantDB(t, srv, `CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
		CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10);`)
	target := newTenantDB(t, srv, `CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
		CREATE TABLE t (id int PRIMARY KEY);`)
	pool, err := pgxpool.New(ctx, srv.ManagedDSN(t, source.name))
	require.NoError(t, err)
	defer pool.Close()
	res, err := mover.Copy(ctx, pool, target.admin, mover.CopyOptions{})
	require.NoError(t, err)
	require.EqualValues(t, 10, res.Rows)
}
