package controlplane

import (
	"fmt"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tenantplane/tenantplane/datarights"
	"github.com/tenantplane/tenantplane/internal/httpapi"
)

// dataRoutes is the admin API of a tenant's data: backups and their
// restores, exports, erasure.
func (a *App) dataRoutes(v1 *gin.RouterGroup) {
	v1.POST("/tenants/:slug/backups", a.startBackup)
	v1.GET("/tenants/:slug/backups", a.listBackups)
	v1.GET("/tenants/:slug/backups/:id", a.getBackup)
	v1.POST("/tenants/:slug/backups/:id/restore", a.startRestore)
	v1.GET("/restores/:id", getByID("restore", a.data.GetRestore))
	v1.POST("/tenants/:slug/exports", a.startExport)
	v1.GET("/tenants/:slug/exports", a.listExports)
	v1.GET("/tenants/:slug/exports/:id", a.getExport)
	v1.GET("/tenants/:slug/exports/:id/download", a.downloadExport)
	v1.POST("/tenants/:slug/erase", a.eraseTenant)
	v1.GET("/tenants/:slug/erasure", a.getErasure)
}

// startBackup answers 202 with a new backup, or 200 with the one pending or
// running already.
func (a *App) startBackup(c *gin.Context) {
	b, created, err := a.data.StartBackup(c, c.Param("slug"), adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusAccepted
		a.logger.InfoContext(c, "backup requested", "tenant", b.Tenant, "backup", b.ID)
	}
	c.JSON(status, b)
}

func (a *App) listBackups(c *gin.Context) {
	limit, cursor, err := httpapi.PageQuery(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	list, next, err := a.data.ListBackups(c, c.Param("slug"), limit, cursor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if list == nil {
		list = []datarights.Backup{}
	}
	c.JSON(http.StatusOK, httpapi.Page("backups", list, next, nil))
}

func (a *App) getBackup(c *gin.Context) {
	id, ok := numericID(c, "backup")
	if !ok {
		return
	}
	b, err := a.data.GetBackup(c, c.Param("slug"), id)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, b)
}

// startRestore answers 202 with the restore; GET /restores/{id} follows it.
func (a *App) startRestore(c *gin.Context) {
	id, ok := numericID(c, "backup")
	if !ok {
		return
	}
	var spec datarights.RestoreSpec
	if err := httpapi.BindOptionalJSON(c, &spec); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	r, err := a.data.StartRestore(c, c.Param("slug"), id, spec, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	a.logger.InfoContext(c, "restore started", "tenant", r.Tenant, "backup", r.BackupID, "restore", r.ID, "mode", r.Mode)
	c.JSON(http.StatusAccepted, r)
}

func (a *App) startExport(c *gin.Context) {
	var spec datarights.ExportSpec
	if err := httpapi.BindOptionalJSON(c, &spec); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	x, err := a.data.StartExport(c, c.Param("slug"), spec, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	a.logger.InfoContext(c, "export started", "tenant", x.Tenant, "export", x.ID)
	c.JSON(http.StatusAccepted, x)
}

func (a *App) listExports(c *gin.Context) {
	limit, cursor, err := httpapi.PageQuery(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	list, next, err := a.data.ListExports(c, c.Param("slug"), limit, cursor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if list == nil {
		list = []datarights.Export{}
	}
	c.JSON(http.StatusOK, httpapi.Page("exports", list, next, nil))
}

func (a *App) getExport(c *gin.Context) {
	id, ok := numericID(c, "export")
	if !ok {
		return
	}
	x, err := a.data.GetExport(c, c.Param("slug"), id)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, x)
}

// downloadExport streams the export's zip from its file (ranges too). The
// admin server's write timeout is lifted for it: a large export takes
// longer than an API call.
func (a *App) downloadExport(c *gin.Context) {
	id, ok := numericID(c, "export")
	if !ok {
		return
	}
	x, f, err := a.data.OpenExport(c, c.Param("slug"), id)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	defer f.Close()
	_ = http.NewResponseController(c.Writer).SetWriteDeadline(time.Time{})
	c.Header("Content-Type", "application/zip")
	c.Header("Content-Disposition", fmt.Sprintf(`attachment; filename="%s-export-%d.zip"`, x.Tenant, x.ID))
	c.Header("X-Content-SHA256", x.SHA256)
	http.ServeContent(c.Writer, c.Request, "", *x.FinishedAt, f)
}

// eraseTenant erases a tenant for good: 200 with the erasure record (with
// already_erased set, and nothing done, for a tenant erased before).
func (a *App) eraseTenant(c *gin.Context) {
	var spec datarights.EraseSpec
	if err := httpapi.BindJSON(c, &spec); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	e, err := a.data.Erase(c, c.Param("slug"), spec, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, e)
}

func (a *App) getErasure(c *gin.Context) {
	e, err := a.data.GetErasure(c, c.Param("slug"))
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, e)
}
