package pgtest_test

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/internal/pgtest"
)

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := conn.Exec(ctx, sql, args...)
	require.NoError(t, err)
}

func queryInt(t *testing.T, conn *pgx.Conn, sql string, args ...any) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n int
	require.NoError(t, conn.QueryRow(ctx, sql, args...).Scan(&n))
	return n
}

func TestNewDBGivesDistinctWritableDatabases(t *testing.T) {
	t.Parallel()
	dsn1, dsn2 := pgtest.NewDB(t), pgtest.NewDB(t)
	require.NotEqual(t, dsn1, dsn2)
	c1, c2 := connect(t, dsn1), connect(t, dsn2)

	exec(t, c1, "CREATE TABLE things (id int PRIMARY KEY)")
	exec(t, c1, "INSERT INTO things VALUES (1), (2)")
	require.Equal(t, 2, queryInt(t, c1, "SELECT count(*) FROM things"))
	require.Zero(t, queryInt(t, c2, "SELECT count(*) FROM pg_tables WHERE tablename = 'things'"))
	exec(t, c2, "CREATE TABLE things (id int PRIMARY KEY)")
	exec(t, c2, "INSERT INTO things VALUES (7)")
	require.Equal(t, 1, queryInt(t, c2, "SELECT count(*) FROM things"))
}

func TestWithTemplateClonesSetup(t *testing.T) {
	t.Parallel()
	migrations := fstest.MapFS{"001_widgets.up.sql": {Data: []byte(
		fmt.Sprintf("CREATE TABLE widgets (id int PRIMARY KEY); INSERT INTO widgets VALUES (1), (2), (3); -- %d", time.Now().UnixNano()),
	)}}
	var setups atomic.Int32
	setup := func(ctx context.Context, dsn string) error {
		setups.Add(1)
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, string(migrations["001_widgets.up.sql"].Data))
		return err
	}
	tmpl := pgtest.WithTemplate("pgtest_selftest_"+pgtest.HashFS(migrations), setup)

	for i := range 4 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			began := time.Now()
			dsn := pgtest.NewDB(t, tmpl)
			t.Logf("NewDB with template: %s", time.Since(began))
			conn := connect(t, dsn)
			require.Equal(t, 3, queryInt(t, conn, "SELECT count(*) FROM widgets"))
			exec(t, conn, "INSERT INTO widgets VALUES (4)") // clones are independent
			require.Equal(t, 4, queryInt(t, conn, "SELECT count(*) FROM widgets"))
		})
	}
	t.Cleanup(func() { require.Equal(t, int32(1), setups.Load()) })
}

func TestWithTemplateSetupError(t *testing.T) {
	t.Parallel()
	s := pgtest.NewServer(t)
	calls := 0
	failing := func(ctx context.Context, dsn string) error { calls++; return fmt.Errorf("boom") }
	// NewDB t.Fatals on a failed setup; run it in a fake TB to see that.
	ft := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.NewDB(ft, pgtest.WithTemplate("broken", failing))
	}()
	<-done
	require.True(t, ft.fatal)
	require.Equal(t, 1, calls)
	conn := connect(t, s.DSN("postgres"))
	require.Zero(t, queryInt(t, conn, "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgtest_tmpl_%' OR datname = 'broken'"))
}

// fakeTB records Fatal instead of ending the test.
type fakeTB struct {
	testing.TB
	fatal bool
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal = true
	f.TB.Logf("(expected) "+format, args...)
	runtime.Goexit()
}

func TestNewServerIsIndependent(t *testing.T) {
	t.Parallel()
	shared := pgtest.Shared(t)
	s := pgtest.NewServer(t)
	require.NotEqual(t, shared.Port(), s.Port())
	require.Equal(t, "127.0.0.1", s.Host())

	dsn := s.NewDB(t)
	exec(t, connect(t, dsn), "CREATE TABLE only_here (id int)")
	var name string
	conn := connect(t, dsn)
	require.NoError(t, conn.QueryRow(context.Background(), "SELECT current_database()").Scan(&name))
	require.Zero(t, queryInt(t, connect(t, shared.DSN("postgres")), "SELECT count(*) FROM pg_database WHERE datname = $1", name))
}

func TestStopAndStartServer(t *testing.T) {
	t.Parallel()
	s := pgtest.NewServer(t)
	port := s.Port()
	dsn := s.NewDB(t)
	conn := connect(t, dsn)
	exec(t, conn, "CREATE TABLE kept (v text)")
	exec(t, conn, "INSERT INTO kept VALUES ('before stop')")
	conn.Close(context.Background())

	s.Stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := pgx.Connect(ctx, dsn)
	require.Error(t, err)

	began := time.Now()
	s.Start(t)
	t.Logf("restart took %s", time.Since(began))
	require.Equal(t, port, s.Port())
	require.Equal(t, 1, queryInt(t, connect(t, dsn), "SELECT count(*) FROM kept"))
}

func TestHashFS(t *testing.T) {
	t.Parallel()
	a := fstest.MapFS{"1.sql": {Data: []byte("x")}, "dir/2.sql": {Data: []byte("y")}}
	require.Len(t, pgtest.HashFS(a), 16)
	require.Equal(t, pgtest.HashFS(a), pgtest.HashFS(fstest.MapFS{"dir/2.sql": {Data: []byte("y")}, "1.sql": {Data: []byte("x")}}))
	require.NotEqual(t, pgtest.HashFS(a), pgtest.HashFS(fstest.MapFS{"1.sql": {Data: []byte("x")}, "dir/2.sql": {Data: []byte("z")}}))
	require.NotEqual(t, pgtest.HashFS(a), pgtest.HashFS(fstest.MapFS{"1.sql": {Data: []byte("x")}, "dir/3.sql": {Data: []byte("y")}}))
	require.NotEqual(t, pgtest.HashFS(fstest.MapFS{"a": {Data: []byte("bc")}}), pgtest.HashFS(fstest.MapFS{"ab": {Data: []byte("c")}}))
}
