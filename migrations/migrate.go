package migrations

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database"
	pgxmigrate "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/tenantplane/tenantplane/catalog"
)

// The tenant-schema migrator: golang-migrate on one tenant database, a step
// per transaction. The provisioner builds its templates with it and fan-out
// migrates tenant databases with it; both hand it a connection
// configuration of the server's admin role pointed at the database.

// NoTransactionMarker, as the first line of a tenant migration file, runs it
// outside a transaction, the way golang-migrate runs every file: for
// statements Postgres refuses in one (CREATE INDEX CONCURRENTLY). Such a file
// should hold one statement; if it fails, the database is left dirty.
const NoTransactionMarker = "-- tenantplane:no-transaction"

// Limits bound each tenant migration so one locked or slow tenant database
// cannot stall the rest.
type Limits struct {
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

// ErrClean refuses to force the version of a database whose schema is not
// dirty: Force only clears the flag of a failed migration.
type ErrClean struct {
	Version uint
}

func (e ErrClean) Error() string {
	return fmt.Sprintf("schema is clean at version %d: force only clears the dirty flag of a failed migration", e.Version)
}

// ReadVersion reads golang-migrate's version and dirty flag from a tenant
// database (0, false when it has no row; an error when it has no
// schema_migrations table).
func ReadVersion(ctx context.Context, conn *pgx.Conn) (version int64, dirty bool, err error) {
	err = conn.QueryRow(ctx, `SELECT version, dirty FROM schema_migrations LIMIT 1`).Scan(&version, &dirty)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	return version, dirty, err
}

// stepDriver wraps golang-migrate's pgx/v5 driver so that each migration
// commits as one Postgres transaction with the version it records: BEGIN,
// the file, the new version, COMMIT. golang-migrate alone marks the database
// dirty, runs the file, then marks it clean, in three transactions; a
// failing file, or a process killed in between, leaves it dirty for an
// operator to inspect and force. With Postgres's transactional DDL there is
// nothing to inspect: a step either happened, version included, or did not,
// so a failed tenant can simply be tried again and a killed run resumes
// without applying anything twice. Files marked NoTransactionMarker keep
// golang-migrate's own behaviour.
//
// It relies on the pgx/v5 driver running everything, Lock included, on one
// connection, so that the transaction and the advisory lock die together.
type stepDriver struct {
	database.Driver
	pending    int  // the version of the step announced by SetVersion(v, true)
	hasPending bool // a step's body is expected next
	inTx       bool // a step's transaction is open
	step       int  // the version of the step that ran last, for errors
}

func (d *stepDriver) SetVersion(version int, dirty bool) error {
	switch {
	case dirty && !d.inTx:
		// Before each body: decided in Run, which sees whether the file
		// runs in a transaction.
		d.pending, d.hasPending, d.step = version, true, version
		return nil
	case !dirty && d.inTx:
		d.inTx = false
		if err := d.exec(versionSQL(version)); err != nil {
			_ = d.exec("ROLLBACK")
			return err
		}
		return d.exec("COMMIT")
	}
	d.hasPending = false
	return d.Driver.SetVersion(version, dirty)
}

func (d *stepDriver) Run(body io.Reader) error {
	b, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	if !d.hasPending {
		return d.Driver.Run(bytes.NewReader(b))
	}
	d.hasPending = false
	if noTransaction(b) {
		if err := d.Driver.SetVersion(d.pending, true); err != nil {
			return err
		}
		return d.Driver.Run(bytes.NewReader(b))
	}
	if err := d.exec("BEGIN"); err != nil {
		return err
	}
	if err := d.Driver.Run(bytes.NewReader(b)); err != nil {
		_ = d.exec("ROLLBACK")
		return err
	}
	d.inTx = true
	return nil
}

func (d *stepDriver) exec(sql string) error { return d.Driver.Run(strings.NewReader(sql)) }

// versionSQL records version as golang-migrate does (no row for no version),
// with DELETE rather than its TRUNCATE so that readers of the version are
// not blocked while the step commits.
func versionSQL(version int) string {
	if version < 0 {
		return "DELETE FROM schema_migrations"
	}
	return fmt.Sprintf("DELETE FROM schema_migrations; INSERT INTO schema_migrations (version, dirty) VALUES (%d, false)", version)
}

func noTransaction(body []byte) bool {
	line, _, _ := bufio.NewReader(bytes.NewReader(body)).ReadLine()
	return strings.EqualFold(strings.TrimSpace(string(line)), NoTransactionMarker)
}

// Outcome is where one tenant database's migration left it.
type Outcome struct {
	From      uint // version before
	FromDirty bool
	Version   uint // version after (or now, on failure)
	Dirty     bool
	Changed   bool // at least one step ran
	Read      bool // the versions above were read from the database
}

// Migrate takes the tenant database that conn points at (as the server's
// admin role) to target, up or down, with src's migrations: a step per
// transaction, under golang-migrate's advisory lock, with limits on every
// statement. A dirty database is not touched: ErrDirty. Errors of a step
// are a *StepError naming the step and carrying Postgres's message.
func Migrate(ctx context.Context, conn *pgx.ConnConfig, src Source, target uint, limits Limits) (out Outcome, err error) {
	mg, err := open(ctx, conn, src, limits, true)
	if err != nil {
		return out, err
	}
	defer mg.close()
	stop := context.AfterFunc(ctx, mg.abort) // a step that ctx's end must stop
	defer stop()
	m, driver := mg.m, mg.steps

	version := func() (uint, bool, error) {
		v, d, err := m.Version()
		if errors.Is(err, migrate.ErrNilVersion) {
			return 0, false, nil
		}
		return v, d, err
	}
	if out.From, out.FromDirty, err = version(); err != nil {
		return out, fmt.Errorf("reading the schema version: %s", describeStep(err))
	}
	out.Version, out.Dirty, out.Read = out.From, out.FromDirty, true
	if out.FromDirty {
		return out, ErrDirty{Version: out.From}
	}
	if out.From == target {
		return out, nil
	}

	// golang-migrate takes no context. Its GracefulStop is read by two of
	// its own goroutines without a lock (a data race under -race), so take
	// one step per call instead and look at ctx between steps.
	for cur := out.From; cur != target && err == nil; {
		if ctx.Err() != nil {
			break
		}
		n := 1
		if target < cur {
			n = -1
		}
		if err = m.Steps(n); err == nil {
			cur, _, err = version()
		}
	}
	v, d, verr := version()
	if verr == nil {
		out.Version, out.Dirty = v, d
	}
	out.Changed = out.Version != out.From
	if err == nil && verr == nil && out.Version != target && ctx.Err() != nil {
		return out, fmt.Errorf("interrupted at version %d: %w", out.Version, ctx.Err())
	}
	switch {
	case err == nil || errors.Is(err, migrate.ErrNoChange):
		return out, verr
	case errors.Is(err, migrate.ErrLockTimeout):
		return out, &StepError{Version: driver.step, Message: "another migration of this database holds its lock", Code: "55P03"}
	}
	var dirtyErr migrate.ErrDirty
	if errors.As(err, &dirtyErr) {
		return out, ErrDirty{Version: uint(dirtyErr.Version)}
	}
	if ctx.Err() != nil && out.Version != target {
		return out, fmt.Errorf("interrupted at version %d: %w", out.Version, ctx.Err())
	}
	return out, stepError(err, driver.step)
}

// Force sets a dirty tenant database's schema version to version (0: no
// schema), clearing the dirty flag, with golang-migrate's own driver. It
// returns the version and flag it found; a clean database is refused with
// ErrClean and left as it is.
func Force(ctx context.Context, conn *pgx.ConnConfig, src Source, version uint) (from uint, fromDirty bool, err error) {
	mg, err := open(ctx, conn, src, Limits{StatementTimeout: 30 * time.Second}, false)
	if err != nil {
		return 0, false, err
	}
	defer mg.close()
	from, fromDirty, err = mg.m.Version()
	if err != nil && !errors.Is(err, migrate.ErrNilVersion) {
		return 0, false, fmt.Errorf("reading the schema version: %s", describeStep(err))
	}
	if !fromDirty {
		return from, false, ErrClean{Version: from}
	}
	target := int(version)
	if version == 0 {
		target = -1 // golang-migrate's "no version"
	}
	if err := mg.m.Force(target); err != nil {
		return from, fromDirty, fmt.Errorf("forcing version %d: %s", version, describeStep(err))
	}
	return from, fromDirty, nil
}

// StepError is a tenant migration step that failed, with Postgres's words.
type StepError struct {
	Version int    // the step (migration version) that failed; 0 when none had started
	Message string // Postgres's message, with its detail
	Line    uint   // line of the file, when Postgres said
	Code    string // SQLSTATE, when Postgres said
}

func (e *StepError) Error() string {
	var b strings.Builder
	if e.Version > 0 {
		fmt.Fprintf(&b, "migration %d: ", e.Version)
	}
	b.WriteString(e.Message)
	if e.Line > 0 {
		fmt.Fprintf(&b, " (line %d)", e.Line)
	}
	if e.Code != "" {
		fmt.Fprintf(&b, " [SQLSTATE %s]", e.Code)
	}
	return b.String()
}

// Transient reports whether trying again later may succeed without anyone
// changing anything: a lock was held elsewhere.
func (e *StepError) Transient() bool { return e.Code == "55P03" }

func stepError(err error, step int) *StepError {
	se := &StepError{Version: step, Message: describeStep(err)}
	var dbErr database.Error
	if errors.As(err, &dbErr) {
		se.Line = dbErr.Line
		var pgErr *pgconn.PgError
		if errors.As(dbErr.OrigErr, &pgErr) {
			se.Code = pgErr.Code
		}
	}
	var pgErr *pgconn.PgError
	if se.Code == "" && errors.As(err, &pgErr) {
		se.Code = pgErr.Code
	}
	return se
}

// describeStep is an error of golang-migrate or its driver in a line: the
// driver's own text repeats the whole file.
func describeStep(err error) string {
	var dbErr database.Error
	if !errors.As(err, &dbErr) {
		return catalog.DescribeServerError(err)
	}
	var pgErr *pgconn.PgError
	if errors.As(dbErr.OrigErr, &pgErr) {
		msg := pgErr.Message
		if pgErr.Detail != "" {
			msg += ": " + pgErr.Detail
		}
		return msg
	}
	if dbErr.Err != "" {
		if dbErr.OrigErr != nil {
			return dbErr.Err + ": " + catalog.DescribeServerError(dbErr.OrigErr)
		}
		return dbErr.Err
	}
	if dbErr.OrigErr != nil {
		return catalog.DescribeServerError(dbErr.OrigErr)
	}
	return "migration failed"
}

// migrator is golang-migrate on one tenant database.
type migrator struct {
	m     *migrate.Migrate
	steps *stepDriver // nil: golang-migrate's own driver
	db    *sql.DB

	mu      sync.Mutex
	conns   []net.Conn // every connection opened, for abort
	aborted bool
}

// dial wraps a connection's dialer so that abort reaches the connection.
func (mg *migrator) dial(dial pgconn.DialFunc) pgconn.DialFunc {
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		mg.mu.Lock()
		defer mg.mu.Unlock()
		mg.conns = append(mg.conns, c)
		if mg.aborted {
			_ = c.SetDeadline(time.Now())
		}
		return c, nil
	}
}

