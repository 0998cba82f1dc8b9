package fanout

import (
	"context"
	"errors"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

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

// describe says what went wrong on a server in words for an operator.
func describe(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Message
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return "cannot connect: " + connectReason(err)
	}
	return err.Error()
}

// connectReason says in a few words why a connection to a server failed,
// without the DSN.
func connectReason(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "28P01", "28000":
			return "authentication failed"
		case "3D000":
			return "database does not exist"
		}
		return pgErr.Message
	}
	var netErr net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timed out"
	case strings.Contains(err.Error(), "connection refused"):
		return "connection refused"
	}
	return "unreachable"
}
