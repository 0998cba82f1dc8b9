package pgtest

import (
	"context"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const (
	// ManagedRole is the role ManagedDSN connects as: LOGIN CREATEDB
	// CREATEROLE and nothing more, the most a managed PostgreSQL (RDS, Cloud
	// SQL, Azure, Crunchy Bridge) gives its customers.
	ManagedRole     = "tpadmin"
	managedPassword = "tpadmin"
)

// ManagedDSN returns a URL connecting to database as ManagedRole, creating
// the role on first use. It is the DSN tests register tenant servers with, so
// that the suite runs as users do; DSN (the superuser) is for tests that must
// inspect or break what a managed role cannot.
func (s *Server) ManagedDSN(t testing.TB, database string) string {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.managed {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := s.withConn(ctx, func(c *pgx.Conn) error {
			_, err := c.Exec(ctx, "CREATE ROLE "+ident(ManagedRole)+" LOGIN CREATEDB CREATEROLE PASSWORD '"+managedPassword+"'")
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && (pgErr.Code == "42710" || pgErr.Code == "23505") { // made already (by an earlier process, or concurrently)
				return nil
			}
			return err
		})
		if err != nil {
			t.Fatalf("pgtest: creating the managed role %s on the %s server: %v", ManagedRole, s.label, err)
		}
		s.managed = true
	}
	u, err := url.Parse(s.DSN(database))
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	u.User = url.UserPassword(ManagedRole, managedPassword)
	return u.String()
}