// abort makes every read and write of the migration's connections fail at
// once: golang-migrate takes no context, and a step on a connection whose
// server hangs would otherwise wait for ever. A step is a transaction: the
// server rolls it back when the connection goes.
func (mg *migrator) abort() {
	mg.mu.Lock()
	defer mg.mu.Unlock()
	mg.aborted = true
	for _, c := range mg.conns {
		_ = c.SetDeadline(time.Now())
	}
}

func (mg *migrator) close() {
	_, _ = mg.m.Close()
	_ = mg.db.Close()
}

// open connects golang-migrate to the database conn points at, with the
// limits on every statement; with steps, each migration is a transaction
// (stepDriver).
func open(ctx context.Context, conn *pgx.ConnConfig, src Source, limits Limits, steps bool) (*migrator, error) {
	if limits.LockTimeout == 0 {
		limits.LockTimeout = 5 * time.Second
	}
	if limits.StatementTimeout == 0 {
		limits.StatementTimeout = 5 * time.Minute
	}
	mg := &migrator{}
	cfg := conn.Copy()
	cfg.DialFunc = mg.dial(cfg.DialFunc)
	cfg.RuntimeParams["lock_timeout"] = fmt.Sprint(limits.LockTimeout.Milliseconds())
	cfg.RuntimeParams["statement_timeout"] = fmt.Sprint(limits.StatementTimeout.Milliseconds())
	db := stdlib.OpenDB(*cfg, stdlib.OptionAfterConnect(func(ctx context.Context, conn *pgx.Conn) error {
		// PostgreSQL 14+: a backend whose client went away (a killed
		// process) stops its statement within a second instead of finishing
		// it, and so releases the migration lock sooner. Older servers lack it.
		_, _ = conn.Exec(ctx, "SET client_connection_check_interval = 1000")
		return nil
	}))
	db.SetMaxOpenConns(1) // the pgx/v5 driver does everything on one connection
	fail := func(err error) (*migrator, error) {
		_ = db.Close()
		return nil, err
	}
	if err := db.PingContext(ctx); err != nil {
		return fail(fmt.Errorf("connecting to %s on %s: %s", cfg.Database, net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port)), catalog.ConnectReason(err)))
	}
	inner, err := pgxmigrate.WithInstance(db, &pgxmigrate.Config{})
	if err != nil {
		return fail(fmt.Errorf("migrate driver on %s: %s", cfg.Database, describeStep(err)))
	}
	mg.db = db
	var driver database.Driver = inner
	if steps {
		mg.steps = &stepDriver{Driver: inner}
		driver = mg.steps
	}
	fsrc, err := iofs.New(src.FS(), ".")
	if err != nil {
		_ = inner.Close()
		return fail(fmt.Errorf("tenant migrations: %w", err))
	}
	if mg.m, err = migrate.NewWithInstance("iofs", fsrc, "pgx5", driver); err != nil {
		_ = inner.Close()
		return fail(fmt.Errorf("migrate: %w", err))
	}
	mg.m.LockTimeout = limits.LockTimeout + 10*time.Second
	return mg, nil
}
