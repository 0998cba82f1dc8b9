package httpapi

import (
	"net/http"

	"github.com/gin-gonic/gin"
)

// OpenAPIRoute adds GET /openapi.yaml to e: doc, the API's OpenAPI document,
// served without credentials so tools can fetch it before they hold any.
func OpenAPIRoute(e *gin.Engine, doc []byte) {
	e.GET("/openapi.yaml", func(c *gin.Context) { c.Data(http.StatusOK, "application/yaml", doc) })
}
