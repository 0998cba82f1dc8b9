package provisioner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// SchemaLimits bound each tenant migration so one locked or slow tenant
// database cannot stall the rest.
type SchemaLimits struct {
	// LockTimeout is Postgres's lock_timeout for the migration. Default 5s.
	LockTimeout time.Duration
	// StatementTimeout is Postgres's statement_timeout for the migration. Default 5 minutes.
	StatementTimeout time.Duration
}

// ErrDirty says a tenant database's schema is dirty: a migration failed
// mid-way. It is never forced silently.
type ErrDirty struct {
	Version uint
}

func (e ErrDirty) Error() string {
	return fmt.Sprintf("schema is dirty at version %d: a migration failed mid-way; fix the database, then force the version", e.Version)
}

// readSchemaVersion reads golang-migrate's version and dirty flag from a
// tenant database (0, false when it has none).
func readSchemaVersion(ctx context.Context, conn *pgx.Conn) (version int64, dirty bool, err error) {
	err = conn.QueryRow(ctx, `SELECT version, dirty FROM schema_migrations LIMIT 1`).Scan(&version, &dirty)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	return version, dirty, err
}
