package router

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/openapitest"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// TestOpenAPIDocumentMatchesTenantAPI holds openapi.yaml to the tenant
// engine, so the document cannot drift from the routes.
func TestOpenAPIDocumentMatchesTenantAPI(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	key, err := catalog.ParseKey(catalog.NewKey())
	require.NoError(t, err)
	cipher, err := catalog.NewCipher(key)
	require.NoError(t, err)
	store, err := catalog.Open(ctx, pgtest.NewDB(t, catalogTemplate), cipher, catalog.StoreConfig{})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	r, err := New(Config{Store: store, Watcher: catalog.NewWatcher(store, nil), Ready: store.Ping, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() { require.NoError(t, r.Stop(ctx)) })
	srv := httptest.NewServer(r.Handler())
	t.Cleanup(srv.Close)

	openapitest.Check(t, "router/openapi.yaml", openAPI, r.engine, "tenantKey", "/v1/")

	t.Run("served", func(t *testing.T) {
		status, contentType, body := openapitest.Get(t, srv.URL+"/openapi.yaml")
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, "application/yaml", contentType)
		require.Equal(t, string(openAPI), body)
	})
}
