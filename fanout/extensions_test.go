package fanout

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
)

// TestRunRefusesAnExtensionTheRoleMayNotCreate: a migration that creates an
// untrusted extension is refused before the run starts, naming the
// extension and the privilege, on a server whose role is not a superuser;
// a trusted one (pgcrypto) goes through and reaches every tenant.
func TestRunRefusesAnExtensionTheRoleMayNotCreate(t *testing.T) {
	t.Parallel()
	b := setupFanout(t)
	ctx := context.Background()
	seeded := seedTenants(t, b.service(t, nil, false, nil), "ext", 2)

	dir := schemaDir(t, map[string]string{
		"000003_stats.up.sql":   "-- CREATE EXTENSION commented_out;\nCREATE EXTENSION IF NOT EXISTS pg_stat_statements;\n",
		"000003_stats.down.sql": "DROP EXTENSION pg_stat_statements;\n",
	})
	p := b.service(t, loadSchema(t, dir), true, nil)
	_, err := p.StartRun(ctx, RunSpec{}, "test")
	require.ErrorContains(t, err, `migration 3 creates extension "pg_stat_statements", which only a superuser may create, and the role "tpadmin"`)
	var ce *catalog.Error
	require.True(t, errors.As(err, &ce) && ce.Code == catalog.CodeInvalid, "%v", err)
	runs, _, err := p.ListRuns(ctx, 0, "")
	require.NoError(t, err)
	require.Empty(t, runs, "nothing was started")

	dir = schemaDir(t, map[string]string{
		"000003_crypto.up.sql":   "CREATE EXTENSION IF NOT EXISTS pgcrypto;\n",
		"000003_crypto.down.sql": "DROP EXTENSION pgcrypto;\n",
	})
	p = b.service(t, loadSchema(t, dir), true, nil)
	run, err := p.StartRun(ctx, RunSpec{}, "test")
	require.NoError(t, err)
	run = waitRun(t, b.runs, run.ID, time.Minute, RunDone, RunHalted)
	require.Equal(t, RunDone, run.State, "%+v", run.Counts)
	for _, tn := range seeded {
		require.True(t, tenantQuery[bool](t, b, tn, `SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pgcrypto')`))
	}
}
