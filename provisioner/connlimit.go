package provisioner

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/catalog"
)

// syncConnLimits gives every tenant role on a server, warm ones included,
// the configured CONNECTION LIMIT, so a changed TENANTPLANE_TENANT_CONN_LIMIT
// reaches the roles made before the change, not only new ones. When nothing
// differs it is one query. It returns how many roles it changed.
func (p *Provisioner) syncConnLimits(ctx context.Context, srv catalog.Server) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pool, err := p.admin(ctx, srv.ID, srv.Name)
	if err != nil {
		return 0, err
	}
	rows, err := pool.Query(ctx, `SELECT rolname FROM pg_roles
		WHERE (rolname ~ $1 OR starts_with(rolname, $2)) AND rolconnlimit <> $3`,
		tenantNameRE.String(), warmPrefix, p.cfg.TenantConnLimit)
	if err != nil {
		return 0, err
	}
	roles, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, err
	}
	for i, role := range roles {
		if _, err := pool.Exec(ctx, fmt.Sprintf("ALTER ROLE %s CONNECTION LIMIT %d", ident(role), p.cfg.TenantConnLimit)); err != nil {
			return i, fmt.Errorf("role %s: %w", role, err)
		}
	}
	return len(roles), nil
}
