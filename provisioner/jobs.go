package provisioner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgcluster"
	"github.com/tenantplane/tenantplane/migrations"
)

// provisionArgs is the durable job that takes a tenant from provisioning to
// active. Its steps are idempotent, so a rerun after a crash at any point
// finishes the work without doing any of it twice.
type provisionArgs struct {
	TenantID string `json:"tenant_id" river:"unique"`
}

func (provisionArgs) Kind() string { return "tenantplane.provision_tenant" }

type provisionWorker struct {
	river.WorkerDefaults[provisionArgs]
	p *Provisioner
}

func (w *provisionWorker) Work(ctx context.Context, job *river.Job[provisionArgs]) error {
	return w.p.runJob(ctx, job.Args.TenantID, "provision", w.p.provision)
}

// dropArgs is the durable job that drops a deleted tenant's database and role
// once its grace period is over.
type dropArgs struct {
	TenantID string `json:"tenant_id" river:"unique"`
}

func (dropArgs) Kind() string { return "tenantplane.drop_tenant" }

type dropWorker struct {
	river.WorkerDefaults[dropArgs]
	p *Provisioner
}

func (w *dropWorker) Work(ctx context.Context, job *river.Job[dropArgs]) error {
	return w.p.runJob(ctx, job.Args.TenantID, "drop", w.p.drop)
}

// runJob runs one tenant job. An interrupted job (the process is stopping)
// returns its error so River retries it, here or on another replica; one
// the catalog did not answer (catalog.CatalogDown) is tried again shortly,
// the tenant left as it is. Any other failure marks the tenant failed with
// the reason, for the operator to read and retry: a server that is down
// should not be hammered by retries.
func (p *Provisioner) runJob(ctx context.Context, tenantID, what string, fn func(context.Context, catalog.Tenant) error) error {
	t, err := p.store.GetTenantByID(ctx, tenantID)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil
	}
	if catalog.CatalogDown(err) && ctx.Err() == nil {
		return river.JobSnooze(catalogRetry)
	}
	if err != nil {
		return err
	}
	logger := p.logger.With("tenant", t.Slug, "tenant_id", t.ID, "op", what)
	start := time.Now()
	err = fn(ctx, t)
	switch {
	case err == nil:
		logger.InfoContext(ctx, what+" done", "duration_ms", time.Since(start).Milliseconds())
		return nil
	case ctx.Err() != nil || errors.Is(err, errInterrupted):
		logger.WarnContext(ctx, what+" interrupted; it will resume", "error", err)
		return err
	case catalog.CatalogDown(err):
		// The catalog hung or reset under the job: nothing the tenant or
		// its server did. The tenant stays where it is and the job tries
		// again shortly (a snooze costs no attempt); every step is
		// idempotent, so the retry finds done what was done.
		logger.WarnContext(ctx, what+": the catalog did not answer; trying again in "+catalogRetry.String(), "error", err)
		return river.JobSnooze(catalogRetry)
	}
	reason := fmt.Sprintf("%s failed: %v", what, err)
	logger.ErrorContext(ctx, what+" failed", "error", err)
	from := []catalog.TenantState{catalog.TenantProvisioning}
	if what == "drop" {
		from = []catalog.TenantState{catalog.TenantDeleting}
	}
	_, terr := p.store.TransitionTenant(ctx, catalog.Transition{
		TenantID: t.ID, From: from, To: catalog.TenantFailed, Actor: "provisioner",
		Action: "tenant.failed", Reason: reason, LastError: reason,
	})
	if terr != nil && !errors.Is(terr, catalog.ErrConflict) {
		return terr // the catalog is down: retry the whole job later
	}
	return nil
}

// stepError says which step on a tenant server failed, in words for an
// operator (catalog.DescribeServerError). A failure of the catalog met on
// the way (a server's DSN, say) stays in the chain: runJob sees it and
// waits for the catalog instead of failing the tenant for its server.
func stepError(server, step string, err error) error {
	if catalog.CatalogDown(err) {
		return fmt.Errorf("server %s: %s: %w", server, step, err)
	}
	return fmt.Errorf("server %s: %s: %s", server, step, catalog.DescribeServerError(err))
}

// catalogRetry is how long a tenant job waits for a catalog that did not
// answer before it tries again.
const catalogRetry = time.Second

