package provisioner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/migrations"
)

// CreatePool records a pool database of capacity pooled tenants on server
// and makes it there: a login role that owns nothing (NOINHERIT,
// NOBYPASSRLS, its password sealed in the catalog) and a database cloned from
// the server's template, owned by the admin role, that only that role may
// connect to and whose rows it may read and write under row-level security.
// The statements are idempotent: a pool left provisioning or failed (the
// server was down) is made by EnsurePool. A server that fails the build marks
// the pool failed with the reason, and the error says so.
func (p *Provisioner) CreatePool(ctx context.Context, server string, capacity int, actor string) (catalog.PoolDatabase, error) {
	pd, err := p.store.CreatePoolDatabase(ctx, server, capacity, actor)
	if err != nil {
		return catalog.PoolDatabase{}, err
	}
	p.logger.InfoContext(ctx, "pool database created", "pool", pd.Name, "server", pd.Server, "capacity", capacity, "actor", actor)
	return p.EnsurePool(ctx, pd.ID)
}

// EnsurePool makes a recorded pool database on its server, if it is not
// there yet, and marks it active with its schema version.
func (p *Provisioner) EnsurePool(ctx context.Context, id int64) (catalog.PoolDatabase, error) {
	pd, err := p.store.GetPoolDatabase(ctx, id)
	if err != nil {
		return pd, err
	}
	schema, err := p.buildPool(ctx, pd)
	if err != nil {
		reason := catalog.DescribeServerError(err)
		if serr := p.store.SetPoolState(context.WithoutCancel(ctx), id, catalog.PoolFailed, reason, nil); serr != nil {
			return pd, errors.Join(err, serr)
		}
		return pd, catalog.WrapError(catalog.CodeUnavailable, err, "pool database %s on server %q: %s", pd.Name, pd.Server, reason)
	}
	if err := p.store.SetPoolState(ctx, id, catalog.PoolActive, "", &schema); err != nil {
		return pd, err
	}
	return p.store.GetPoolDatabase(ctx, id)
}

func (p *Provisioner) buildPool(ctx context.Context, pd catalog.PoolDatabase) (catalog.SchemaState, error) {
	srv, err := p.store.GetServer(ctx, pd.Server)
	if err != nil {
		return catalog.SchemaState{}, err
	}
	pool, err := p.admin(ctx, srv.ID, srv.Name)
	if err != nil {
		return catalog.SchemaState{}, err
	}
	role, password, err := p.store.PoolCredentials(ctx, pd.ID)
	if err != nil {
		return catalog.SchemaState{}, err
	}
	if err := p.ensureRole(ctx, pool, role, password); err != nil {
		return catalog.SchemaState{}, fmt.Errorf("creating role: %w", err)
	}
	// A role is made NOBYPASSRLS unless said otherwise (and only a superuser
	// could). Routers of every replica share the role: its limit is the server's
	// budget, which they keep to themselves, not a tenant role's.
	if err := execAll(ctx, pool, []string{
		fmt.Sprintf("ALTER ROLE %s CONNECTION LIMIT %d", ident(role), srv.ConnBudget),
	}); err != nil {
		return catalog.SchemaState{}, fmt.Errorf("role limits: %w", err)
	}
	exists, err := databaseExists(ctx, pool, pd.Name)
	if err != nil {
		return catalog.SchemaState{}, err
	}
	if !exists {
		tpl, err := p.ensureTemplate(ctx, srv)
		if err != nil {
			return catalog.SchemaState{}, err
		}
		if _, err := pool.Exec(ctx, "CREATE DATABASE "+ident(pd.Name)+" TEMPLATE "+ident(tpl)); err != nil {
			return catalog.SchemaState{}, fmt.Errorf("creating database: %w", err)
		}
	}
	if err := execAll(ctx, pool, databaseAccess(pd.Name, role)); err != nil {
		return catalog.SchemaState{}, fmt.Errorf("database access: %w", err)
	}
	version, dirty, err := p.grantTables(ctx, srv.Name, pd.Name, role)
	if err != nil {
		return catalog.SchemaState{}, fmt.Errorf("granting the pool role: %w", err)
	}
	return catalog.SchemaState{Version: version, Dirty: dirty}, nil
}

// archivePooled keeps a pooled tenant's rows in ArchiveDir before they are
// deleted: one CSV file (with a header) per table, <slug>-<time>-<table>.csv,
// which COPY ... FROM ... (FORMAT csv, HEADER) loads back.
func (p *Provisioner) archivePooled(ctx context.Context, conn *pgx.Conn, t catalog.Tenant, tables []string) error {
	if err := os.MkdirAll(p.cfg.ArchiveDir, 0o700); err != nil {
		return err
	}
	stamp := time.Now().UTC().Format("20060102T150405Z")
	for _, table := range tables {
		path := filepath.Join(p.cfg.ArchiveDir, fmt.Sprintf("%s-%s-%s.csv", t.Slug, stamp, table))
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		// The tenant id is a UUID from the catalog; COPY takes no parameters.
		_, err = conn.PgConn().CopyTo(ctx, f, "COPY (SELECT * FROM "+ident(table)+" WHERE tenant_id = "+literal(t.ID)+") TO STDOUT WITH (FORMAT csv, HEADER)")
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("table %s: %w", table, err)
		}
	}
	p.logger.InfoContext(ctx, "pooled tenant's rows archived", "tenant", t.Slug, "tables", len(tables), "dir", p.cfg.ArchiveDir)
	return nil
}

// ErasePooledRows deletes a pooled tenant's rows from its pool database,
// keeping no archive: its erasure. It says how many rows it deleted (none
// the second time).
func (p *Provisioner) ErasePooledRows(ctx context.Context, t catalog.Tenant) (int64, error) {
	return p.deletePooledRows(ctx, t, false)
}

// dropPooledRows deletes a pooled tenant's rows from its pool database, as
// the admin role (which owns the tables and so sees every tenant's rows),
// in one transaction: its deletion after the grace period, archived first
// when ArchiveDir is set.
func (p *Provisioner) dropPooledRows(ctx context.Context, t catalog.Tenant) (int64, error) {
	return p.deletePooledRows(ctx, t, p.cfg.ArchiveDir != "")
}

func (p *Provisioner) deletePooledRows(ctx context.Context, t catalog.Tenant, archive bool) (int64, error) {
	conn, err := p.connectDB(ctx, t.Server, t.Pool)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tables, err := migrations.TenantTables(ctx, conn)
	if err != nil {
		return 0, err
	}
	if archive {
		if err := p.archivePooled(ctx, conn, t, tables); err != nil {
			return 0, fmt.Errorf("archiving before delete: %w", err)
		}
	}
	var n int64
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, table := range tables {
			tag, err := tx.Exec(ctx, "DELETE FROM "+ident(table)+" WHERE tenant_id = $1", t.ID)
			if err != nil {
				return fmt.Errorf("table %s: %w", table, err)
			}
			n += tag.RowsAffected()
		}
		return nil
	})
	return n, err
}
