package provisioner

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/helperproc"
	"github.com/tenantplane/tenantplane/internal/jobs"
)

// provisionHelperEnv names the environment of the provisioning helper process.
const provisionHelperEnv = "TENANTPLANE_PROVISION_HELPER"

// killSteps are the provisioning steps (Config.afterStep) at which the
// helper process is killed, one tenant each, named by killedSlug.
var killSteps = []string{"role", "database", "schema"}

func killedSlug(step string) string { return "killed-after-" + step }

// provisionHelperProcess is not a test: it is the process that
// TestProvisioningKilledProcessFinishes starts and kills. TestMain runs it
// instead of the tests when provisionHelperEnv is set. It runs a provisioner
// (template path, no warm pool) on the catalog its environment names; the
// job of each killedSlug tenant says "reached <slug>" on stdout once it has
// done its step, and then hangs until the process is killed.
func provisionHelperProcess() error {
	ctx := context.Background()
	store, err := helperStore(ctx)
	if err != nil {
		return err
	}
	p, err := New(store, Config{
		Logger: helperLogger(), WarmPoolSize: -1,
		afterStep: func(ctx context.Context, slug, step string) error {
			if slug != killedSlug(step) {
				return nil
			}
			fmt.Printf("reached %s\n", slug)
			<-ctx.Done() // the job timeout (2 minutes) is far beyond the kill
			return ctx.Err()
		},
	})
	if err != nil {
		return err
	}
	if err := p.Start(ctx); err != nil {
		return err
	}
	select {} // until killed
}

