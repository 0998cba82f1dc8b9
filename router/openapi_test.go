package router

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/httpapi"
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
	r.Start(ctx)
	t.Cleanup(func() { require.NoError(t, r.Stop(ctx)) })
	srv := httptest.NewServer(r.Handler())
	t.Cleanup(srv.Close)

	var doc openAPIDoc
	require.NoError(t, yaml.Unmarshal(openAPI, &doc))
	require.Equal(t, "3.0.3", doc.OpenAPI)
	ops := doc.operations(t)

	t.Run("every route is documented and every operation routed", func(t *testing.T) {
		documented := slices.Sorted(maps.Keys(ops))
		routed := openAPIRouteOperations(r.engine.Routes())
		if missing := openAPIMissing(routed, documented); len(missing) > 0 {
			t.Errorf("routes missing from router/openapi.yaml:\n  %s", strings.Join(missing, "\n  "))
		}
		if extra := openAPIMissing(documented, routed); len(extra) > 0 {
			t.Errorf("operations in router/openapi.yaml that no route serves:\n  %s", strings.Join(extra, "\n  "))
		}
	})

	t.Run("responses", func(t *testing.T) {
		doc.checkErrorSchema(t)
		for _, name := range slices.Sorted(maps.Keys(ops)) {
			doc.checkResponses(t, name, ops[name])
		}
	})

	t.Run("only /v1 needs a key", func(t *testing.T) {
		require.Equal(t, []map[string][]string{{"tenantKey": {}}}, doc.Security)
		for _, name := range slices.Sorted(maps.Keys(ops)) {
			public := ops[name].Security != nil && len(*ops[name].Security) == 0
			if want := !strings.Contains(name, " /v1/"); public != want {
				t.Errorf("%s: security: [] is %v, want %v", name, public, want)
			}
		}
	})

	t.Run("served", func(t *testing.T) {
		resp, err := http.Get(srv.URL + "/openapi.yaml")
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "application/yaml", resp.Header.Get("Content-Type"))
		require.Equal(t, string(openAPI), string(body))
	})
}

// The parts of an OpenAPI document the test checks.
type openAPIDoc struct {
	OpenAPI    string                          `yaml:"openapi"`
	Security   []map[string][]string           `yaml:"security"`
	Paths      map[string]map[string]yaml.Node `yaml:"paths"`
	Components struct {
		Responses map[string]openAPIResponse `yaml:"responses"`
		Schemas   map[string]openAPISchema   `yaml:"schemas"`
	} `yaml:"components"`
}

type openAPIOperation struct {
	Security  *[]map[string][]string     `yaml:"security"` // nil: the document's; empty: none
	Responses map[string]openAPIResponse `yaml:"responses"`
}

type openAPIResponse struct {
	Ref     string `yaml:"$ref"`
	Content map[string]struct {
		Schema openAPISchema `yaml:"schema"`
	} `yaml:"content"`
}

type openAPISchema struct {
	Ref        string                   `yaml:"$ref"`
	Properties map[string]openAPISchema `yaml:"properties"`
}

const openAPIErrorRef = "#/components/schemas/Error"

// operations returns the document's operations by "METHOD /path".
func (d openAPIDoc) operations(t *testing.T) map[string]openAPIOperation {
	t.Helper()
	ops := map[string]openAPIOperation{}
	for path, item := range d.Paths {
		for key, node := range item {
			if !slices.Contains([]string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}, key) {
				continue // parameters, summary, ...
			}
			var op openAPIOperation
			require.NoError(t, node.Decode(&op), "%s %s", key, path)
			ops[strings.ToUpper(key)+" "+path] = op
		}
	}
	return ops
}

// checkErrorSchema checks that the shared Error schema has the shape
// httpapi.ErrorBody encodes to.
func (d openAPIDoc) checkErrorSchema(t *testing.T) {
	t.Helper()
	raw, err := json.Marshal(httpapi.ErrorBody{})
	require.NoError(t, err)
	var body map[string]map[string]any
	require.NoError(t, json.Unmarshal(raw, &body))
	schema, ok := d.Components.Schemas["Error"]
	require.True(t, ok, "components.schemas.Error is missing")
	require.ElementsMatch(t, slices.Collect(maps.Keys(body)), slices.Collect(maps.Keys(schema.Properties)))
	require.ElementsMatch(t, slices.Collect(maps.Keys(body["error"])), slices.Collect(maps.Keys(schema.Properties["error"].Properties)))
}

// checkResponses checks that op answers some 2xx and that every other
// answer is the shared error body.
func (d openAPIDoc) checkResponses(t *testing.T, name string, op openAPIOperation) {
	t.Helper()
	success := false
	for status, resp := range op.Responses {
		if strings.HasPrefix(status, "2") {
			success = true
			continue
		}
		if resp.Ref != "" {
			shared, ok := d.Components.Responses[strings.TrimPrefix(resp.Ref, "#/components/responses/")]
			if !ok {
				t.Errorf("%s: response %s refers to %s, which is not in components.responses", name, status, resp.Ref)
				continue
			}
			resp = shared
		}
		if got := resp.Content["application/json"].Schema.Ref; got != openAPIErrorRef {
			t.Errorf("%s: response %s is not application/json %s (schema $ref %q)", name, status, openAPIErrorRef, got)
		}
	}
	if !success {
		t.Errorf("%s has no 2xx response", name)
	}
}

var openAPIParamRE = regexp.MustCompile(`[:*]([A-Za-z0-9_]+)`)

// openAPIRouteOperations returns gin's routes as "METHOD /path/{param}", sorted.
func openAPIRouteOperations(routes gin.RoutesInfo) []string {
	out := make([]string, 0, len(routes))
	for _, r := range routes {
		out = append(out, r.Method+" "+openAPIParamRE.ReplaceAllString(r.Path, "{$1}"))
	}
	slices.Sort(out)
	return out
}

// openAPIMissing returns the elements of want that got lacks.
func openAPIMissing(want, got []string) []string {
	var out []string
	for _, w := range want {
		if !slices.Contains(got, w) {
			out = append(out, w)
		}
	}
	return out
}
