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
	"github.com/tenantplane/tenantplane/migrations"
)

// faultyServer registers a third server, pg-faulty, behind a faulttest proxy.
func (b *fanoutBundle) faultyServer(t *testing.T) *faulttest.Proxy {
	t.Helper()
	faulty := pgtest.NewServer(t)
	proxy := faulttest.NewProxy(t, "pg-faulty", faulty.Addr())
	_, err := b.store.CreateServer(context.Background(), catalog.NewServer{Name: "pg-faulty",
		DSN: proxy.DSN(faulty.ManagedDSN(t, "postgres")), Capacity: 2000, ConnBudget: 80})
	require.NoError(t, err)
	b.servers["pg-faulty"] = faulty
	return proxy
}

// tenantsOn makes an active tenant at the embedded schema's newest version
// on each server named, prefix-0 ...
func (b *fanoutBundle) tenantsOn(t *testing.T, prefix string, servers ...string) []catalog.Tenant {
	t.Helper()
	ctx := context.Background()
	v1 := b.service(t, loadSchema(t, schemaDir(t, nil)), false, nil)
	var tenants []catalog.Tenant
	for i, server := range servers {
		tn, _, err := v1.db.CreateTenant(ctx, catalog.NewTenant{Slug: fmt.Sprintf("%s-%d", prefix, i), Name: prefix, Plan: "basic", Actor: "test", Server: server}, nil)
		require.NoError(t, err)
		tn, err = makeTenantDatabase(ctx, v1, tn)
		require.NoError(t, err)
		tenants = append(tenants, tn)
	}
	return tenants
}

// TestFanoutUnderAHungServer hangs one server's wire while a run migrates
// its tenants (a migration that takes two seconds): the run's tenants on
// the other server are done meanwhile; the hung server's are stopped,
// saying the server did not answer, and taken again later instead of
// holding their slots for ever; once the wire flows again the run finishes
// with every tenant at the new version and none dirty. It runs alone: it
// checks that no goroutine is left running once the service has stopped.
func TestFanoutUnderAHungServer(t *testing.T) {
	pgtest.Shared(t)
	faulttest.VerifyNoLeaks(t)
	_ = faulttest.Seed(t) // the schedule is fixed; the seed is printed for the record
	b := setupFanout(t)
	ctx := context.Background()
	proxy := b.faultyServer(t)
	tenants := b.tenantsOn(t, "hung", "pg-faulty", "pg-faulty", "pg-1", "pg-1", "pg-2")
	next := int64(migrations.Embedded().Latest()) + 1
	dir := schemaDir(t, map[string]string{
		fmt.Sprintf("%06d_slow.up.sql", next):   "SELECT pg_sleep(2); CREATE TABLE slow_step (id int);",
		fmt.Sprintf("%06d_slow.down.sql", next): "DROP TABLE slow_step;",
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
		require.Equal(t, next, v, tn.Slug)
		require.False(t, dirty, tn.Slug)
	}
}

// TestFanoutUnderNetworkFaults runs a fan-out with each of the other
// network faults on one server's wire (latency, resets, a slow bandwidth, a
// sliced stream): a slowed wire still migrates its tenants; resets fail
// them with an error that says the connection was lost, and a resume once
// the wire is clean finishes them; the other server's tenants are done
// either way, and every tenant ends at the new version, none dirty. It runs
// alone: it checks that no goroutine is left running once the service has
// stopped.
func TestFanoutUnderNetworkFaults(t *testing.T) {
	pgtest.Shared(t)
	faulttest.VerifyNoLeaks(t)
	_ = faulttest.Seed(t) // the schedule is fixed; the seed is printed for the record
	b := setupFanout(t)
	ctx := context.Background()
	proxy := b.faultyServer(t)
	files := map[string]string{}
	var faults []faulttest.Fault
	for _, f := range faulttest.Each() {
		if f.Name != "hang" { // TestFanoutUnderAHungServer
			faults = append(faults, f)
		}
	}
	base := int(migrations.Embedded().Latest())
	for i := range faults {
		v := base + i + 1
		files[fmt.Sprintf("%06d_f%d.up.sql", v, v)] = fmt.Sprintf("CREATE TABLE f%d (id int); INSERT INTO f%d SELECT generate_series(1, 2000);", v, v)
		files[fmt.Sprintf("%06d_f%d.down.sql", v, v)] = fmt.Sprintf("DROP TABLE f%d;", v)
	}
	tenants := b.tenantsOn(t, "net", "pg-faulty", "pg-faulty", "pg-1")
	p := b.service(t, loadSchema(t, schemaDir(t, files)), true, func(c *Config) { c.ConnectTimeout = 2 * time.Second })
	for i, fault := range faults {
		target := int64(base + i + 1)
		remove := proxy.Add(t, fault)
		run, err := p.StartRun(ctx, RunSpec{TargetVersion: &target, Concurrency: 3, Canary: ptr(0), MaxFailures: 10}, "test")
		require.NoError(t, err)
		run = waitRun(t, b.runs, run.ID, 60*time.Second, RunDone, RunFailed)
		rows, _, err := p.RunTenants(ctx, run.ID, "", 0, "")
		require.NoError(t, err)
		for _, r := range rows {
			t.Logf("%s: %s on %s: %s %s", fault.Name, r.Slug, r.Server, r.State, r.Error)
			if r.Server != "pg-faulty" {
				require.Equal(t, RunTenantDone, r.State, "%s: the other server's tenant", fault.Name)
			}
		}
		if fault.Name == "reset" {
			require.Equal(t, RunFailed, run.State)
			for _, r := range rows {
				if r.Server == "pg-faulty" {
					require.Contains(t, r.Error, "pg-faulty")
				}
			}
			remove()
			_, err = p.ChangeRun(ctx, run.ID, RunResume, "test")
			require.NoError(t, err)
			run = waitRun(t, b.runs, run.ID, 60*time.Second, RunDone)
		} else {
			require.Equal(t, RunDone, run.State, "%s: a slowed wire still migrates", fault.Name)
			remove()
		}
		for _, tn := range tenants {
			v, dirty := b.schemaOf(t, tn)
			require.Equal(t, target, v, "%s: %s", fault.Name, tn.Slug)
			require.False(t, dirty, "%s: %s", fault.Name, tn.Slug)
		}
	}
}
