package pgtest_test

import (
	"context"
	"fmt"
	"testing/fstest"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// ExampleCreateDB takes a database where there is no *testing.T to give
// NewDB, as in this Example: tests call pgtest.NewDB(t) instead, which drops
// the database when the test ends, or keeps it if the test failed.
func ExampleCreateDB() {
	ctx := context.Background()
	dsn, drop, err := pgtest.CreateDB(ctx)
	if err != nil {
		panic(err)
	}
	defer func() {
		if err := drop(); err != nil {
			panic(err)
		}
	}()

	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		panic(err)
	}
	defer conn.Close(ctx)
	var tables int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables); err != nil {
		panic(err)
	}
	fmt.Println("tables in the new database:", tables)
	// Output: tables in the new database: 0
}

// ExampleWithTemplate migrates a template database once; every database asked
// for with it after that is a clone, made in milliseconds, that the test may
// change as it likes. A test passes the same option to NewDB:
//
//	dsn := pgtest.NewDB(t, template)
func ExampleWithTemplate() {
	ctx := context.Background()
	migrations := fstest.MapFS{
		"1_widgets.sql": {Data: []byte("CREATE TABLE widgets (id int PRIMARY KEY); INSERT INTO widgets VALUES (1), (2);")},
	}
	migrate := func(ctx context.Context, dsn string) error {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, string(migrations["1_widgets.sql"].Data))
		return err
	}
	// The name carries a hash of the migrations, so that a server that
	// outlives the process (TENANTPLANE_TEST_DATABASE_URL) never hands out a
	// template of older ones.
	template := pgtest.WithTemplate("example_widgets_"+pgtest.HashFS(migrations), migrate)

	for range 2 {
		dsn, drop, err := pgtest.CreateDB(ctx, template)
		if err != nil {
			panic(err)
		}
		widgets, err := addWidget(ctx, dsn)
		if err != nil {
			panic(err)
		}
		fmt.Println("widgets after adding one:", widgets) // the clones do not share the rows
		if err := drop(); err != nil {
			panic(err)
		}
	}
	// Output:
	// widgets after adding one: 3
	// widgets after adding one: 3
}

func addWidget(ctx context.Context, dsn string) (widgets int, err error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "INSERT INTO widgets VALUES (3)"); err != nil {
		return 0, err
	}
	err = conn.QueryRow(ctx, "SELECT count(*) FROM widgets").Scan(&widgets)
	return widgets, err
}

// ExampleHashFS names a template after the migrations it is made of: the
// name changes whenever a file does.
func ExampleHashFS() {
	v1 := fstest.MapFS{"1_widgets.up.sql": {Data: []byte("CREATE TABLE widgets (id int);")}}
	v2 := fstest.MapFS{"1_widgets.up.sql": {Data: []byte("CREATE TABLE widgets (id bigint);")}}
	fmt.Println("tenant_" + pgtest.HashFS(v1))
	fmt.Println("tenant_" + pgtest.HashFS(v2))
	// Output:
	// tenant_2d97e14858108db2
	// tenant_0c6254248e6f96e6
}
