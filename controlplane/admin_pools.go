package controlplane

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/httpapi"
)

// poolRoutes is the admin API of pool databases: the shared databases that
// hold pooled tenants' rows, one or more per server.
func (a *App) poolRoutes(v1 *gin.RouterGroup) {
	v1.POST("/pools", a.createPool)
	v1.GET("/pools", a.listPools)
	v1.GET("/pools/:id", getByID("pool database", a.store.GetPoolDatabase))
	v1.POST("/pools/:id/retry", a.retryPool)
}

// retryPool makes again a pool database left failed or provisioning (its
// server was down), or makes a retired one (its server was evacuated)
// active again: every step is idempotent.
func (a *App) retryPool(c *gin.Context) {
	id, ok := numericID(c, "pool database")
	if !ok {
		return
	}
	p, err := a.store.GetPoolDatabase(c, id)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if p.State == catalog.PoolActive {
		httpapi.Fail(c, catalog.CodeConflict, "pool database %s is active: nothing to retry", p.Name)
		return
	}
	if p, err = a.prov.EnsurePool(c, id); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, p)
}

// poolSpec is the body of POST /pools.
type poolSpec struct {
	Server   string `json:"server"`
	Capacity int    `json:"capacity"`
}

// createPool makes a pool database on a server (201 once it is ready); a
// server that fails the build leaves the pool failed, with the reason (503).
func (a *App) createPool(c *gin.Context) {
	var spec poolSpec
	if err := httpapi.BindJSON(c, &spec); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if spec.Capacity == 0 {
		spec.Capacity = 1000
	}
	p, err := a.prov.CreatePool(c, spec.Server, spec.Capacity, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusCreated, p)
}

func (a *App) listPools(c *gin.Context) {
	pools, err := a.store.ListPoolDatabases(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"pools": pools})
}
