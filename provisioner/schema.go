package provisioner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/golang-migrate/migrate/v4"
	pgxmigrate "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/tenantplane/tenantplane/catalog"
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

// migrateDB takes one database of a server to version target (up or down)
// with golang-migrate, as the server's admin role. It returns the version the
// database is at afterwards.
func (p *Provisioner) migrateDB(ctx context.Context, serverName, database string, target uint, limits SchemaLimits) (version uint, dirty bool, err error) {
	if limits.LockTimeout == 0 {
		limits.LockTimeout = 5 * time.Second
	}
	if limits.StatementTimeout == 0 {
		limits.StatementTimeout = 5 * time.Minute
	}
	dsn, err := p.store.ServerDSN(ctx, serverName)
	if err != nil {
		return 0, false, err
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return 0, false, catalog.Errorf(catalog.CodeInvalid, "server %q has a malformed DSN", serverName)
	}
	cfg.Database = database
	cfg.ConnectTimeout = p.cfg.ConnectTimeout
	cfg.RuntimeParams["application_name"] = "tenantplane-migrate"
	cfg.RuntimeParams["lock_timeout"] = fmt.Sprint(limits.LockTimeout.Milliseconds())
	cfg.RuntimeParams["statement_timeout"] = fmt.Sprint(limits.StatementTimeout.Milliseconds())
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	db.SetMaxOpenConns(2) // golang-migrate holds one for its lock and one to run
	if err := db.PingContext(ctx); err != nil {
		return 0, false, fmt.Errorf("connecting to %s on %s: %s", database, serverName, connectReason(err))
	}
	driver, err := pgxmigrate.WithInstance(db, &pgxmigrate.Config{})
	if err != nil {
		return 0, false, fmt.Errorf("migrate driver: %w", err)
	}
	src, err := iofs.New(p.schema.FS(), ".")
	if err != nil {
		return 0, false, fmt.Errorf("tenant migrations: %w", err)
	}
	m, err := migrate.NewWithInstance("iofs", src, "pgx5", driver)
	if err != nil {
		return 0, false, fmt.Errorf("migrate: %w", err)
	}
	defer m.Close()
	m.LockTimeout = limits.LockTimeout + 10*time.Second

	// golang-migrate takes no context; ask it to stop between migrations.
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			m.GracefulStop <- true
		case <-done:
		}
	}()

	if target == 0 {
		err = m.Down()
	} else {
		err = m.Migrate(target)
	}
	if err != nil && !errors.Is(err, migrate.ErrNoChange) {
		var d migrate.ErrDirty
		if errors.As(err, &d) {
			return uint(d.Version), true, ErrDirty{Version: uint(d.Version)}
		}
		v, dirty, verr := m.Version()
		if verr != nil && !errors.Is(verr, migrate.ErrNilVersion) {
			return 0, false, err
		}
		return v, dirty, err
	}
	v, dirty, err := m.Version()
	if errors.Is(err, migrate.ErrNilVersion) {
		return 0, false, nil
	}
	return v, dirty, err
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
