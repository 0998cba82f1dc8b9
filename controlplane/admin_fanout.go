package controlplane

import (
	"context"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/fanout"
	"github.com/tenantplane/tenantplane/internal/httpapi"
)

// fanoutRoutes is the admin API of migration fan-out: runs, the fleet's
// schema status, and forcing a dirty tenant's version.
func (a *App) fanoutRoutes(v1 *gin.RouterGroup) {
	v1.POST("/migrations/runs", a.startRun)
	v1.GET("/migrations/runs", a.listRuns)
	v1.GET("/migrations/runs/:id", getByID("run", a.fanout.Report))
	v1.GET("/migrations/runs/:id/tenants", a.runTenants)
	v1.POST("/migrations/runs/:id/pause", a.changeRun(fanout.RunPause))
	v1.POST("/migrations/runs/:id/resume", a.changeRun(fanout.RunResume))
	v1.POST("/migrations/runs/:id/cancel", a.changeRun(fanout.RunCancel))
	v1.GET("/migrations/status", a.migrationStatus)
	v1.POST("/tenants/:slug/migrations/force", a.forceSchema)
}

// startRun answers 201 with the run as GET /migrations/runs/{id} shows it.
// The body is optional: every field has a default.
func (a *App) startRun(c *gin.Context) {
	var spec fanout.RunSpec
	if err := httpapi.BindOptionalJSON(c, &spec); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	run, err := a.fanout.StartRun(c, spec, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	report, err := a.fanout.Report(c, run.ID)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusCreated, report)
}

func (a *App) listRuns(c *gin.Context) {
	limit, cursor, err := httpapi.PageQuery(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	runs, next, err := a.fanout.ListRuns(c, limit, cursor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, httpapi.Page("runs", runs, next, nil))
}

func runID(c *gin.Context) (int64, bool) { return numericID(c, "run") }

// runTenants lists a run's tenants, ?state= one of pending, running, done,
// failed, skipped.
func (a *App) runTenants(c *gin.Context) {
	id, ok := runID(c)
	if !ok {
		return
	}
	limit, cursor, err := httpapi.PageQuery(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	rows, next, err := a.fanout.RunTenants(c, id, c.Query("state"), limit, cursor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, httpapi.Page("tenants", rows, next, nil))
}

func (a *App) changeRun(action fanout.RunAction) gin.HandlerFunc {
	return func(c *gin.Context) {
		id, ok := runID(c)
		if !ok {
			return
		}
		if _, err := a.fanout.ChangeRun(c, id, action, adminActor); err != nil {
			httpapi.WriteError(c, err)
			return
		}
		report, err := a.fanout.Report(c, id)
		if err != nil {
			httpapi.WriteError(c, err)
			return
		}
		c.JSON(http.StatusOK, report)
	}
}

// migrationStatus reads every tenant database's schema version; it is
// bounded to answer within the admin server's write timeout.
func (a *App) migrationStatus(c *gin.Context) {
	ctx, cancel := context.WithTimeout(c, statusLimit)
	defer cancel()
	st, err := a.fanout.SchemaStatus(ctx, fanout.StatusOptions{})
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, st)
}

type forceBody struct {
	Version *int64 `json:"version"`
	Reason  string `json:"reason"`
}

// forceSchema clears a dirty tenant database's flag at the version the
// operator says it is at, after their repair, with an audit event.
func (a *App) forceSchema(c *gin.Context) {
	var body forceBody
	if err := httpapi.BindJSON(c, &body); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if body.Version == nil {
		httpapi.Fail(c, catalog.CodeInvalid, `version is required: the version the database really is at after the repair, e.g. {"version": 3}`)
		return
	}
	t, err := a.fanout.ForceSchema(c, c.Param("slug"), *body.Version, adminActor, body.Reason)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, t)
}
