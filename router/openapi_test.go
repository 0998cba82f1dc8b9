package router

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

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

	t.Run("every /v1 route declares its scope and the document states it", func(t *testing.T) {
		var d struct {
			Paths map[string]map[string]yaml.Node `yaml:"paths"`
		}
		require.NoError(t, yaml.Unmarshal(openAPI, &d))
		documented := map[string]string{}
		for path, item := range d.Paths {
			for method, node := range item {
				if method == "parameters" || method == "summary" || method == "description" {
					continue
				}
				var op struct {
					Scope *string `yaml:"x-scope"`
				}
				require.NoError(t, node.Decode(&op))
				name := strings.ToUpper(method) + " " + path
				if !strings.HasPrefix(path, "/v1/") {
					require.Nil(t, op.Scope, "%s needs no key, so no scope", name)
					continue
				}
				require.NotNil(t, op.Scope, "%s: x-scope is missing", name)
				scope := *op.Scope
				if scope == "none" {
					scope = scopeNone
				} else {
					require.Contains(t, catalog.Scopes, scope, "%s: x-scope", name)
				}
				documented[name] = scope
			}
		}
		routed := map[string]string{}
		for _, rt := range r.engine.Routes() {
			if !strings.HasPrefix(rt.Path, "/v1/") {
				continue
			}
			scope, ok := r.Scopes()[rt.Method+" "+rt.Path]
			require.True(t, ok, "%s %s is routed without a declared scope: register it with Router.route", rt.Method, rt.Path)
			routed[rt.Method+" "+openapitest.PathOf(rt.Path)] = scope
		}
		require.Equal(t, routed, documented)
	})

	t.Run("served", func(t *testing.T) {
		status, contentType, body := openapitest.Get(t, srv.URL+"/openapi.yaml")
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, "application/yaml", contentType)
		require.Equal(t, string(openAPI), body)
	})
}
