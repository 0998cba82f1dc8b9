package controlplane

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"net/http"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/httpapi"
	"github.com/tenantplane/tenantplane/provisioner"
)

// adminActor names the admin token's holder in the audit log.
const adminActor = "admin"

// openAPI is the admin API's OpenAPI document; openapi_test.go keeps it
// matched to the routes below.
//
//go:embed openapi.yaml
var openAPI []byte

func (a *App) adminHandler(metrics *httpapi.Metrics) *gin.Engine {
	e := httpapi.NewEngine(httpapi.Config{API: "admin", Logger: a.logger, Metrics: metrics})
	httpapi.HealthRoutes(e, a.ready)
	httpapi.OpenAPIRoute(e, openAPI)
	e.GET("/metrics", gin.WrapH(promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{})))

	v1 := e.Group("/admin/v1", a.requireAdminToken(), a.catalogGuard)
	v1.GET("/servers", a.listServers)
	v1.POST("/servers", a.registerServer)
	v1.PATCH("/servers/:name", a.updateServer)
	a.tenantRoutes(v1)
	a.fanoutRoutes(v1)
	a.moveRoutes(v1)
	a.evacuationRoutes(v1)
	a.dataRoutes(v1)
	a.poolRoutes(v1)
	a.billingRoutes(e, v1)
	return e
}

// requireAdminToken checks the bearer token in constant time; comparing
// hashes keeps the token's length from leaking through timing too.
func (a *App) requireAdminToken() gin.HandlerFunc {
	want := sha256.Sum256([]byte(a.cfg.AdminToken))
	return func(c *gin.Context) {
		token, ok := strings.CutPrefix(c.GetHeader("Authorization"), "Bearer ")
		got := sha256.Sum256([]byte(token))
		if !ok || subtle.ConstantTimeCompare(want[:], got[:]) != 1 {
			c.Header("WWW-Authenticate", `Bearer realm="tenantplane-admin"`)
			httpapi.Fail(c, catalog.CodeUnauthorized, "missing or invalid admin token: send Authorization: Bearer $TENANTPLANE_ADMIN_TOKEN")
			return
		}
		c.Next()
	}
}

// numericID reads a numbered object's :id. An id that cannot be a number of
// ours is not found, the answer an unknown number gets: every {id} route of
// both APIs answers a malformed id 404 not_found, never 400.
func numericID(c *gin.Context, what string) (int64, bool) {
	id, err := strconv.ParseInt(c.Param("id"), 10, 64)
	if err != nil || id < 1 {
		httpapi.Fail(c, catalog.CodeNotFound, "%s %q not found", what, c.Param("id"))
		return 0, false
	}
	return id, true
}

// getByID answers GET of a numbered object: get reads it by its :id (a
// malformed one is 404, as numericID says), the answer is the object.
func getByID[T any](what string, get func(context.Context, int64) (T, error)) gin.HandlerFunc {
	return func(c *gin.Context) {
		id, ok := numericID(c, what)
		if !ok {
			return
		}
		v, err := get(c, id)
		if err != nil {
			httpapi.WriteError(c, err)
			return
		}
		c.JSON(http.StatusOK, v)
	}
}

func (a *App) listServers(c *gin.Context) {
	limit, cursor, err := httpapi.PageQuery(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	servers, next, err := a.store.ListServersPage(c, limit, cursor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, httpapi.Page("servers", servers, next, nil))
}

func (a *App) registerServer(c *gin.Context) {
	var spec provisioner.ServerSpec
	if err := httpapi.BindJSON(c, &spec); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	srv, err := a.prov.RegisterServer(c, spec, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusCreated, srv)
}

// updateServer changes a server's capacity and connection budget. The
// change is announced in its transaction: every router holds its share of
// the new budget within a second, without a restart.
func (a *App) updateServer(c *gin.Context) {
	var u catalog.ServerUpdate
	if err := httpapi.BindJSON(c, &u); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	srv, err := a.store.UpdateServer(c, c.Param("name"), u, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	a.logger.InfoContext(c, "server updated", "server", srv.Name, "capacity", srv.Capacity, "conn_budget", srv.ConnBudget)
	c.JSON(http.StatusOK, srv)
}
