package provisioner

import (
	"context"
	"fmt"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/migrations"
)

// PrepareTarget makes tenant t's role (its name, the password the catalog
// holds, the limits of roleSettings) and an empty database of its name on
// server, migrated to version with the tenant migrations and with the
// role's grants on its rows: the same least-privilege layout as a
// provisioned tenant's, at the tenant's own version rather than the
// newest. Every step is idempotent. It is the mover's Targets.
func (p *Provisioner) PrepareTarget(ctx context.Context, t catalog.Tenant, server catalog.Server, version int64) error {
	pool, err := p.admin(ctx, server.ID, server.Name)
	if err != nil {
		return err
	}
	_, password, err := p.store.TenantCredentials(ctx, t.ID)
	if err != nil {
		return err
	}
	if err := p.ensureRole(ctx, pool, t.Role, password); err != nil {
		return fmt.Errorf("server %s: creating role: %s", server.Name, catalog.DescribeServerError(err))
	}
	exists, err := databaseExists(ctx, pool, t.Database)
	if err != nil {
		return fmt.Errorf("server %s: %s", server.Name, catalog.DescribeServerError(err))
	}
	if !exists {
		// Not the server's template: that is at the newest version, and the
		// tenant may be behind it (mid fan-out).
		if _, err := pool.Exec(ctx, "CREATE DATABASE "+ident(t.Database)+" TEMPLATE template0"); err != nil {
			return fmt.Errorf("server %s: creating database: %s", server.Name, catalog.DescribeServerError(err))
		}
	}
	if err := execAll(ctx, pool, databaseAccess(t.Database, t.Role)); err != nil {
		return fmt.Errorf("server %s: database access: %s", server.Name, catalog.DescribeServerError(err))
	}
	if version > 0 {
		cfg, err := p.dbConfig(ctx, server.Name, t.Database, "tenantplane-mover")
		if err != nil {
			return err
		}
		if _, err := migrations.Migrate(ctx, cfg, p.schema, uint(version), migrations.Limits{}); err != nil {
			return fmt.Errorf("server %s: migrating to version %d: %w", server.Name, version, err)
		}
	}
	if _, _, err := p.grantTables(ctx, server.Name, t.Database, t.Role); err != nil {
		return fmt.Errorf("server %s: granting the tenant role: %s", server.Name, catalog.DescribeServerError(err))
	}
	return nil
}

// DropDatabase drops tenant t's database (WITH FORCE) and role on server, if
// they exist: a move's aborted target, or its source once the keep is over.
func (p *Provisioner) DropDatabase(ctx context.Context, t catalog.Tenant, server catalog.Server) error {
	pool, err := p.admin(ctx, server.ID, server.Name)
	if err != nil {
		return err
	}
	for _, s := range []string{
		"DROP DATABASE IF EXISTS " + ident(t.Database) + " WITH (FORCE)",
		"DROP ROLE IF EXISTS " + ident(t.Role),
	} {
		if _, err := pool.Exec(ctx, s); err != nil {
			return fmt.Errorf("server %s: %s", server.Name, catalog.DescribeServerError(err))
		}
	}
	return nil
}
