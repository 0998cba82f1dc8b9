package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const (
	// newDBTimeout bounds NewDB, including a template's setup.
	newDBTimeout = 2 * time.Minute
	// dropTimeout bounds the DROP DATABASE when a test ends.
	dropTimeout = 30 * time.Second
	// maxIdentifier is PostgreSQL's NAMEDATALEN-1: longer names are truncated.
	maxIdentifier = 63
)

// Option configures NewDB.
type Option func(*dbOptions)

type dbOptions struct {
	template *templateSpec
}

type templateSpec struct {
	name  string
	setup func(ctx context.Context, dsn string) error
}

// templateState serializes the setup of one template on one server.
type templateState struct {
	sem   chan struct{} // capacity 1: held while checking or building
	ready bool          // guarded by sem
}

// WithTemplate makes the new database a clone (CREATE DATABASE ... TEMPLATE)
// of the template database name, which is made once per server and process by
// running setup (migrations, fixtures) against a new database; tests asking
// for it meanwhile wait for that one setup. If the server already has a
// database called name (an external server, from an earlier run), it is
// reused as is, so name should include a hash of what setup does (HashFS of
// the migrations) whenever the server outlives the process.
//
// The template must have no open connections after setup; connections setup
// leaves open are terminated. The template then refuses connections, so that
// nothing can block its cloning.
func WithTemplate(name string, setup func(ctx context.Context, dsn string) error) Option {
	return func(o *dbOptions) { o.template = &templateSpec{name: name, setup: setup} }
}

// NewDB creates a database with a unique name on the shared server and
// returns its DSN: Shared(t).NewDB(t, opts...).
func NewDB(t testing.TB, opts ...Option) string {
	t.Helper()
	return Shared(t).NewDB(t, opts...)
}

// NewDB creates a database with a unique name (from the test's name) and
// returns a superuser DSN for it. The database is dropped when the test ends,
// unless the test failed: then it is kept, and its DSN logged, for inspection.
func (s *Server) NewDB(t testing.TB, opts ...Option) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), newDBTimeout)
	defer cancel()
	name, dsn, err := s.createDB(ctx, t.Name(), t.Logf, opts...)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() { s.dropDB(t, name, dsn) })
	return dsn
}

// CreateDB is NewDB for code that has no testing.TB, an Example function
// above all: it creates a database on the shared server and returns its DSN,
// and drop, which removes it. Like NewDB, it needs Main in TestMain (or
// TENANTPLANE_TEST_DATABASE_URL); unlike NewDB, it returns its errors, logs
// nothing, and keeps nothing for inspection: what drop does not remove goes
// away with the shared cluster when the tests end.
func CreateDB(ctx context.Context, opts ...Option) (dsn string, drop func() error, err error) {
	s, err := sharedServerFor(func(string, ...any) {})
	if err != nil {
		return "", nil, fmt.Errorf("pgtest: shared server: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, newDBTimeout)
	defer cancel()
	name, dsn, err := s.createDB(ctx, "example", func(string, ...any) {}, opts...)
	if err != nil {
		return "", nil, fmt.Errorf("pgtest: %w", err)
	}
	drop = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), dropTimeout)
		defer cancel()
		if err := s.exec(ctx, "DROP DATABASE IF EXISTS "+ident(name)+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("pgtest: drop database %s: %w", name, err)
		}
		return nil
	}
	return dsn, drop, nil
}

// createDB creates a database named after hint, a clone of the template
// opts name if any; logf tells of a template's setup.
func (s *Server) createDB(ctx context.Context, hint string, logf func(format string, args ...any), opts ...Option) (name, dsn string, err error) {
	var o dbOptions
	for _, opt := range opts {
		opt(&o)
	}
	name = uniqueName("t_", hint)
	create := "CREATE DATABASE " + ident(name)
	if spec := o.template; spec != nil {
		if spec.name == "" || len(spec.name) > maxIdentifier || spec.setup == nil {
			return "", "", fmt.Errorf("WithTemplate(%q): need a name of 1 to %d bytes and a setup function", spec.name, maxIdentifier)
		}
		if err := s.ensureTemplate(ctx, logf, spec); err != nil {
			return "", "", fmt.Errorf("template %s on %s: %w", spec.name, s.hostPort(), err)
		}
		create += " TEMPLATE " + ident(spec.name)
	}
	strategy, err := s.createStrategy(ctx)
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", s.hostPort(), err)
	}
	create += strategy
	if err := s.exec(ctx, create); err != nil {
		return "", "", fmt.Errorf("%s on %s: %w", create, s.hostPort(), err)
	}
	return name, s.DSN(name), nil
}

func (s *Server) dropDB(t testing.TB, name, dsn string) {
	if t.Failed() {
		hint := ""
		if s.cluster != nil && !keepOnFailure() {
			hint = fmt.Sprintf(" (its cluster is removed when the tests end; set %s=1 to keep it running)", EnvKeep)
		}
		t.Logf("pgtest: kept the database of the failed test: %s%s", dsn, hint)
		return
	}
	if s.isStopped() {
		return // the test stopped its NewServer; the whole cluster goes away
	}
	ctx, cancel := context.WithTimeout(context.Background(), dropTimeout)
	defer cancel()
	if err := s.exec(ctx, "DROP DATABASE IF EXISTS "+ident(name)+" WITH (FORCE)"); err != nil {
		t.Errorf("pgtest: drop database %s: %v", name, err)
	}
}

