package mover

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultFenceWait bounds how long Fence waits for the tenant role's
// sessions to end, unless ctx ends sooner.
const DefaultFenceWait = 10 * time.Second

// ErrFenceIncomplete is returned by Fence when the tenant role can still
// reach the database: a session of it outlived the wait, or it keeps CONNECT
// by another way than its own grant (membership in a role that has it, or
// superuser). The database is not fenced then: do not go on with the move.
var ErrFenceIncomplete = errors.New("the fence does not hold")

// fencePoll is how often Fence looks for sessions that remain.
const fencePoll = 25 * time.Millisecond

// Fence makes the source refuse the tenant: it revokes CONNECT on database
// from role (and from PUBLIC, which the provisioner's layout gives nothing),
// then terminates role's sessions on database until none remain, for at most
// DefaultFenceWait. A session that is terminated rolls back what it had not
// committed, so once Fence returns nil no write of the tenant's lands on the
// source. Prepared transactions of the database (two-phase commit) would
// outlive their sessions: Fence fails on them.
//
// admin is a connection to the source server (any database) as its admin
// role, which owns the database and is a member of the tenant role: that is
// what lets a role that is not a superuser revoke and terminate. Fence is
// idempotent; Unfence undoes it.
func Fence(ctx context.Context, admin Querier, database, role string) (err error) {
	defer wrap(&err, fmt.Sprintf("Fence(%q, %q)", database, role))
	for _, stmt := range []string{
		"REVOKE CONNECT ON DATABASE " + ident(database) + " FROM " + ident(role),
		"REVOKE CONNECT ON DATABASE " + ident(database) + " FROM PUBLIC",
	} {
		if _, err := admin.Exec(ctx, stmt); err != nil {
			return err
		}
	}
	var canConnect bool
	if err := admin.QueryRow(ctx, "SELECT has_database_privilege($1, $2, 'CONNECT')", role, database).Scan(&canConnect); err != nil {
		return err
	}
	if canConnect {
		return fmt.Errorf("%w: role %s may still connect to %s (a superuser, or a member of a role with CONNECT): fence by hand or take the move offline",
			ErrFenceIncomplete, role, database)
	}
	var prepared []string
	rows, err := admin.Query(ctx, "SELECT gid FROM pg_prepared_xacts WHERE database = $1 ORDER BY gid", database)
	if err != nil {
		return err
	}
	for rows.Next() {
		var gid string
		if err := rows.Scan(&gid); err != nil {
			rows.Close()
			return err
		}
		prepared = append(prepared, gid)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(prepared) > 0 {
		return fmt.Errorf("%w: database %s has prepared transactions (%s), which outlive the sessions: COMMIT PREPARED or ROLLBACK PREPARED them",
			ErrFenceIncomplete, database, strings.Join(prepared, ", "))
	}

	deadline := time.Now().Add(DefaultFenceWait)
	for {
		// A backend told to terminate lists here until it has exited;
		// signalling it again is harmless.
		var remaining int
		err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE datname = $1 AND usename = $2 AND pid <> pg_backend_pid()`, database, role).Scan(&remaining)
		if err != nil {
			return err
		}
		if remaining == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %d session(s) of role %s on %s remain after %s", ErrFenceIncomplete, remaining, role, database, DefaultFenceWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(fencePoll):
		}
	}
}

// Unfence lets role connect to database again (GRANT CONNECT): the undoing
// of Fence, when a move is aborted or reverted. It is idempotent.
func Unfence(ctx context.Context, admin Querier, database, role string) (err error) {
	defer wrap(&err, fmt.Sprintf("Unfence(%q, %q)", database, role))
	_, err = admin.Exec(ctx, "GRANT CONNECT ON DATABASE "+ident(database)+" TO "+ident(role))
	return err
}

// fencePolicy names the policy that fences one tenant's rows in a pool
// database: tenantplane_fence_<tenant id without hyphens>.
func fencePolicy(tenantID string) string {
	return "tenantplane_fence_" + strings.ReplaceAll(tenantID, "-", "")
}

// FenceTenantRows makes a pool database refuse one tenant's rows to its
// router role: on every table (tenant_id), in one transaction, a restrictive
// policy for that role that no row of the tenant passes, for reading or
// writing. The pool's other tenants are served on; the tenant's own
// requests, wherever they come from, see and change nothing from then on.
// Creating a policy takes the table's lock, so it waits for the
// transactions that hold it (bounded by a lock timeout) and every later
// statement is planned with the fence. admin is a connection to the pool
// database as its owner. Idempotent; UnfenceTenantRows undoes it.
func FenceTenantRows(ctx context.Context, admin DB, role, tenantID string) (err error) {
	defer wrap(&err, fmt.Sprintf("FenceTenantRows(%q, %q)", role, tenantID))
	if !uuidRE.MatchString(tenantID) {
		return fmt.Errorf("tenant id %q is not a UUID", tenantID)
	}
	name := fencePolicy(tenantID)
	return eachTable(ctx, admin, func(tx pgx.Tx, t Table) error {
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_policy WHERE polrelid = $1::regclass AND polname = $2)", qualified(t.Name), name).Scan(&exists); err != nil {
			return err
		}
		if exists {
			return nil
		}
		// The admin role is a member of the pool's role, and so under its
		// policies too: the fence is for the role itself.
		cond := "(tenant_id <> " + literal(tenantID) + " OR current_user <> " + literal(role) + ")"
		_, err := tx.Exec(ctx, "CREATE POLICY "+ident(name)+" ON "+qualified(t.Name)+" AS RESTRICTIVE FOR ALL TO "+ident(role)+
			" USING "+cond+" WITH CHECK "+cond)
		return err
	})
}

// eachTable runs fn on every table of the database in one transaction with
// a lock timeout, and commits it.
func eachTable(ctx context.Context, admin DB, fn func(pgx.Tx, Table) error) error {
	tx, err := admin.BeginTx(ctx, pgx.TxOptions{})
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '10s'"); err != nil {
		return err
	}
	tables, err := Tables(ctx, tx)
	if err != nil {
		return err
	}
	for _, t := range tables {
		if err := fn(tx, t); err != nil {
			return fmt.Errorf("table %s: %w", t.Name, err)
		}
	}
	return tx.Commit(ctx)
}

// UnfenceTenantRows drops the policies of FenceTenantRows: the tenant's
// rows in the pool database serve again. Idempotent.
func UnfenceTenantRows(ctx context.Context, admin DB, tenantID string) (err error) {
	defer wrap(&err, fmt.Sprintf("UnfenceTenantRows(%q)", tenantID))
	return eachTable(ctx, admin, func(tx pgx.Tx, t Table) error {
		_, err := tx.Exec(ctx, "DROP POLICY IF EXISTS "+ident(fencePolicy(tenantID))+" ON "+qualified(t.Name))
		return err
	})
}
