package controlplane

import (
	"context"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/httpapi"
	"github.com/tenantplane/tenantplane/mover"
)

// evacuationRoutes is the admin API of fleet operations: drain a server
// (and evacuate it), follow, pause, resume and cancel an evacuation, and
// rebalance the fleet.
func (a *App) evacuationRoutes(v1 *gin.RouterGroup) {
	v1.POST("/servers/:name/drain", a.drainServer)
	v1.POST("/servers/:name/activate", a.activateServer)
	v1.POST("/servers/rebalance", a.rebalance)
	v1.GET("/evacuations", a.listEvacuations)
	v1.GET("/evacuations/:id", getByID("evacuation", a.moves.GetEvacuation))
	v1.POST("/evacuations/:id/pause", a.evacuationAction((*mover.Service).PauseEvacuation, "paused"))
	v1.POST("/evacuations/:id/resume", a.evacuationAction((*mover.Service).ResumeEvacuation, "resumed"))
	v1.POST("/evacuations/:id/cancel", a.evacuationAction((*mover.Service).CancelEvacuation, "cancelled"))
}

// drainRequest is POST /servers/{name}/drain's optional body.
type drainRequest struct {
	// Evacuate moves every tenant off the server as well.
	Evacuate bool `json:"evacuate"`
	mover.EvacuationSpec
}

// drainServer stops placements on a server (200 with the server); with
// {"evacuate": true} it also starts moving its tenants off (202 with the
// evacuation; GET /evacuations/{id} follows it).
func (a *App) drainServer(c *gin.Context) {
	var req drainRequest
	if err := httpapi.BindOptionalJSON(c, &req); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if req.Evacuate {
		e, err := a.moves.Evacuate(c, c.Param("name"), req.EvacuationSpec, adminActor)
		if err != nil {
			httpapi.WriteError(c, err)
			return
		}
		a.logger.InfoContext(c, "evacuation started", "server", e.Server, "evacuation", e.ID, "tenants", e.Total)
		c.JSON(http.StatusAccepted, e)
		return
	}
	if req != (drainRequest{}) {
		httpapi.Fail(c, catalog.CodeInvalid, "concurrency, per_server, mode and max_attempts go with evacuate: true")
		return
	}
	srv, err := a.store.SetServerState(c, c.Param("name"), catalog.ServerDraining, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, srv)
}

// activateServer places new tenants on a draining or empty server again
// (200 with the server); an evacuating one is refused (409).
func (a *App) activateServer(c *gin.Context) {
	srv, err := a.store.SetServerState(c, c.Param("name"), catalog.ServerActive, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, srv)
}

func (a *App) listEvacuations(c *gin.Context) {
	limit, cursor, err := httpapi.PageQuery(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	list, next, err := a.moves.ListEvacuations(c, limit, cursor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, httpapi.Page("evacuations", list, next, nil))
}

func evacuationID(c *gin.Context) (int64, bool) { return numericID(c, "evacuation") }

func (a *App) evacuationAction(do func(*mover.Service, context.Context, int64, string) (mover.Evacuation, error), done string) gin.HandlerFunc {
	return func(c *gin.Context) {
		id, ok := evacuationID(c)
		if !ok {
			return
		}
		e, err := do(a.moves, c, id, adminActor)
		if err != nil {
			httpapi.WriteError(c, err)
			return
		}
		a.logger.InfoContext(c, "evacuation "+done, "evacuation", e.ID, "state", e.State)
		c.JSON(http.StatusOK, e)
	}
}

// rebalance answers the plan (200) on a dry run, or the plan and the
// evacuation that carries it out (202); a plan with no moves starts
// nothing (200).
func (a *App) rebalance(c *gin.Context) {
	var spec mover.RebalanceSpec
	if err := httpapi.BindOptionalJSON(c, &spec); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	r, err := a.moves.StartRebalance(c, spec, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	status := http.StatusOK
	if r.Evacuation != nil {
		status = http.StatusAccepted
		a.logger.InfoContext(c, "rebalance started", "evacuation", r.Evacuation.ID, "moves", len(r.Plan.Moves))
	}
	c.JSON(status, r)
}
