package httpapi

import (
	"context"
	"net/http"

	"github.com/gin-gonic/gin"
	"github.com/tenantplane/tenantplane/catalog"
)

// HealthRoutes adds GET /healthz (the process answers) and GET /readyz (ready
// reports nil: the dependencies answer) to e.
func HealthRoutes(e *gin.Engine, ready func(context.Context) error) {
	e.GET("/healthz", func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"status": "ok"}) })
	e.GET("/readyz", func(c *gin.Context) {
		if err := ready(c); err != nil {
			_ = c.Error(err)
			WriteError(c, catalog.WrapError(catalog.CodeUnavailable, err, "not ready: %s", catalog.MessageOf(err)))
			return
		}
		c.JSON(http.StatusOK, gin.H{"status": "ready"})
	})
}