// errInterrupted marks a step stopped on purpose (tests' crash hook).
var errInterrupted = errors.New("interrupted")

func (p *Provisioner) step(ctx context.Context, t catalog.Tenant, name string) error {
	if p.cfg.afterStep == nil {
		return nil
	}
	if err := p.cfg.afterStep(ctx, t.Slug, name); err != nil {
		return fmt.Errorf("%w after step %s: %v", errInterrupted, name, err)
	}
	return nil
}

// provision creates the tenant's role and database and marks it active:
// from the warm pool when it has an entry, else by the slow path (role,
// template clone, grants), whose every step a rerun finds done and skips.
// With Config.Customers, the tenant's billing customer is made last, before
// activation, on either path.
func (p *Provisioner) provision(ctx context.Context, t catalog.Tenant) error {
	if t.State != catalog.TenantProvisioning {
		return nil // done already, or moved on (deleted while queued)
	}
	if err := p.step(ctx, t, "picked"); err != nil {
		return err
	}
	srv, err := p.store.GetServer(ctx, t.Server)
	if err != nil {
		return err
	}
	schema, err := p.onServer(ctx, srv, t)
	if err != nil {
		return err
	}
	if p.cfg.Customers != nil {
		cctx, cancel := context.WithTimeout(ctx, p.cfg.CustomerTimeout)
		err := p.cfg.Customers.EnsureCustomer(cctx, t)
		timedOut := cctx.Err() != nil && ctx.Err() == nil
		cancel()
		switch {
		case err != nil && timedOut:
			return fmt.Errorf("creating the billing customer: no answer within %s: %w", p.cfg.CustomerTimeout, err)
		case err != nil:
			return fmt.Errorf("creating the billing customer: %w", err)
		}
		if err := p.step(ctx, t, "customer"); err != nil {
			return err
		}
	}
	_, err = p.store.TransitionTenant(ctx, catalog.Transition{
		TenantID: t.ID, From: []catalog.TenantState{catalog.TenantProvisioning}, To: catalog.TenantActive,
		Actor: "provisioner", Action: "tenant.activated", Schema: &schema,
	})
	if errors.Is(err, catalog.ErrConflict) {
		return nil // deleted meanwhile; the drop job owns it now
	}
	return err
}

// onServer does the tenant server's part of provisioning (role, database,
// grants), within Config.ServerTimeout: a server that hangs fails the
// tenant saying so, instead of holding the job until its own timeout.
func (p *Provisioner) onServer(jobCtx context.Context, srv catalog.Server, t catalog.Tenant) (catalog.SchemaState, error) {
	ctx, cancel := context.WithTimeout(jobCtx, p.cfg.ServerTimeout)
	defer cancel()
	schema, err := p.onServerSteps(ctx, srv, t)
	if err != nil && ctx.Err() != nil && jobCtx.Err() == nil {
		return schema, fmt.Errorf("server %s did not answer within %s: %w", srv.Name, p.cfg.ServerTimeout, err)
	}
	return schema, err
}

func (p *Provisioner) onServerSteps(ctx context.Context, srv catalog.Server, t catalog.Tenant) (schema catalog.SchemaState, err error) {
	pool, err := p.admin(ctx, srv.ID, srv.Name)
	if err != nil {
		return schema, err
	}
	_, password, err := p.store.TenantCredentials(ctx, t.ID)
	if err != nil {
		return schema, err
	}
	claimed, err := p.claimWarm(ctx, pool, t, password)
	if err != nil {
		return schema, stepError(srv.Name, "claiming a warm database", err)
	}
	schema = catalog.SchemaState{Version: int64(p.schema.Latest())}
	if !claimed {
		if err := p.ensureRole(ctx, pool, t.Role, password); err != nil {
			return schema, stepError(srv.Name, "creating role", err)
		}
		if err := p.step(ctx, t, "role"); err != nil {
			return schema, err
		}
		if err := p.ensureDatabase(ctx, srv, pool, t); err != nil {
			return schema, stepError(srv.Name, "creating database", err)
		}
		if err := p.step(ctx, t, "database"); err != nil {
			return schema, err
		}
		if schema.Version, schema.Dirty, err = p.grantTables(ctx, srv.Name, t.Database, t.Role); err != nil {
			return schema, stepError(srv.Name, "granting the tenant role", err)
		}
		if err := p.step(ctx, t, "schema"); err != nil {
			return schema, err
		}
	}
	return schema, nil
}

