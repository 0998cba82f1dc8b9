package controlplane

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/internal/openapitest"
)

// TestOpenAPIDocumentMatchesAdminAPI holds openapi.yaml to the admin engine
// the App really serves, so the document cannot drift from the routes.
func TestOpenAPIDocumentMatchesAdminAPI(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	openapitest.Check(t, "controlplane/openapi.yaml", openAPI, b.app.adminEngine, "adminToken", "/admin/v1/")

	t.Run("served on the admin address only", func(t *testing.T) {
		status, contentType, body := openapitest.Get(t, b.admin+"/openapi.yaml")
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, "application/yaml", contentType)
		require.Equal(t, string(openAPI), body)

		status, _, body = openapitest.Get(t, b.api+"/openapi.yaml")
		require.Equal(t, http.StatusOK, status)
		require.NotEqual(t, string(openAPI), body, "the tenant address serves the tenant API's document")
	})
}