// TestProvisioningKilledProcessFinishes: the process provisioning tenants
// is killed (SIGKILL) in the middle, with one tenant's job stopped after
// each step (role made; database made; grants and schema recorded). A
// process started afterwards takes the dead process's jobs over (River
// rescues them once they look stuck) and finishes every tenant once: each
// active, activated once, with the password it was made with, and nothing
// else left on the server.
func TestProvisioningKilledProcessFinishes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()

	// The tenants and their jobs, queued before any process works on them.
	creator, err := New(b.store, b.cfg) // not started
	require.NoError(t, err)
	tenants := make([]catalog.Tenant, len(killSteps))
	passwords := map[string]string{} // by tenant id
	for i, step := range killSteps {
		tenants[i], _, err = creator.CreateTenant(ctx, TenantSpec{Slug: killedSlug(step), Plan: "basic"}, "test")
		require.NoError(t, err)
		_, passwords[tenants[i].ID], err = b.store.TenantCredentials(ctx, tenants[i].ID)
		require.NoError(t, err)
	}

	// The first process works until each tenant has reached its crash point.
	stdout := helperproc.NewLines(64)
	helper := helperproc.Start(t, stdout, provisionHelperEnv+"=1", "CATALOG_DSN="+b.dsn, "SECRET_KEY="+b.key)
	waiting := map[string]bool{}
	for _, step := range killSteps {
		waiting[killedSlug(step)] = true
	}
	timeout := time.After(30 * time.Second)
	for len(waiting) > 0 {
		select {
		case line := <-stdout.C():
			slug, ok := strings.CutPrefix(line, "reached ")
			require.True(t, ok, "unexpected line from the helper process: %q", line)
			delete(waiting, slug)
		case <-helper.Exited():
			t.Fatalf("the helper process exited (%v) before every tenant reached its crash point; still waiting for %v",
				helper.Err(), slices.Sorted(maps.Keys(waiting)))
		case <-timeout:
			t.Fatalf("the helper process did not bring every tenant to its crash point within 30s; still waiting for %v",
				slices.Sorted(maps.Keys(waiting)))
		}
	}
	helper.Kill(t)
	killedAt := time.Now()

	// Nothing was finished, and the dead process still holds the jobs.
	for _, tn := range tenants {
		got, err := b.store.GetTenant(ctx, tn.Slug)
		require.NoError(t, err)
		require.Equal(t, catalog.TenantProvisioning, got.State, "%s: not finished by the killed process", tn.Slug)
	}
	for _, tn := range tenants {
		job := provisionJob(t, b.store, tn.ID)
		require.Equal(t, "running", job.State, "%s: the killed process left its job running", tn.Slug)
		require.Equal(t, 1, job.Attempt, tn.Slug)
	}

	// A restarted process finishes them, once the dead process's job client
	// has missed its beats (ClientDeadAfter, internal/jobs); River would take
	// them over too once they look stuck (RescueAfter) and the process is its
	// leader, which it becomes once the dead one's lease (15s) has run out.
	// RescueAfter is short here, still above JobTimeout (Open insists), and
	// JobTimeout long enough for one job on a busy machine: a job that
	// timed out would be retried 16s later. Its warm pool is on: a half-made
	// tenant must not be given a warm database.
	restarted := b.startWithJobs(t, b.cfg, jobs.Config{Logger: b.cfg.Logger, JobTimeout: 3 * time.Second, RescueAfter: 4 * time.Second})
	waitAllActive(t, b.store, tenants, 60*time.Second)
	t.Logf("the restarted process finished the tenants %s after the kill", time.Since(killedAt).Round(100*time.Millisecond))

	var databases, roles []string
	for _, tn := range tenants {
		got, err := b.store.GetTenant(ctx, tn.Slug)
		require.NoError(t, err)
		require.EqualValues(t, restarted.Schema().Latest(), got.SchemaVersion, tn.Slug)
		databases, roles = append(databases, got.Database), append(roles, got.Role)

		_, pw, err := b.store.TenantCredentials(ctx, tn.ID)
		require.NoError(t, err)
		require.Equal(t, passwords[tn.ID], pw, "%s: the role keeps the password it was made with", tn.Slug)
		conn, err := pgx.Connect(ctx, withUser(b.server.DSN(got.Database), got.Role, pw))
		require.NoError(t, err, "%s: the tenant's role logs in to its database", tn.Slug)
		var n int
		require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM users`).Scan(&n), tn.Slug)
		require.NoError(t, conn.Close(ctx))

		events, err := b.store.ListAudit(ctx, catalog.AuditFilter{TenantID: tn.ID, Action: "tenant.activated"})
		require.NoError(t, err)
		require.Len(t, events, 1, "%s: activated once", tn.Slug)
		require.Equal(t, "provisioner", events[0].Actor, tn.Slug)

		// River records a job's completion a moment after it returns.
		var job riverJob
		require.Eventually(t, func() bool {
			job = provisionJob(t, b.store, tn.ID)
			return job.State == "completed"
		}, 10*time.Second, 20*time.Millisecond, "%s: the job is recorded completed", tn.Slug)
		require.GreaterOrEqual(t, job.Attempt, 2, "%s: finished by a new attempt, after the rescue", tn.Slug)
	}

	// Exactly the tenants' databases and roles exist; the reconciler agrees.
	sort.Strings(databases)
	sort.Strings(roles)
	dbs, rls := serverObjects(t, b)
	require.Equal(t, databases, dbs, "the tenants' databases, and no other")
	require.Equal(t, roles, rls, "the tenants' roles, and no other")
	orphans, err := restarted.Reconcile(ctx, false)
	require.NoError(t, err)
	require.Empty(t, orphans)
}

// waitAllActive waits until every one of tenants is active, and fails
// saying where each one is when they are not within timeout.
func waitAllActive(t *testing.T, store *catalog.Store, tenants []catalog.Tenant, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		states := map[string]string{}
		for _, tn := range tenants {
			got, err := store.GetTenant(context.Background(), tn.Slug)
			require.NoError(t, err)
			if got.State != catalog.TenantActive {
				states[tn.Slug] = string(got.State)
				if got.LastError != "" {
					states[tn.Slug] += ": " + got.LastError
				}
				states[tn.Slug] += fmt.Sprintf(" (job %+v)", provisionJob(t, store, tn.ID))
			}
		}
		if len(states) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every tenant became active within %s after the restart: %v", timeout, states)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// riverJob is what a test reads of a tenant's provisioning job.
type riverJob struct {
	State   string
	Attempt int
}

// provisionJob reads the River job that provisions a tenant.
func provisionJob(t *testing.T, store *catalog.Store, tenantID string) riverJob {
	t.Helper()
	var job riverJob
	err := store.Pool().QueryRow(context.Background(), `SELECT state::text, attempt FROM river_job
		WHERE kind = $1 AND args->>'tenant_id' = $2 ORDER BY id DESC LIMIT 1`,
		provisionArgs{}.Kind(), tenantID).Scan(&job.State, &job.Attempt)
	require.NoError(t, err)
	return job
}