// roleSettings are the statements that give a tenant role its limits, and
// make a non-superuser admin a member of it (needed to make the role a
// database's owner).
func (p *Provisioner) roleSettings(role string, adminIsSuper bool) []string {
	stmts := []string{
		fmt.Sprintf("ALTER ROLE %s NOINHERIT CONNECTION LIMIT %d", ident(role), p.cfg.TenantConnLimit),
		fmt.Sprintf("ALTER ROLE %s SET statement_timeout = %s", ident(role), literal(fmt.Sprint(p.cfg.TenantStatementTimeout.Milliseconds()))),
		fmt.Sprintf("ALTER ROLE %s SET idle_in_transaction_session_timeout = '60000'", ident(role)),
	}
	if !adminIsSuper {
		stmts = append(stmts, fmt.Sprintf("GRANT %s TO CURRENT_USER", ident(role)))
	}
	return stmts
}

func isSuperuser(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (bool, error) {
	var super bool
	err := q.QueryRow(ctx, `SELECT rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&super)
	return super, err
}

// ensureRole creates the tenant's login role, or resets its password to the
// sealed one when an earlier attempt made it.
func (p *Provisioner) ensureRole(ctx context.Context, pool *pgxpool.Pool, role, password string) error {
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, role).Scan(&exists); err != nil {
		return err
	}
	super, err := isSuperuser(ctx, pool)
	if err != nil {
		return err
	}
	verb := "CREATE"
	if exists {
		verb = "ALTER"
	}
	stmts := append([]string{verb + " ROLE " + ident(role) + " LOGIN PASSWORD " + literal(scramVerifier(password))}, p.roleSettings(role, super)...)
	for _, s := range stmts {
		if _, err := pool.Exec(ctx, s); err != nil {
			if exists && isDuplicate(err) { // already a member
				continue
			}
			return err
		}
	}
	return nil
}

// ensureDatabase gives the tenant its database, a clone of the server's
// template owned by the admin role, that only the tenant role may connect to.
func (p *Provisioner) ensureDatabase(ctx context.Context, srv catalog.Server, pool *pgxpool.Pool, t catalog.Tenant) error {
	exists, err := databaseExists(ctx, pool, t.Database)
	if err != nil {
		return err
	}
	if !exists {
		tpl, err := p.ensureTemplate(ctx, srv)
		if err != nil {
			return err
		}
		if _, err := pool.Exec(ctx, "CREATE DATABASE "+ident(t.Database)+" TEMPLATE "+ident(tpl)); err != nil {
			return err
		}
	}
	return execAll(ctx, pool, databaseAccess(t.Database, t.Role))
}

// databaseAccess are the statements that give role CONNECT on database and
// nothing else there: no TEMPORARY (so no functions in pg_temp either), and
// not ownership, which would let it CREATE in schema public (on PostgreSQL
// 15 the schema belongs to pg_database_owner), create schemas and ALTER
// DATABASE. The owner is the admin role that created the database from the
// template; a database an older layout gave to the tenant is taken back
// (that needs the admin to be a member of the tenant role, which
// roleSettings makes it).
func databaseAccess(database, role string) []string {
	db, r := ident(database), ident(role)
	return []string{
		"ALTER DATABASE " + db + " OWNER TO CURRENT_USER",
		"REVOKE ALL ON DATABASE " + db + " FROM PUBLIC",
		"REVOKE ALL ON DATABASE " + db + " FROM " + r,
		"GRANT CONNECT ON DATABASE " + db + " TO " + r,
	}
}

func execAll(ctx context.Context, q interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, stmts []string) error {
	for _, s := range stmts {
		if _, err := q.Exec(ctx, s); err != nil {
			return err
		}
	}
	return nil
}

// grantTables lets role use the tables of database. The schema belongs to
// the admin role that migrates it; the tenant role reads and writes rows, now
// and in tables later migrations add. It returns the database's schema version.
func (p *Provisioner) grantTables(ctx context.Context, serverName, database, role string) (int64, bool, error) {
	conn, err := p.connectDB(ctx, serverName, database)
	if err != nil {
		return 0, false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	r := ident(role)
	batch := &pgx.Batch{}
	for _, s := range []string{
		"REVOKE ALL ON SCHEMA public FROM PUBLIC",
		"GRANT USAGE ON SCHEMA public TO " + r,
		"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO " + r,
		"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO " + r,
		"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO " + r,
		"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO " + r,
		"REVOKE ALL ON TABLE schema_migrations FROM " + r,
	} {
		batch.Queue(s)
	}
	if err := conn.SendBatch(ctx, batch).Close(); err != nil {
		return 0, false, err
	}
	return migrations.ReadVersion(ctx, conn)
}

// drop removes a deleted tenant's database and role once its grace period
// is over, keeping a pg_dump first when an archive directory is set.
func (p *Provisioner) drop(ctx context.Context, t catalog.Tenant) error {
	if t.State != catalog.TenantDeleting {
		return nil // restored meanwhile, or dropped already
	}
	if t.DeleteAfter != nil && time.Until(*t.DeleteAfter) > 0 {
		return river.JobSnooze(time.Until(*t.DeleteAfter))
	}
	if t.PoolID != 0 {
		// A pooled tenant's rows, not the pool database it shares.
		n, err := p.dropPooledRows(ctx, t)
		if err != nil {
			return fmt.Errorf("server %s, pool database %s: deleting the tenant's rows: %s", t.Server, t.Pool, catalog.DescribeServerError(err))
		}
		p.logger.InfoContext(ctx, "pooled tenant's rows deleted", "tenant", t.Slug, "pool", t.Pool, "rows", n)
	} else if t.Server != "" {
		srv, err := p.store.GetServer(ctx, t.Server)
		if err != nil {
			return err
		}
		pool, err := p.admin(ctx, srv.ID, srv.Name)
		if err != nil {
			return err
		}
		if p.cfg.ArchiveDir != "" {
			if err := p.archive(ctx, srv.Name, pool, t); err != nil {
				return fmt.Errorf("archiving before drop: %w", err)
			}
		}
		for _, s := range []string{
			"DROP DATABASE IF EXISTS " + ident(t.Database) + " WITH (FORCE)",
			"DROP ROLE IF EXISTS " + ident(t.Role),
		} {
			if _, err := pool.Exec(ctx, s); err != nil {
				return fmt.Errorf("server %s: %s", srv.Name, catalog.DescribeServerError(err))
			}
		}
	}
	_, err := p.store.TransitionTenant(ctx, catalog.Transition{
		TenantID: t.ID, From: []catalog.TenantState{catalog.TenantDeleting}, To: catalog.TenantDeleted,
		Actor: "provisioner", Action: "tenant.dropped",
	})
	if errors.Is(err, catalog.ErrConflict) {
		return nil
	}
	return err
}

// archive keeps a custom-format pg_dump of the tenant's database in ArchiveDir.
func (p *Provisioner) archive(ctx context.Context, serverName string, pool *pgxpool.Pool, t catalog.Tenant) error {
	if ok, err := databaseExists(ctx, pool, t.Database); err != nil || !ok {
		return err
	}
	dsn, err := p.store.ServerDSN(ctx, serverName)
	if err != nil {
		return err
	}
	pcfg, err := catalog.ServerConfig(dsn)
	if err != nil {
		return fmt.Errorf("server %q: %w", serverName, err)
	}
	if err := os.MkdirAll(p.cfg.ArchiveDir, 0o700); err != nil {
		return err
	}
	out := filepath.Join(p.cfg.ArchiveDir, fmt.Sprintf("%s-%s.dump", t.Slug, time.Now().UTC().Format("20060102T150405Z")))
	// --enable-row-security: the tenant tables' row-level security is forced,
	// so the admin role (their owner) reads them through its policy; without
	// it pg_dump refuses a table a policy applies to.
	cmd, err := pgcluster.ClientCommand(ctx, "pg_dump", &pcfg.ConnConfig.Config, t.Database, "--format=custom", "--no-owner", "--enable-row-security", "--file="+out)
	if err != nil {
		return err
	}
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pg_dump: %v: %s", err, msg)
	}
	p.logger.InfoContext(ctx, "tenant database archived", "tenant", t.Slug, "file", out)
	return nil
}

// isDuplicate reports a duplicate_object error (42710): a role that is a
// member already, say.
func isDuplicate(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42710"
}
