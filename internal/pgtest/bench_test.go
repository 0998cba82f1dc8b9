package pgtest_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// BenchmarkNewDB measures a database per test: cloned from a template (after
// the first iteration, which sets the template up) and empty.
func BenchmarkNewDB(b *testing.B) {
	setup := func(ctx context.Context, dsn string) error {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, `CREATE TABLE widgets (id bigint PRIMARY KEY, name text NOT NULL);
			CREATE INDEX ON widgets (name);
			INSERT INTO widgets SELECT i, 'w' || i FROM generate_series(1, 1000) i`)
		return err
	}
	b.Run("template", func(b *testing.B) {
		tmpl := pgtest.WithTemplate("pgtest_bench_v1", setup)
		pgtest.NewDB(b, tmpl) // set the template up outside the measurement
		for b.Loop() {
			pgtest.NewDB(b, tmpl)
		}
	})
	b.Run("empty", func(b *testing.B) {
		for b.Loop() {
			pgtest.NewDB(b)
		}
	})
}
