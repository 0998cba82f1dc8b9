package catalog_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// testBundle is what most catalog tests need: a migrated catalog of their own.
type testBundle struct {
	dsn    string
	store  *catalog.Store
	cipher *catalog.Cipher
}

// migratedTemplate clones a catalog migrated once per test process.
var migratedTemplate = pgtest.WithTemplate("catalog-"+pgtest.HashFS(catalog.Migrations()), catalog.Migrate)

func setup(t *testing.T) *testBundle {
	t.Helper()
	dsn := pgtest.NewDB(t, migratedTemplate)
	key, err := catalog.ParseKey(catalog.NewKey())
	require.NoError(t, err)
	cipher, err := catalog.NewCipher(key)
	require.NoError(t, err)
	store, err := catalog.Open(context.Background(), dsn, cipher, catalog.StoreConfig{})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	return &testBundle{dsn: dsn, store: store, cipher: cipher}
}
