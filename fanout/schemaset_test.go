package fanout

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/migrations"
)

// TestFanoutRunOfOtherMigrations: a run is made by a process with one set
// of tenant migrations (a directory), and a process with another set (the
// next deploy, one migration more) runs beside it. While the first works
// on the run, the second leaves it alone, and says in the run's report
// that it cannot work on it. Once the first is gone, nobody with the run's
// migrations is left: the second refuses to resume it (that would queue
// workers nobody takes), and fails it after AbandonAfter with a reason that
// names both sets and what to do, instead of leaving it running for ever
// and keeping any new run from starting. A process with the run's
// migrations resumes it to the end; the second's own run then takes every
// tenant to its newest version. No tenant is left dirty or migrated by a
// process with the wrong set.
func TestFanoutRunOfOtherMigrations(t *testing.T) {
	t.Parallel()
	b := setupFanout(t)
	ctx := context.Background()
	v0 := b.service(t, loadSchema(t, schemaDir(t, nil)), false, nil)
	tenants := seedTenants(t, v0, "sets", 8)
	next := int64(migrations.Embedded().Latest()) + 1
	slow := map[string]string{
		fmt.Sprintf("%06d_slow.up.sql", next):   "SELECT pg_sleep(0.6); CREATE TABLE slow_step (id int);",
		fmt.Sprintf("%06d_slow.down.sql", next): "DROP TABLE slow_step;",
	}
	firstDir := schemaDir(t, slow)
	more := map[string]string{
		fmt.Sprintf("%06d_more.up.sql", next+1):   "CREATE TABLE more_step (id int);",
		fmt.Sprintf("%06d_more.down.sql", next+1): "DROP TABLE more_step;",
	}
	for k, v := range slow {
		more[k] = v
	}
	first := b.service(t, loadSchema(t, firstDir), true, nil)
	second := b.service(t, loadSchema(t, schemaDir(t, more)), true, func(c *Config) { c.AbandonAfter = 3 * time.Second })
	require.NotEqual(t, first.Schema().Hash(), second.Schema().Hash())

	run, err := first.StartRun(ctx, RunSpec{Concurrency: 1, Canary: ptr(0)}, "test")
	require.NoError(t, err)
	require.EqualValues(t, next, run.TargetVersion)

	// Both processes live: the run goes on for longer than AbandonAfter,
	// the second never touching it.
	rep, err := second.Report(ctx, run.ID)
	require.NoError(t, err)
	require.Contains(t, rep.Warning, "the run was made with other tenant migrations (schema "+first.Schema().Hash()+")")
	require.Contains(t, rep.Warning, "schema "+second.Schema().Hash())
	require.Eventually(t, func() bool {
		r, err := b.runs.GetMigrationRun(ctx, run.ID)
		require.NoError(t, err)
		require.Equal(t, RunRunning, r.State, "the run is not failed while a process with its migrations works on it: %s", r.Reason)
		return r.Counts.Done >= 5
	}, 60*time.Second, 50*time.Millisecond)

	// The first process goes (a deploy): its current tenant is finished,
	// the rest wait.
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	require.NoError(t, first.Stop(stopCtx))
	cancel()
	_, err = second.ChangeRun(ctx, run.ID, RunResume, "test")
	require.ErrorIs(t, err, catalog.ErrConflict)
	require.ErrorContains(t, err, "resume it from a process that has its migrations")
	_, err = second.StartRun(ctx, RunSpec{}, "test")
	require.ErrorIs(t, err, catalog.ErrConflict, "the run is still open")

	failed := waitRun(t, b.runs, run.ID, 30*time.Second, RunFailed, RunDone)
	require.Equal(t, RunFailed, failed.State)
	t.Logf("run %d: %s", run.ID, failed.Reason)
	require.Contains(t, failed.Reason, fmt.Sprintf("no process with this run's tenant migrations (schema %s, target version %d) has worked on it for 3s",
		first.Schema().Hash(), next))
	require.Contains(t, failed.Reason, "this process has other ones (schema "+second.Schema().Hash())
	require.Contains(t, failed.Reason, "resume the run from a process that has its migrations, or start a new one")
	require.Positive(t, failed.Counts.Pending+failed.Counts.Running, "tenants were left when the process went")
	for _, tn := range tenants {
		v, dirty := b.schemaOf(t, tn)
		require.Contains(t, []int64{next - 1, next}, v, "%s: untouched by the other set", tn.Slug)
		require.False(t, dirty, tn.Slug)
	}

	// A process with the run's migrations resumes it to the end.
	again := b.service(t, loadSchema(t, firstDir), true, nil)
	_, err = again.ChangeRun(ctx, run.ID, RunResume, "test")
	require.NoError(t, err)
	done := waitRun(t, b.runs, run.ID, 60*time.Second, RunDone, RunFailed, RunHalted)
	require.Equal(t, RunDone, done.State, done.Reason)
	for _, tn := range tenants {
		v, dirty := b.schemaOf(t, tn)
		require.Equal(t, next, v, tn.Slug)
		require.False(t, dirty, tn.Slug)
	}

	// The new set's own run: every tenant at its newest version.
	newer, err := second.StartRun(ctx, RunSpec{Concurrency: 4}, "test")
	require.NoError(t, err)
	newer = waitRun(t, b.runs, newer.ID, 60*time.Second, RunDone, RunFailed, RunHalted)
	require.Equal(t, RunDone, newer.State, newer.Reason)
	for _, tn := range tenants {
		v, dirty := b.schemaOf(t, tn)
		require.Equal(t, next+1, v, tn.Slug)
		require.False(t, dirty, tn.Slug)
	}
}
