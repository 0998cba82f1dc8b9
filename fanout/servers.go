package fanout

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/catalog"
)

// connConfig is the configuration of a connection to one database of a
// server as its admin role, named app in pg_stat_activity.
func (s *Service) connConfig(ctx context.Context, serverName, database, app string) (*pgx.ConnConfig, error) {
	dsn, err := s.db.ServerDSN(ctx, serverName)
	if err != nil {
		return nil, err
	}
	pcfg, err := catalog.ServerConfig(dsn)
	if err != nil {
		return nil, catalog.Errorf(catalog.CodeInvalid, "server %q has a malformed DSN", serverName)
	}
	cfg := pcfg.ConnConfig
	if database != "" {
		cfg.Database = database
	}
	cfg.ConnectTimeout = s.cfg.ConnectTimeout
	cfg.RuntimeParams["application_name"] = app
	return cfg, nil
}
