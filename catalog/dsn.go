package catalog

import (
	"net"
	"net/url"
	"strconv"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ServerConfig turns a tenant server's admin DSN into a pool configuration
// (its ConnConfig is the one to use for a single connection). It is the one
// place that parses server DSNs: a malformed one is a CodeInvalid error
// whose message never echoes the DSN, which may hold a password.
func ServerConfig(dsn string) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, Errorf(CodeInvalid, "dsn is not a valid PostgreSQL connection string")
	}
	return cfg, nil
}

// RedactDSN returns a form of dsn that names the server, the user and the
// database but never the password: postgres://user@host:port/db. It accepts
// both URL and key=value DSNs, and rejects a malformed one.
func RedactDSN(dsn string) (string, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		// pgconn's message can echo the DSN, password included: do not pass it on.
		return "", Errorf(CodeInvalid, "dsn is not a valid PostgreSQL connection string")
	}
	u := url.URL{
		Scheme: "postgres",
		User:   url.User(cfg.User),
		Host:   net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))),
		Path:   "/" + cfg.Database,
	}
	return u.String(), nil
}
