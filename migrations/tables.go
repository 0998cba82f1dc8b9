package migrations

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// TenantTables lists the tables of a tenant database (dedicated or pool)
// that hold tenants' rows: every table of schema public with a tenant_id
// column, by name. The schema's rule (migrations_test checks it) is that
// every tenant table has one.
func TenantTables(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) ([]string, error) {
	rows, err := q.Query(ctx, `
		SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
		  AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
		ORDER BY c.relname`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
