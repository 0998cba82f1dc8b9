package provisioner

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/helperproc"
	"github.com/tenantplane/tenantplane/internal/jobs"
)

// crowdHelperEnv names the environment of the crowd helper process.
const crowdHelperEnv = "TENANTPLANE_CROWD_HELPER"

const (
	crowdTenants = 30 // tenants provisioning when the helper is killed
	crowdHeld    = 20 // of them, those held mid-job by the helper: its workers
)

// crowdSteps are where the helper holds its jobs, in turn: just picked up,
// role made, database made, grants and schema recorded.
var crowdSteps = []string{"picked", "role", "database", "schema"}

func crowdSlug(i int) string { return fmt.Sprintf("crowd-%02d", i) }

// crowdHelperProcess is not a test: it is the process that
// TestKilledProcessJobsResumeWithinSeconds starts and kills. It provisions
// with crowdHeld workers (template path, no warm pool), and holds each job
// at one of crowdSteps (by its tenant's number), saying "reached <slug>" on
// stdout, until the process is killed; the other tenants wait in the queue.
func crowdHelperProcess() error {
	ctx := context.Background()
	store, err := helperStore(ctx)
	if err != nil {
		return err
	}
	p, err := New(store, Config{
		Logger: helperLogger(), WarmPoolSize: -1, Workers: crowdHeld,
		afterStep: func(ctx context.Context, slug, step string) error {
			var i int
			if _, err := fmt.Sscanf(slug, "crowd-%d", &i); err != nil || crowdSteps[i%len(crowdSteps)] != step {
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

// TestKilledProcessJobsResumeWithinSeconds: the only process is killed
// (SIGKILL) with 30 tenants provisioning, 20 of them held by its workers at
// every step of the job, 10 queued. A process started afterwards, with
// River's default RescueAfter of 3 minutes, sees that the dead process's job
// client stopped beating and takes its jobs back: every tenant is active
// within 30 s of the kill, activated once, and nothing is left orphaned.
func TestKilledProcessJobsResumeWithinSeconds(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()

	creator, err := New(b.store, b.cfg) // not started
	require.NoError(t, err)
	tenants := make([]catalog.Tenant, crowdTenants)
	for i := range tenants {
		tenants[i], _, err = creator.CreateTenant(ctx, TenantSpec{Slug: crowdSlug(i), Plan: "basic"}, "test")
		require.NoError(t, err)
	}

	stdout := helperproc.NewLines(2 * crowdTenants)
	helper := helperproc.Start(t, stdout, crowdHelperEnv+"=1", "CATALOG_DSN="+b.dsn, "SECRET_KEY="+b.key)
	reached := map[string]bool{}
	timeout := time.After(60 * time.Second)
	for len(reached) < crowdHeld {
		select {
		case line := <-stdout.C():
			slug, ok := strings.CutPrefix(line, "reached ")
			require.True(t, ok, "unexpected line from the helper process: %q", line)
			reached[slug] = true
		case <-helper.Exited():
			t.Fatalf("the helper process exited (%v) with only %d jobs held: %v", helper.Err(), len(reached), slices.Sorted(maps.Keys(reached)))
		case <-timeout:
			t.Fatalf("the helper process held only %d jobs within 60s: %v", len(reached), slices.Sorted(maps.Keys(reached)))
		}
	}
	helper.Kill(t)
	killedAt := time.Now()

	// Every tenant is provisioning; the dead process holds 20 jobs.
	running := 0
	for _, tn := range tenants {
		got, err := b.store.GetTenant(ctx, tn.Slug)
		require.NoError(t, err)
		require.Equal(t, catalog.TenantProvisioning, got.State, tn.Slug)
		if job := provisionJob(t, b.store, tn.ID); job.State == "running" {
			running++
		}
	}
	require.Equal(t, crowdHeld, running, "jobs the killed process left running")

	// The restart: River's defaults, RescueAfter 3 minutes among them.
	restarted := b.start(t, b.cfg) // its own job registry, with jobs.Config's defaults
	waitAllActive(t, b.store, tenants, 30*time.Second-time.Since(killedAt))
	t.Logf("all %d tenants active %s after the kill (%d jobs taken back from the dead process)",
		crowdTenants, time.Since(killedAt).Round(100*time.Millisecond), crowdHeld)

	var databases, roles []string
	for _, tn := range tenants {
		got, err := b.store.GetTenant(ctx, tn.Slug)
		require.NoError(t, err)
		databases, roles = append(databases, got.Database), append(roles, got.Role)
		events, err := b.store.ListAudit(ctx, catalog.AuditFilter{TenantID: tn.ID, Action: "tenant.activated"})
		require.NoError(t, err)
		require.Len(t, events, 1, "%s: activated once", tn.Slug)
		if reached[tn.Slug] {
			require.GreaterOrEqual(t, provisionJob(t, b.store, tn.ID).Attempt, 2, "%s: finished by a new attempt", tn.Slug)
		}
	}
	sort.Strings(databases)
	sort.Strings(roles)
	dbs, rls := serverObjects(t, b)
	require.Equal(t, databases, dbs, "the tenants' databases, and no other")
	require.Equal(t, roles, rls, "the tenants' roles, and no other")
	orphans, err := restarted.Reconcile(ctx, false)
	require.NoError(t, err)
	require.Empty(t, orphans)

	// The dead client is forgotten; the live one is recorded.
	var clients []string
	require.NoError(t, b.store.Pool().QueryRow(ctx, `SELECT array_agg(id ORDER BY id) FROM job_clients`).Scan(&clients))
	require.Equal(t, []string{restarted.river().ID()}, clients)
}

// TestSlowClientKeepsItsJob: a job held, long past ClientDeadAfter, by a
// process that keeps beating is not taken from it by the rescuers (its own
// and another process's), which in the same time do take back a job whose
// client is dead. The slow job then finishes on its first attempt, and the
// tenant is activated once.
func TestSlowClientKeepsItsJob(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	cfg := b.cfg
	cfg.WarmPoolSize = -1
	jobsCfg := jobs.Config{HeartbeatInterval: 100 * time.Millisecond, ClientDeadAfter: time.Second}

	// The slow process holds its tenant's job after the role step until let go.
	reached, release := make(chan struct{}), make(chan struct{})
	slowCfg := cfg
	slowCfg.afterStep = func(ctx context.Context, slug, step string) error {
		if slug != "slow" || step != "role" {
			return nil
		}
		close(reached)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	slowCfg.Workers = 1
	slowCfg.Jobs = jobs.NewRegistry()
	slow, err := New(b.store, slowCfg)
	require.NoError(t, err)
	require.NoError(t, slowCfg.Jobs.Open(b.store.Pool(), jobsCfg))
	slowTenant, _, err := slow.CreateTenant(ctx, TenantSpec{Slug: "slow", Plan: "basic"}, "test")
	require.NoError(t, err)
	require.NoError(t, slow.Start(ctx))
	require.NoError(t, slowCfg.Jobs.Start(ctx))
	t.Cleanup(func() {
		_ = slowCfg.Jobs.Stop(context.Background())
		_ = slow.Stop(context.Background())
	})
	var releaseOnce sync.Once
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(letGo) // before the Stop above, should the test fail holding the job
	select {
	case <-reached:
	case <-time.After(30 * time.Second):
		t.Fatal("the slow process did not reach the role step within 30s")
	}

	// A job whose client is dead: never seen beating, its row long gone.
	// (The slow process's one worker is busy: it fetches no other job.)
	orphaned, _, err := slow.CreateTenant(ctx, TenantSpec{Slug: "orphaned", Plan: "basic"}, "test")
	require.NoError(t, err)
	_, err = b.store.Pool().Exec(ctx, `UPDATE river_job SET state = 'running', attempt = 1,
		attempted_at = now(), attempted_by = ARRAY[$2::text] WHERE kind = $1 AND args->>'tenant_id' = $3`,
		provisionArgs{}.Kind(), jobs.ClientIDPrefix+"deadhost_1_000000", orphaned.ID)
	require.NoError(t, err)

	// Another process, rescuing every 100ms, for 5 times ClientDeadAfter.
	b.startWithJobs(t, cfg, jobsCfg)
	waitAllActive(t, b.store, []catalog.Tenant{orphaned}, 10*time.Second)
	time.Sleep(5 * jobsCfg.ClientDeadAfter)

	var state string
	var attempt int
	var attemptedBy []string
	var errs []string
	require.NoError(t, b.store.Pool().QueryRow(ctx, `SELECT state::text, attempt, attempted_by, coalesce(errors::text[], '{}')
		FROM river_job WHERE kind = $1 AND args->>'tenant_id' = $2`, provisionArgs{}.Kind(), slowTenant.ID).
		Scan(&state, &attempt, &attemptedBy, &errs))
	require.Equal(t, "running", state, "the slow process's job: still running")
	require.Equal(t, []string{slow.river().ID()}, attemptedBy, "still held by the slow process alone")
	require.Equal(t, 1, attempt)
	require.Empty(t, errs, "never rescued")
	got, err := b.store.GetTenant(ctx, "slow")
	require.NoError(t, err)
	require.Equal(t, catalog.TenantProvisioning, got.State, "nobody else finished the slow tenant")

	letGo()
	waitAllActive(t, b.store, []catalog.Tenant{slowTenant}, 10*time.Second)
	require.Eventually(t, func() bool {
		job := provisionJob(t, b.store, slowTenant.ID)
		return job.State == "completed" && job.Attempt == 1
	}, 10*time.Second, 20*time.Millisecond, "the slow job completes on its first attempt")
	for _, tn := range []catalog.Tenant{orphaned, slowTenant} {
		events, err := b.store.ListAudit(ctx, catalog.AuditFilter{TenantID: tn.ID, Action: "tenant.activated"})
		require.NoError(t, err)
		require.Len(t, events, 1, "%s: activated once", tn.Slug)
	}
	require.Equal(t, 2, provisionJob(t, b.store, orphaned.ID).Attempt, "the orphaned job: rescued, and run once more")
}
