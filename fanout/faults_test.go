package fanout

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/faulttest"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// TestFanoutUnderAHungServer hangs one server's wire while a run migrates
// its tenants (a migration that takes two seconds): the run's tenants on
// the other server are done meanwhile; the hung server's are stopped,
// saying the server did not answer, and taken again later instead of
// holding their slots for ever; once the wire flows again the run finishes
// with every tenant at the new version and none dirty.
func TestFanoutUnderAHungServer(t *testing.T) {
	t.Parallel()
	_ = faulttest.Seed(t) // the schedule is fixed; the seed is printed for the record
	b := setupFanout(t)
	ctx := context.Background()
	faulty := pgtest.NewServer(t)
	proxy := faulttest.NewProxy(t, "pg-faulty", faulty.Addr())
	_, err := b.store.CreateServer(ctx, catalog.NewServer{Name: "pg-faulty", DSN: proxy.DSN(faulty.ManagedDSN(t, "postgres")), Capacity: 2000, ConnBudget: 80})
	require.NoError(t, err)
	b.servers["pg-faulty"] = faulty
	v1 := b.service(t, loadSchema(t, schemaDir(t, nil)), false, nil)
	var tenants []catalog.Tenant
	for i, server := range []string{"pg-faulty", "pg-faulty", "pg-1", "pg-1", "pg-2"} {
		tn, _, err := v1.db.CreateTenant(ctx, catalog.NewTenant{Slug: fmt.Sprintf("hung-%d", i), Name: "h", Plan: "basic", Actor: "test", Server: server}, nil)
		require.NoError(t, err)
		tn, err = makeTenantDatabase(ctx, v1, tn)
		require.NoError(t, err)
		tenants = append(tenants, tn)
	}
	dir := schemaDir(t, map[string]string{
		"000002_slow.up.sql":   "SELECT pg_sleep(2); CREATE TABLE slow_step (id int);",
		"000002_slow.down.sql": "DROP TABLE slow_step;",
	})
	p := b.service(t, loadSchema(t, dir), true, func(c *Config) { c.StallAfter = time.Second; c.ConnectTimeout = 2 * time.Second })
	run, err := p.StartRun(ctx, RunSpec{Concurrency: 5, PerServer: 2, Canary: ptr(0), MaxFailures: 10}, "test")
	require.NoError(t, err)
	// The hang comes once the hung server's migrations are under way,
	// connected and sleeping in their step.
	require.Eventually(t, func() bool {
		rows, _, err := p.RunTenants(ctx, run.ID, string(RunTenantRunning), 0, "")
		require.NoError(t, err)
		n := 0
		for _, r := range rows {
			if r.Server == "pg-faulty" {
				n++
			}
		}
		return n == 2
	}, 30*time.Second, 20*time.Millisecond)
	time.Sleep(700 * time.Millisecond)
	remove := proxy.Add(t, faulttest.Hang())

	// The other servers' tenants are done while the hung one's are not.
	var rows []RunTenant
	require.Eventually(t, func() bool {
		rows, _, err = p.RunTenants(ctx, run.ID, "", 0, "")
		require.NoError(t, err)
		for _, r := range rows {
			if r.Server != "pg-faulty" && r.State != RunTenantDone {
				return false
			}
			if r.Server == "pg-faulty" && !strings.Contains(r.Note+r.Error, "the tenant's server does not answer: server pg-faulty") {
				return false
			}
		}
		return true
	}, 30*time.Second, 100*time.Millisecond, "the other servers' tenants are done, the hung server's stopped saying why: %+v", &rows)
	for _, r := range rows {
		t.Logf("%s on %s: %s %s%s", r.Slug, r.Server, r.State, r.Note, r.Error)
	}

	remove()
	// Taken again by the run itself (a stopped migration has tries left);
	// one that failed all its tries is retried by a resume.
	require.Eventually(t, func() bool {
		run, err = b.runs.GetMigrationRun(ctx, run.ID)
		require.NoError(t, err)
		if run.State == RunFailed {
			_, err = p.ChangeRun(ctx, run.ID, RunResume, "test")
			require.NoError(t, err)
		}
		return run.State == RunDone
	}, 60*time.Second, 200*time.Millisecond, "the run finishes once the wire flows")
	for _, tn := range tenants {
		v, dirty := b.schemaOf(t, tn)
		require.EqualValues(t, 2, v, tn.Slug)
		require.False(t, dirty, tn.Slug)
	}
}
