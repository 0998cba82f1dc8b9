package datarights

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/tenantplane/tenantplane/migrations"
)

// adoptRows makes every row of a restored database the tenant's own: the
// tenant tables carry tenant_id in their keys (and their row-level security
// matches it against the database's tenant), so a backup restored as a new
// tenant would otherwise hold rows that tenant cannot see. In one
// transaction, as the tables' owner: the foreign keys are dropped and made
// again around the update (they may lead with tenant_id), then checked once.
// A database whose rows are the tenant's already is left untouched.
func adoptRows(ctx context.Context, cfg *pgx.ConnConfig, tenantID string) (err error) {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		names, err := migrations.TenantTables(ctx, tx)
		if err != nil {
			return err
		}
		tables := make([]string, len(names))
		for i, n := range names {
			tables[i] = pgx.Identifier{"public", n}.Sanitize()
		}
		foreign := false
		for _, t := range tables {
			var other bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM `+t+` WHERE tenant_id IS DISTINCT FROM $1)`, tenantID).Scan(&other); err != nil {
				return fmt.Errorf("%s: %w", t, err)
			}
			foreign = foreign || other
		}
		if !foreign {
			return nil
		}
		var drops, adds []string
		rows, err := tx.Query(ctx, `SELECT format('ALTER TABLE %s DROP CONSTRAINT %I', c.conrelid::regclass, c.conname),
				format('ALTER TABLE %s ADD CONSTRAINT %I %s', c.conrelid::regclass, c.conname, pg_get_constraintdef(c.oid))
			FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
			WHERE c.contype = 'f' AND n.nspname = 'public' ORDER BY c.conname`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var drop, add string
			if err := rows.Scan(&drop, &add); err != nil {
				return err
			}
			drops, adds = append(drops, drop), append(adds, add)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		for _, stmt := range drops {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return err
			}
		}
		for _, t := range tables {
			if _, err := tx.Exec(ctx, `UPDATE `+t+` SET tenant_id = $1 WHERE tenant_id IS DISTINCT FROM $1`, tenantID); err != nil {
				return fmt.Errorf("%s: giving its rows to the tenant: %w", t, err)
			}
		}
		for _, stmt := range adds {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("making a foreign key again: %s: %w", stmt, err)
			}
		}
		return nil
	})
}
