package controlplane

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/tenantplane/tenantplane/internal/httpapi"
	"github.com/tenantplane/tenantplane/mover"
)

// moveRoutes is the admin API of tenant moves: start one, follow it, cancel
// it while it runs, take a finished one back within its grace period.
func (a *App) moveRoutes(v1 *gin.RouterGroup) {
	v1.POST("/tenants/:slug/move", a.startMove)
	v1.GET("/moves", a.listMoves)
	v1.GET("/moves/:id", getByID("move", a.moves.Get))
	v1.POST("/moves/:id/cancel", a.cancelMove)
	v1.POST("/moves/:id/revert", a.revertMove)
	v1.POST("/tenants/:slug/promote", a.promote)
	v1.POST("/tenants/:slug/demote", a.demote)
	v1.PATCH("/tenants/:slug", a.changePlan)
}

// changePlan gives a tenant another plan: one of its tier at once (200 with
// the tenant), one of the other tier by a promotion or demotion that
// carries it (202 with the tenant and the move; the plan changes at the
// move's switch).
func (a *App) changePlan(c *gin.Context) {
	var body struct {
		Plan string `json:"plan"`
	}
	if err := httpapi.BindJSON(c, &body); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	t, m, err := a.moves.ChangePlan(c, c.Param("slug"), body.Plan, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if m == nil {
		a.logger.InfoContext(c, "plan changed", "tenant", t.Slug, "plan", t.Plan)
		c.JSON(http.StatusOK, t)
		return
	}
	a.logger.InfoContext(c, "plan change started", "tenant", t.Slug, "plan", m.Plan, "from_plan", m.FromPlan, "move", m.ID, "kind", m.Kind)
	c.JSON(http.StatusAccepted, gin.H{"tenant": t, "move": m})
}

// promote starts moving a pooled tenant's rows into a database of its own
// (202 with the move, kind promote); the body is optional.
func (a *App) promote(c *gin.Context) {
	var spec mover.PromoteSpec
	if err := httpapi.BindOptionalJSON(c, &spec); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	m, err := a.moves.StartPromotion(c, c.Param("slug"), spec, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	a.logger.InfoContext(c, "promotion started", "tenant", m.Tenant, "move", m.ID, "pool", m.Pool, "to", m.To)
	c.JSON(http.StatusAccepted, m)
}

// demote starts moving a dedicated tenant's rows into a pool database (202
// with the move, kind demote); the body is optional.
func (a *App) demote(c *gin.Context) {
	var spec mover.DemoteSpec
	if err := httpapi.BindOptionalJSON(c, &spec); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	m, err := a.moves.StartDemotion(c, c.Param("slug"), spec, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	a.logger.InfoContext(c, "demotion started", "tenant", m.Tenant, "move", m.ID, "pool", m.Pool, "from", m.From)
	c.JSON(http.StatusAccepted, m)
}

// startMove answers 202: the move goes on in the background, and GET
// /moves/{id} follows it. A mode that cannot run between the two servers is
// refused (409) before anything starts, with the reason.
func (a *App) startMove(c *gin.Context) {
	var spec mover.MoveSpec
	if err := httpapi.BindJSON(c, &spec); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	m, err := a.moves.StartMove(c, c.Param("slug"), spec, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	a.logger.InfoContext(c, "move started", "tenant", m.Tenant, "move", m.ID, "from", m.From, "to", m.To, "mode", m.Mode)
	c.JSON(http.StatusAccepted, m)
}

func (a *App) listMoves(c *gin.Context) {
	limit, cursor, err := httpapi.PageQuery(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	moves, next, err := a.moves.List(c, limit, cursor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if moves == nil {
		moves = []mover.Move{} // an empty list, not null
	}
	c.JSON(http.StatusOK, httpapi.Page("moves", moves, next, nil))
}

func moveID(c *gin.Context) (int64, bool) { return numericID(c, "move") }

// cancelMove asks an open move to stop: it rolls back from where it is (the
// fence lifted, the target dropped) and ends aborted. The answer is the move
// with cancel_requested set; a move past its flip cannot be cancelled (409),
// only reverted.
func (a *App) cancelMove(c *gin.Context) {
	id, ok := moveID(c)
	if !ok {
		return
	}
	m, err := a.moves.Cancel(c, id, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	a.logger.InfoContext(c, "move cancel requested", "tenant", m.Tenant, "move", m.ID, "phase", m.Phase)
	c.JSON(http.StatusOK, m)
}

// revertMove starts a new move that takes a finished one back to its source,
// kept for the grace period; it answers 202 with the new move.
func (a *App) revertMove(c *gin.Context) {
	id, ok := moveID(c)
	if !ok {
		return
	}
	m, err := a.moves.Revert(c, id, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	a.logger.InfoContext(c, "move revert started", "tenant", m.Tenant, "move", m.ID, "reverts", id)
	c.JSON(http.StatusAccepted, m)
}
