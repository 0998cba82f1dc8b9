package provisioner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tenantplane/tenantplane/catalog"
)

// The warm pool: each server keeps WarmPoolSize entries that are a tenant in
// all but name — a role (no login yet) and a database of the same name cloned
// from the template, CONNECT granted to the role alone, table grants in
// place. Claiming one is two renames and a password, with no connection to
// the new database, which is what makes creation from the pool fast.

// warmPattern starts the names of this schema's warm entries. It names the
// access layout too, so entries built under an older one are rebuilt rather
// than claimed.
func (p *Provisioner) warmPattern() string {
	return fmt.Sprintf("%s%s_l%d_", warmPrefix, p.schema.Hash(), accessLayout)
}

// claimWarm gives tenant t a warm entry: its database and role renamed to the
// tenant's names, the role given its password and login. It returns false
// when the pool is empty or off, or when an earlier attempt left part of the
// tenant made (that one finishes on the slow path). Two claimers never get
// one entry: the database rename succeeds for one of them only.
func (p *Provisioner) claimWarm(ctx context.Context, pool *pgxpool.Pool, t catalog.Tenant, password string) (bool, error) {
	if p.cfg.WarmPoolSize < 0 {
		return false, nil
	}
	var started bool
	var candidates []string
	err := pool.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) OR EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
		       coalesce((SELECT array_agg(datname ORDER BY random()) FROM pg_database WHERE starts_with(datname, $2)), '{}')`,
		t.Database, p.warmPattern()).Scan(&started, &candidates)
	if err != nil || started {
		return false, err
	}
	for _, c := range candidates {
		if _, err := pool.Exec(ctx, "ALTER DATABASE "+ident(c)+" RENAME TO "+ident(t.Database)); err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && (pgErr.Code == "3D000" || pgErr.Code == "55006") {
				continue // taken by another claimer, or in use
			}
			return false, err
		}
		// The database is ours now. Should these fail, the retry finds the
		// database made and takes the slow path, which repairs the role.
		for _, s := range []string{
			"ALTER ROLE " + ident(c) + " RENAME TO " + ident(t.Role),
			"ALTER ROLE " + ident(t.Role) + " LOGIN PASSWORD " + literal(scramVerifier(password)),
		} {
			if _, err := pool.Exec(ctx, s); err != nil {
				return true, err
			}
		}
		p.kickRefill()
		return true, nil
	}
	return false, nil
}

func (p *Provisioner) kickRefill() {
	select {
	case p.refill <- struct{}{}:
	default:
	}
}

// refillLoop keeps each active server's warm pool full, every few seconds
// and whenever an entry is claimed. On its first pass over each server that
// answers, it also brings the server's tenant roles to the configured
// connection limit and their databases to the current access layout.
func (p *Provisioner) refillLoop(ctx context.Context) {
	synced := map[int64]bool{}
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		servers, err := p.store.ListServers(ctx)
		if err == nil {
			for _, srv := range servers {
				if ctx.Err() != nil {
					break
				}
				if !synced[srv.ID] {
					synced[srv.ID] = p.syncServer(ctx, srv)
				}
				if srv.State != catalog.ServerActive || p.cfg.WarmPoolSize < 0 {
					continue
				}
				if err := p.refillServer(ctx, srv); err != nil && ctx.Err() == nil {
					p.logger.WarnContext(ctx, "warm pool refill failed", "server", srv.Name, "error", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-p.refill:
		}
	}
}

// syncServer brings what a server holds from earlier versions or settings
// up to this process's: tenant roles' connection limit, tenant databases'
// access layout. It reports whether both are done, so a server that did not
// answer is tried again on the next pass.
func (p *Provisioner) syncServer(ctx context.Context, srv catalog.Server) bool {
	n, err := p.syncConnLimits(ctx, srv)
	if n > 0 {
		p.logger.InfoContext(ctx, "tenant roles given the configured connection limit", "server", srv.Name, "roles", n, "limit", p.cfg.TenantConnLimit)
	}
	if err != nil {
		if ctx.Err() == nil {
			p.logger.WarnContext(ctx, "setting tenant roles' connection limit failed", "server", srv.Name, "error", err)
		}
		return false
	}
	n, err = p.convertAccess(ctx, srv)
	if n > 0 {
		p.logger.InfoContext(ctx, "tenant databases brought to the current access layout", "server", srv.Name, "tenants", n, "layout", accessLayout)
	}
	if err != nil {
		if ctx.Err() == nil {
			p.logger.WarnContext(ctx, "converting tenant databases to the current access layout failed; retrying on the next pass", "server", srv.Name, "error", err)
		}
		return false
	}
	return true
}

// refillServer tops up one server's warm pool. One process refills a server
// at a time (an advisory lock), so what it finds half-built is a leftover of
// a crash and is removed, as are entries of another schema.
func (p *Provisioner) refillServer(ctx context.Context, srv catalog.Server) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	tpl, err := p.ensureTemplate(ctx, srv)
	if err != nil {
		return err
	}
	pool, err := p.admin(ctx, srv.ID, srv.Name)
	if err != nil {
		return err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext('tenantplane.refill'))`).Scan(&locked); err != nil || !locked {
		return err
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext('tenantplane.refill'))`) //nolint:errcheck

	rows, err := conn.Query(ctx, `SELECT datname FROM pg_database WHERE starts_with(datname, $1) OR starts_with(datname, $2)`, warmPrefix, warmBuild)
	if err != nil {
		return err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	ready := 0
	for _, n := range names {
		if strings.HasPrefix(n, p.warmPattern()) {
			ready++
			continue
		}
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(n)+" WITH (FORCE)"); err != nil {
			return err
		}
	}
	// Warm roles that no database grants anything to lost theirs to a crash
	// or a schema change. (Not "no database of its name": a claim renames
	// the database before the role, and the role still holds its grant.)
	rows, err = conn.Query(ctx, `SELECT rolname FROM pg_roles r WHERE starts_with(rolname, $1)
		AND NOT EXISTS (SELECT 1 FROM pg_database d, aclexplode(d.datacl) a WHERE a.grantee = r.oid)`, warmPrefix)
	if err != nil {
		return err
	}
	stale, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, r := range stale {
		if _, err := conn.Exec(ctx, "DROP ROLE IF EXISTS "+ident(r)); err != nil {
			return err
		}
	}
	for ; ready < p.cfg.WarmPoolSize && ctx.Err() == nil; ready++ {
		if err := p.buildWarm(ctx, srv, conn.Conn(), tpl); err != nil {
			return err
		}
	}
	return nil
}

// buildWarm makes one warm entry under a build name, and renames it into the
// pool only when it is complete, so a claimer never gets half of one.
func (p *Provisioner) buildWarm(ctx context.Context, srv catalog.Server, admin *pgx.Conn, tpl string) error {
	suffix := strings.TrimPrefix(p.warmPattern(), warmPrefix) + randomHex(4)
	name, build := warmPrefix+suffix, warmBuild+suffix
	super, err := isSuperuser(ctx, admin)
	if err != nil {
		return err
	}
	stmts := append([]string{"CREATE ROLE " + ident(name) + " NOLOGIN"}, p.roleSettings(name, super)...)
	stmts = append(stmts, "CREATE DATABASE "+ident(build)+" TEMPLATE "+ident(tpl))
	stmts = append(stmts, databaseAccess(build, name)...)
	if err := execAll(ctx, admin, stmts); err != nil {
		return fmt.Errorf("building a warm database: %s", catalog.DescribeServerError(err))
	}
	if _, _, err := p.grantTables(ctx, srv.Name, build, name); err != nil {
		return fmt.Errorf("building a warm database: %s", catalog.DescribeServerError(err))
	}
	_, err = admin.Exec(ctx, "ALTER DATABASE "+ident(build)+" RENAME TO "+ident(name))
	return err
}
