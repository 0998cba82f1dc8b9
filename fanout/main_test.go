package fanout

import (
	"context"
	"log/slog"
	"os"
	"testing"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/helperproc"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

func TestMain(m *testing.M) {
	// A test that kills a process starts this binary again (helperproc.Start) as
	// that process: the variable it sets says which one, and no test runs.
	if os.Getenv(helperEnv) != "" {
		helperproc.Run("fan-out", fanoutHelperProcess) // TestFanoutKilledProcessResumes
	}
	pgtest.Main(m)
}

var catalogTemplate = pgtest.WithTemplate("catalog-"+pgtest.HashFS(catalog.Migrations()), catalog.Migrate)

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
