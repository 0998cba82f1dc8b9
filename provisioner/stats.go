package provisioner

import (
	"context"

	"github.com/tenantplane/tenantplane/catalog"
)

// ServerStats is a live reading of one server, for the operator's view of
// the fleet.
type ServerStats struct {
	// Connections open to the server's tenant databases, every client's.
	Connections int
	// WarmEntries are the warm pool's ready databases of the current schema.
	WarmEntries int
}

// ServerStats reads srv's connections to tenant databases and its warm pool
// entries, through the server's admin pool. It takes as long as the server
// does: bound ctx.
func (p *Provisioner) ServerStats(ctx context.Context, srv catalog.Server) (ServerStats, error) {
	pool, err := p.admin(ctx, srv.ID, srv.Name)
	if err != nil {
		return ServerStats{}, err
	}
	var st ServerStats
	err = pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM pg_stat_activity WHERE starts_with(datname, 't_')),
		       (SELECT count(*) FROM pg_database WHERE starts_with(datname, $1))`,
		p.warmPattern()).Scan(&st.Connections, &st.WarmEntries)
	if err != nil {
		return ServerStats{}, catalog.WrapError(catalog.CodeUnavailable, err, "server %q: %s", srv.Name, catalog.DescribeServerError(err))
	}
	return st, nil
}
