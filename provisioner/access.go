package provisioner

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tenantplane/tenantplane/catalog"
)

// accessLayout is the ownership and grant layout this version gives tenant
// databases (the catalog's tenants.access_layout): the database, its schema
// and its tables belong to the server's admin role; the tenant role may
// connect to its own database and read and write the rows of its tables,
// and nothing else. Layout 1, before it, made the tenant role the database's
// owner, which on PostgreSQL 15 also gave it schema public.
const accessLayout = 2

// convertAccess brings a server's tenant databases made under an older
// layout to accessLayout, recording each in the catalog with an audit event.
// It runs once per server when a process starts (from the refill loop), and
// again on its next start if a tenant could not be converted. Every
// statement is idempotent, so two replicas converting at once, or a process
// killed halfway, leave the same result; the catalog row is set last and
// only once. It returns how many tenants it converted.
func (p *Provisioner) convertAccess(ctx context.Context, srv catalog.Server) (int, error) {
	tenants, err := p.store.TenantsBelowAccessLayout(ctx, srv.ID, accessLayout)
	if err != nil || len(tenants) == 0 {
		return 0, err
	}
	pool, err := p.admin(ctx, srv.ID, srv.Name)
	if err != nil {
		return 0, err
	}
	super, err := isSuperuser(ctx, pool)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, t := range tenants {
		if err := p.convertTenantAccess(ctx, srv, pool, t, super); err != nil {
			return n, fmt.Errorf("tenant %s: %s", t.Slug, catalog.DescribeServerError(err))
		}
		changed, err := p.store.SetTenantAccessLayout(ctx, t.ID, accessLayout, "provisioner")
		if err != nil {
			return n, err
		}
		if changed {
			n++
		}
	}
	return n, nil
}

// convertTenantAccess takes back from the tenant role what an older layout
// gave it: the database and anything it created inside (REASSIGN OWNED, run
// in the database, covers both), TEMPORARY, and every grant beyond its rows.
func (p *Provisioner) convertTenantAccess(ctx context.Context, srv catalog.Server, pool *pgxpool.Pool, t catalog.Tenant, super bool) error {
	exists, err := databaseExists(ctx, pool, t.Database)
	if err != nil || !exists {
		return err // nothing to convert: a failed tenant that never got one
	}
	if !super {
		// A member of the owner may reassign what it owns.
		if err := execAll(ctx, pool, []string{fmt.Sprintf("GRANT %s TO CURRENT_USER", ident(t.Role))}); err != nil && !isDuplicate(err) {
			return err
		}
	}
	conn, err := p.connectDB(ctx, srv.Name, t.Database)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := execAll(ctx, conn, []string{"REASSIGN OWNED BY " + ident(t.Role) + " TO CURRENT_USER"}); err != nil {
		return err
	}
	if err := execAll(ctx, pool, databaseAccess(t.Database, t.Role)); err != nil {
		return err
	}
	_, _, err = p.grantTables(ctx, srv.Name, t.Database, t.Role)
	return err
}
