// Package openapitest holds an API's OpenAPI document to the gin engine that
// serves the API, so the two cannot drift apart. It is for tests only.
package openapitest

import (
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/tenantplane/tenantplane/internal/httpapi"
)

// Check compares the document raw (named file in messages) with engine's
// routes, both ways; checks that every operation answers some 2xx and every
// other answer is the shared error body; and that exactly the operations
// under protectedPrefix need the document's security scheme, scheme.
func Check(t *testing.T, file string, raw []byte, engine *gin.Engine, scheme, protectedPrefix string) {
	t.Helper()
	var d doc
	require.NoError(t, yaml.Unmarshal(raw, &d))
	require.Equal(t, "3.0.3", d.OpenAPI)
	ops := d.operations(t)
	names := slices.Sorted(maps.Keys(ops))

	t.Run("every route is documented and every operation routed", func(t *testing.T) {
		routed := routeOperations(engine.Routes())
		if missing := lacking(routed, names); len(missing) > 0 {
			t.Errorf("routes missing from %s:\n  %s", file, strings.Join(missing, "\n  "))
		}
		if extra := lacking(names, routed); len(extra) > 0 {
			t.Errorf("operations in %s that no route serves:\n  %s", file, strings.Join(extra, "\n  "))
		}
	})
	t.Run("responses", func(t *testing.T) {
		d.checkErrorSchema(t)
		for _, name := range names {
			d.checkResponses(t, name, ops[name])
		}
	})
	t.Run("only "+protectedPrefix+" needs "+scheme, func(t *testing.T) {
		require.Equal(t, []map[string][]string{{scheme: {}}}, d.Security)
		for _, name := range names {
			public := ops[name].Security != nil && len(*ops[name].Security) == 0
			if want := !strings.Contains(name, " "+protectedPrefix); public != want {
				t.Errorf("%s: security: [] is %v, want %v", name, public, want)
			}
		}
	})
}

// Get fetches url and returns its status, content type and body.
func Get(t *testing.T, url string) (status int, contentType, body string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(raw)
}

// The parts of an OpenAPI document the checks read.
type doc struct {
	OpenAPI    string                          `yaml:"openapi"`
	Security   []map[string][]string           `yaml:"security"`
	Paths      map[string]map[string]yaml.Node `yaml:"paths"`
	Components struct {
		Responses map[string]response `yaml:"responses"`
		Schemas   map[string]schema   `yaml:"schemas"`
	} `yaml:"components"`
}

type operation struct {
	Security  *[]map[string][]string `yaml:"security"` // nil: the document's; empty: none
	Responses map[string]response    `yaml:"responses"`
}

type response struct {
	Ref     string `yaml:"$ref"`
	Content map[string]struct {
		Schema schema `yaml:"schema"`
	} `yaml:"content"`
}

type schema struct {
	Ref        string            `yaml:"$ref"`
	Properties map[string]schema `yaml:"properties"`
}

const errorRef = "#/components/schemas/Error"

// operations returns the document's operations by "METHOD /path".
func (d doc) operations(t *testing.T) map[string]operation {
	t.Helper()
	ops := map[string]operation{}
	for path, item := range d.Paths {
		for key, node := range item {
			if !slices.Contains([]string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}, key) {
				continue // parameters, summary, ...
			}
			var op operation
			require.NoError(t, node.Decode(&op), "%s %s", key, path)
			ops[strings.ToUpper(key)+" "+path] = op
		}
	}
	return ops
}

// checkErrorSchema checks that the shared Error schema has the shape
// httpapi.ErrorBody encodes to.
func (d doc) checkErrorSchema(t *testing.T) {
	t.Helper()
	raw, err := json.Marshal(httpapi.ErrorBody{})
	require.NoError(t, err)
	var body map[string]map[string]any
	require.NoError(t, json.Unmarshal(raw, &body))
	s, ok := d.Components.Schemas["Error"]
	require.True(t, ok, "components.schemas.Error is missing")
	require.ElementsMatch(t, slices.Collect(maps.Keys(body)), slices.Collect(maps.Keys(s.Properties)))
	require.ElementsMatch(t, slices.Collect(maps.Keys(body["error"])), slices.Collect(maps.Keys(s.Properties["error"].Properties)))
}

// checkResponses checks that op answers some 2xx and that every other
// answer is the shared error body.
func (d doc) checkResponses(t *testing.T, name string, op operation) {
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
		if got := resp.Content["application/json"].Schema.Ref; got != errorRef {
			t.Errorf("%s: response %s is not application/json %s (schema $ref %q)", name, status, errorRef, got)
		}
	}
	if !success {
		t.Errorf("%s has no 2xx response", name)
	}
}

var paramRE = regexp.MustCompile(`[:*]([A-Za-z0-9_]+)`)

// routeOperations returns gin's routes as "METHOD /path/{param}", sorted.
func routeOperations(routes gin.RoutesInfo) []string {
	out := make([]string, 0, len(routes))
	for _, r := range routes {
		out = append(out, r.Method+" "+PathOf(r.Path))
	}
	slices.Sort(out)
	return out
}

// PathOf returns a gin path pattern as OpenAPI writes it: /users/{id}
// for /users/:id.
func PathOf(ginPath string) string { return paramRE.ReplaceAllString(ginPath, "{$1}") }

// lacking returns the elements of want that got lacks.
func lacking(want, got []string) []string {
	var out []string
	for _, w := range want {
		if !slices.Contains(got, w) {
			out = append(out, w)
		}
	}
	return out
}