// ensureTemplate makes sure the template exists, building it at most once per
// server and process at a time.
func (s *Server) ensureTemplate(ctx context.Context, logf func(format string, args ...any), spec *templateSpec) error {
	s.mu.Lock()
	st := s.templates[spec.name]
	if st == nil {
		st = &templateState{sem: make(chan struct{}, 1)}
		s.templates[spec.name] = st
	}
	s.mu.Unlock()

	select {
	case st.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("waiting for another test's setup of it: %w", ctx.Err())
	}
	defer func() { <-st.sem }()
	if st.ready {
		return nil
	}
	if err := s.buildTemplate(ctx, logf, spec); err != nil {
		return err
	}
	st.ready = true
	return nil
}

// buildTemplate runs setup against a scratch database and renames it to the
// template's name when setup succeeded, so that a template never exists
// half-made, even on an external server shared by several processes.
func (s *Server) buildTemplate(ctx context.Context, logf func(format string, args ...any), spec *templateSpec) error {
	var exists bool
	err := s.withConn(ctx, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", spec.name).Scan(&exists)
	})
	if err != nil || exists {
		return err
	}

	began := time.Now()
	scratch := uniqueName("pgtest_tmpl_", "")
	strategy, err := s.createStrategy(ctx)
	if err != nil {
		return err
	}
	if err := s.exec(ctx, "CREATE DATABASE "+ident(scratch)+strategy); err != nil {
		return err
	}
	if err := spec.setup(ctx, s.DSN(scratch)); err != nil {
		s.dropQuietly(scratch)
		return fmt.Errorf("setup: %w", err)
	}
	return s.withConn(ctx, func(conn *pgx.Conn) error {
		var leftover int
		err := conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE datname = $1 AND pid <> pg_backend_pid()`, scratch).Scan(&leftover)
		if err != nil {
			return err
		}
		if leftover > 0 {
			logf("pgtest: template %s: setup left %d connection(s) open; terminated them", spec.name, leftover)
		}
		// RENAME waits (5 s) for terminated backends to exit.
		_, err = conn.Exec(ctx, "ALTER DATABASE "+ident(scratch)+" RENAME TO "+ident(spec.name))
		if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database
			s.dropQuietly(scratch) // another process made it meanwhile: use theirs
			return nil
		}
		if err != nil {
			s.dropQuietly(scratch)
			return err
		}
		if _, err := conn.Exec(ctx, "ALTER DATABASE "+ident(spec.name)+" WITH ALLOW_CONNECTIONS false IS_TEMPLATE true"); err != nil {
			return err
		}
		logf("pgtest: template %s set up on %s in %s", spec.name, s.hostPort(), time.Since(began).Round(time.Millisecond))
		return nil
	})
}

// createStrategy is the CREATE DATABASE clause that makes it fastest here.
// PostgreSQL 15 copies a template through the WAL by default (STRATEGY
// WAL_LOG), page by page; copying its files instead (FILE_COPY) costs two
// checkpoints, which are cheap with fsync off and small databases: 14 ms
// against 25-35 ms for a small template on a harness cluster in tmpfs.
func (s *Server) createStrategy(ctx context.Context) (string, error) {
	s.mu.Lock()
	known, strategy := s.strategyKnown, s.strategy
	s.mu.Unlock()
	if known {
		return strategy, nil
	}
	var version int
	err := s.withConn(ctx, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version)
	})
	if err != nil {
		return "", err
	}
	if version >= 150000 {
		strategy = " STRATEGY FILE_COPY"
	}
	s.mu.Lock()
	s.strategyKnown, s.strategy = true, strategy
	s.mu.Unlock()
	return strategy, nil
}

func (s *Server) dropQuietly(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), dropTimeout)
	defer cancel()
	_ = s.exec(ctx, "DROP DATABASE IF EXISTS "+ident(name)+" WITH (FORCE)")
}

func (s *Server) exec(ctx context.Context, sql string) error {
	return s.withConn(ctx, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, sql)
		return err
	})
}

// withConn runs fn on a new connection to the admin database. A connection per
// call rather than a pool: servers stop and start under the tests' feet.
func (s *Server) withConn(ctx context.Context, fn func(*pgx.Conn) error) error {
	conn, err := pgx.Connect(ctx, s.adminDSN)
	if err != nil {
		return err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn.Close(closeCtx)
	}()
	return fn(conn)
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// uniqueName builds a database name from prefix, a readable part of hint (the
// test's name) and random hex, within PostgreSQL's identifier length.
func uniqueName(prefix, hint string) string {
	var b strings.Builder
	b.WriteString(prefix)
	lastUnderscore := true
	for _, r := range strings.ToLower(hint) {
		if b.Len() >= 40 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			lastUnderscore = false
		} else if !lastUnderscore {
			b.WriteByte('_')
			lastUnderscore = true
		}
	}
	if !lastUnderscore {
		b.WriteByte('_')
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:]) // never fails
	b.WriteString(hex.EncodeToString(rnd[:]))
	return b.String()
}

// HashFS returns a short hex hash of the names and contents of all files in
// fsys, for template names that change when the migrations do (see the
// examples of HashFS and WithTemplate).
//
// It panics if fsys cannot be read: that is a bug in the test.
func HashFS(fsys fs.FS) string {
	h := sha256.New()
	err := fs.WalkDir(fsys, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(fsys, path)
		if err != nil {
			return err
		}
		// Length-prefixed, so that no two different trees hash alike.
		var n [8]byte
		for _, part := range [][]byte{[]byte(path), b} {
			binary.BigEndian.PutUint64(n[:], uint64(len(part)))
			h.Write(n[:])
			h.Write(part)
		}
		return nil
	})
	if err != nil {
		panic(fmt.Sprintf("pgtest.HashFS: %v", err))
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}
