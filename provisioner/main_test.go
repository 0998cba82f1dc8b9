package provisioner

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		// This process is the one TestFanoutKilledProcessResumes kills.
		if err := fanoutHelperProcess(); err != nil {
			fmt.Fprintln(os.Stderr, "fan-out helper process:", err)
			os.Exit(2)
		}
	}
	pgtest.Main(m)
}

var catalogTemplate = pgtest.WithTemplate("catalog-"+pgtest.HashFS(catalog.Migrations()), catalog.Migrate)

// testBundle is a migrated catalog of the test's own and a private tenant server registered in it.
type testBundle struct {
	store  *catalog.Store
	server *pgtest.Server
	cfg    Config
}

func setup(t testing.TB) *testBundle {
	t.Helper()
	ctx := context.Background()
	key, err := catalog.ParseKey(catalog.NewKey())
	require.NoError(t, err)
	cipher, err := catalog.NewCipher(key)
	require.NoError(t, err)
	store, err := catalog.Open(ctx, pgtest.NewDB(t, catalogTemplate), cipher, catalog.StoreConfig{})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	b := &testBundle{store: store, server: pgtest.NewServer(t), cfg: Config{
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}}
	p, err := New(b.store, b.cfg) // not started: tests start the workers they want
	require.NoError(t, err)
	_, err = p.RegisterServer(ctx, ServerSpec{Name: "pg-1", DSN: b.server.DSN("postgres")}, "test")
	require.NoError(t, err)
	return b
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
