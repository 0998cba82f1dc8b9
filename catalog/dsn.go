package catalog

import (
	"net"
	"net/url"
	"strconv"

	"github.com/jackc/pgx/v5/pgconn"
)

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
