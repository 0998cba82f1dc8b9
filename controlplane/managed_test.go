package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// v2Objects is a tenant migration that adds one of each kind of object a
// schema change brings: a table (with its sequence), an index, a view, a
// sequence and a function.
const v2Objects = `CREATE TABLE notes (tenant_id uuid NOT NULL DEFAULT tenantplane_tenant_id(), id bigserial, user_id uuid NOT NULL, body text NOT NULL,
    PRIMARY KEY (tenant_id, id), FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id));
CREATE INDEX notes_user_idx ON notes (tenant_id, user_id);
CREATE VIEW user_note_counts WITH (security_invoker = true) AS SELECT u.id, u.email, count(n.id) AS notes
    FROM users u LEFT JOIN notes n ON n.tenant_id = u.tenant_id AND n.user_id = u.id GROUP BY u.tenant_id, u.id;
CREATE SEQUENCE invoice_numbers;
CREATE FUNCTION next_invoice_number() RETURNS bigint LANGUAGE sql AS 'SELECT nextval(''invoice_numbers'')';
`

const v2ObjectsDown = `DROP FUNCTION next_invoice_number(); DROP SEQUENCE invoice_numbers; DROP VIEW user_note_counts; DROP TABLE notes;`

// TestManagedPostgresEveryPath runs the fleet as a managed PostgreSQL lets it
// run: both servers registered with a role that has CREATEDB and CREATEROLE
// only (setupFleet does so). Twelve tenants, a fan-out of a migration that
// adds a table, an index, a view, a sequence and a function, which reaches
// every database (golang-migrate's own CLI reads the version back) and which
// each tenant role may use; then delete with an archive, and restore.
func TestManagedPostgresEveryPath(t *testing.T) {
	t.Parallel()
	migrateCLI := buildMigrateCLI(t)
	archive, err := os.MkdirTemp("", "tenantplane-archive-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(archive) })
	dir := migrationsDir(t)
	env := map[string]string{"TENANTPLANE_TENANT_MIGRATIONS": dir, "TENANTPLANE_SECRET_KEY": catalog.NewKey(),
		"TENANTPLANE_ARCHIVE_DIR": archive, "TENANTPLANE_DELETE_GRACE": "2s"}
	f := setupFleet(t, 2, env)
	for _, srv := range f.servers {
		require.False(t, query[bool](t, srv.DSN("postgres"), `SELECT rolsuper FROM pg_roles WHERE rolname = $1`, pgtest.ManagedRole))
	}
	tenants := f.createTenants(t, "managed", 12)

	require.NoError(t, os.WriteFile(filepath.Join(dir, "000003_notes.up.sql"), []byte(v2Objects), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "000003_notes.down.sql"), []byte(v2ObjectsDown), 0o644))
	f.redeploy(t, env)
	status, run := call(t, "POST", f.admin+"/admin/v1/migrations/runs", testToken, map[string]any{"concurrency": 4})
	require.Equal(t, http.StatusCreated, status, run)
	run = f.waitRunState(t, run["id"], "done")
	require.EqualValues(t, 12, run["counts"].(map[string]any)["done"], run)
	require.Empty(t, run["failed"])
	after := f.status(t)
	require.Equal(t, []any{map[string]any{"version": float64(3), "tenants": float64(12)}}, after["histogram"])
	require.Empty(t, after["dirty"])

	ctx := context.Background()
	for _, tn := range tenants {
		srv := f.servers[tn["server"].(string)]
		db := tn["database"].(string)
		// golang-migrate's CLI, as an operator would run it, agrees.
		out, err := exec.Command(migrateCLI, "-database", strings.Replace(srv.ManagedDSN(t, db), "postgres://", "pgx5://", 1), "-path", dir, "version").CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Equal(t, "3", strings.TrimSpace(string(out)), db)
		// The tenant role uses what the migration added, and owns none of it.
		conn, err := connect(t, dsnAs(t, srv, db, tenantPassword(t, f, tn["id"].(string)), db))
		require.NoError(t, err)
		var n int64
		require.NoError(t, conn.QueryRow(ctx, `WITH u AS (INSERT INTO users (email) VALUES ('ada@example.com') RETURNING id)
			INSERT INTO notes (user_id, body) SELECT id, 'hello' FROM u RETURNING id`).Scan(&n), db)
		require.NoError(t, conn.QueryRow(ctx, `SELECT notes FROM user_note_counts WHERE email = 'ada@example.com'`).Scan(&n), db)
		require.EqualValues(t, 1, n)
		require.NoError(t, conn.QueryRow(ctx, `SELECT next_invoice_number()`).Scan(&n), db)
		_, err = conn.Exec(ctx, `DROP VIEW user_note_counts`)
		require.ErrorContains(t, err, "must be owner", db)
		conn.Close(ctx)
	}

	// Delete with an archive, and restore: both as the managed role.
	gone, back := tenants[0]["slug"].(string), tenants[1]["slug"].(string)
	for _, slug := range []string{gone, back} {
		status, body := call(t, "DELETE", f.admin+"/admin/v1/tenants/"+slug, testToken, nil)
		require.Equal(t, http.StatusAccepted, status, body)
	}
	status, body := call(t, "POST", f.admin+"/admin/v1/tenants/"+back+"/restore", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "active", body["state"])
	require.Eventually(t, func() bool {
		_, body := call(t, "GET", f.admin+"/admin/v1/tenants/"+gone, testToken, nil)
		return body["state"] == "deleted"
	}, 30*time.Second, 50*time.Millisecond)
	dumps, err := filepath.Glob(filepath.Join(archive, gone+"-*.dump"))
	require.NoError(t, err)
	require.Len(t, dumps, 1, "the dropped tenant's database was archived first")
	db, role := dbAndRoleExist(t, f.servers[tenants[0]["server"].(string)], tenants[0]["database"].(string))
	require.False(t, db || role, "and then dropped, role and all")
	for _, o := range listOrphans(t, f) { // the old schema's templates are, rightly
		require.NotRegexp(t, `^t_`, o.(map[string]any)["name"], "no tenant database or role is left: %v", o)
	}
	conn, err := connect(t, dsnAs(t, f.servers[tenants[1]["server"].(string)], tenants[1]["database"].(string), tenantPassword(t, f, tenants[1]["id"].(string)), tenants[1]["database"].(string)))
	require.NoError(t, err, "the restored tenant's role logs in")
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM notes`).Scan(new(int64)))
	conn.Close(ctx)
}

func listOrphans(t *testing.T, f *fleet) []any {
	t.Helper()
	status, body := call(t, "GET", f.admin+"/admin/v1/orphans", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	return body["orphans"].([]any)
}

var (
	migrateCLIOnce sync.Once
	migrateCLIPath string
	migrateCLIErr  error
)

// buildMigrateCLI builds golang-migrate's own command (the module's version,
// with its pgx/v5 driver), once per test process.
func buildMigrateCLI(t *testing.T) string {
	t.Helper()
	migrateCLIOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tenantplane-migrate-cli-")
		if err != nil {
			migrateCLIErr = err
			return
		}
		migrateCLIPath = filepath.Join(dir, "migrate")
		out, err := exec.Command("go", "build", "-tags", "pgx5", "-o", migrateCLIPath, "github.com/golang-migrate/migrate/v4/cmd/migrate").CombinedOutput()
		if err != nil {
			migrateCLIErr = fmt.Errorf("building golang-migrate's CLI: %v: %s", err, out)
		}
	})
	require.NoError(t, migrateCLIErr)
	return migrateCLIPath
}
