package catalog

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/golang-migrate/migrate/v4"
	pgxmigrate "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migrations returns the catalog's embedded golang-migrate files.
func Migrations() fs.FS {
	sub, _ := fs.Sub(migrationFiles, "migrations")
	return sub
}

// Migrate brings the catalog database at dsn to the newest schema. It is safe
// to call from several processes at once: golang-migrate holds a Postgres
// advisory lock while it works, and a process that finds nothing to do returns nil.
func Migrate(ctx context.Context, dsn string) error {
	return withMigrator(ctx, dsn, func(m *migrate.Migrate) error { return m.Up() })
}

// MigrateDown reverts every catalog migration. It exists for tests and for
// tearing a catalog down by hand; serve never calls it.
func MigrateDown(ctx context.Context, dsn string) error {
	return withMigrator(ctx, dsn, func(m *migrate.Migrate) error { return m.Down() })
}

// SchemaVersion returns the catalog schema version and whether a migration failed mid-way.
func SchemaVersion(ctx context.Context, dsn string) (version uint, dirty bool, err error) {
	err = withMigrator(ctx, dsn, func(m *migrate.Migrate) error {
		version, dirty, err = m.Version()
		if errors.Is(err, migrate.ErrNilVersion) {
			return nil
		}
		return err
	})
	return version, dirty, err
}

func withMigrator(ctx context.Context, dsn string, fn func(*migrate.Migrate) error) (err error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return WrapError(CodeInvalid, err, "catalog DSN is malformed")
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	if err := db.PingContext(ctx); err != nil {
		return Classify(err, "catalog database")
	}
	driver, err := pgxmigrate.WithInstance(db, &pgxmigrate.Config{StatementTimeout: 5 * time.Minute})
	if err != nil {
		return fmt.Errorf("catalog migrations: %w", err)
	}
	src, err := iofs.New(migrationFiles, "migrations")
	if err != nil {
		return fmt.Errorf("catalog migrations: %w", err)
	}
	m, err := migrate.NewWithInstance("iofs", src, "pgx5", driver)
	if err != nil {
		return fmt.Errorf("catalog migrations: %w", err)
	}
	m.LockTimeout = time.Minute
	defer m.Close()

	// golang-migrate takes no context; stop it between migrations when ctx ends.
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			m.GracefulStop <- true
		case <-done:
		}
	}()

	if err := fn(m); err != nil && !errors.Is(err, migrate.ErrNoChange) {
		var dirty migrate.ErrDirty
		if errors.As(err, &dirty) {
			return fmt.Errorf("catalog schema is dirty at version %d: a migration failed mid-way; fix it by hand, then force the version", dirty.Version)
		}
		return fmt.Errorf("catalog migrations: %w", err)
	}
	return nil
}
