package provisioner

import (
	"context"
	"log/slog"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/helperproc"
	"github.com/tenantplane/tenantplane/internal/jobs"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

func TestMain(m *testing.M) {
	// A test that kills a process starts this binary again (helperproc.Start) as
	// that process: the variable it sets says which one, and no test runs.
	switch {
	case os.Getenv(provisionHelperEnv) != "":
		helperproc.Run("provisioning", provisionHelperProcess) // TestProvisioningKilledProcessFinishes
	case os.Getenv(crowdHelperEnv) != "":
		helperproc.Run("crowd", crowdHelperProcess) // TestKilledProcessJobsResumeWithinSeconds
	}
	pgtest.Main(m)
}

var catalogTemplate = pgtest.WithTemplate("catalog-"+pgtest.HashFS(catalog.Migrations()), catalog.Migrate)

// testBundle is a migrated catalog of the test's own and a private tenant server registered in it.
type testBundle struct {
	dsn    string // the catalog
	key    string // the catalog's secret key
	store  *catalog.Store
	server *pgtest.Server
	cfg    Config
}

func setup(t testing.TB) *testBundle {
	t.Helper()
	ctx := context.Background()
	b := &testBundle{dsn: pgtest.NewDB(t, catalogTemplate), key: catalog.NewKey(), cfg: Config{
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}}
	store, err := openCatalog(ctx, b.dsn, b.key, catalog.StoreConfig{})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	b.store, b.server = store, pgtest.NewServer(t)
	p, err := New(b.store, b.cfg) // not started: tests start the workers they want
	require.NoError(t, err)
	_, err = p.RegisterServer(ctx, ServerSpec{Name: "pg-1", DSN: b.server.ManagedDSN(t, "postgres")}, "test")
	require.NoError(t, err)
	return b
}

// openCatalog opens the catalog at dsn with its secret key (catalog.NewKey's form).
func openCatalog(ctx context.Context, dsn, key string, cfg catalog.StoreConfig) (*catalog.Store, error) {
	k, err := catalog.ParseKey(key)
	if err != nil {
		return nil, err
	}
	cipher, err := catalog.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return catalog.Open(ctx, dsn, cipher, cfg)
}

// start runs a provisioner (a process, as far as the catalog can tell) until the test ends.
func (b *testBundle) start(t testing.TB, cfg Config) *Provisioner {
	t.Helper()
	p, err := New(b.store, cfg)
	require.NoError(t, err)
	require.NoError(t, p.Start(context.Background()))
	t.Cleanup(func() { _ = p.Stop(context.Background()) })
	return p
}

// startWithJobs runs a provisioner whose job registry is opened with
// jobsCfg (as controlplane opens the process's one registry) until the test
// ends.
func (b *testBundle) startWithJobs(t testing.TB, cfg Config, jobsCfg jobs.Config) *Provisioner {
	t.Helper()
	ctx := context.Background()
	cfg.Jobs = jobs.NewRegistry()
	p, err := New(b.store, cfg)
	require.NoError(t, err)
	require.NoError(t, cfg.Jobs.Open(b.store.Pool(), jobsCfg))
	require.NoError(t, p.Start(ctx))
	require.NoError(t, cfg.Jobs.Start(ctx))
	t.Cleanup(func() {
		_ = cfg.Jobs.Stop(ctx) // the jobs first: they use the provisioner's pools
		_ = p.Stop(ctx)
	})
	return p
}

// Helper processes: the processes that the kill tests start and kill.
//
// The test starts its binary again (helperproc.Start) with a variable that
// TestMain knows, and with the catalog to work on in CATALOG_DSN and
// SECRET_KEY (helperStore opens it). The helper runs until it is killed, or
// until its stdin closes: the test that started it is gone (killed by go
// test's timeout, say), and nothing else would stop it.

// helperStore opens, in a helper process, the catalog its test named.
func helperStore(ctx context.Context) (*catalog.Store, error) {
	return openCatalog(ctx, os.Getenv("CATALOG_DSN"), os.Getenv("SECRET_KEY"), catalog.StoreConfig{MaxConns: 40})
}

// helperLogger is a helper process's logger: warnings and errors, on stderr,
// which the test passes through.
func helperLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
