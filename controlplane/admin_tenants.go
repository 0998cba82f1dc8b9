package controlplane

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/httpapi"
	"github.com/tenantplane/tenantplane/provisioner"
)

// statusLimit bounds GET /migrations/status; it stays under the admin
// server's write timeout so the answer is never cut off. POST
// /tenants?wait=true waits Config.CreateWait, as bounded.
const statusLimit = 50 * time.Second

func (a *App) tenantRoutes(v1 *gin.RouterGroup) {
	v1.GET("/orphans", a.orphans(false))
	v1.DELETE("/orphans", a.orphans(true))
	v1.POST("/tenants", a.createTenant)
	v1.GET("/tenants", a.listTenants)
	v1.GET("/tenants/:slug", a.getTenant)
	v1.DELETE("/tenants/:slug", a.lifecycle(a.prov.Delete, http.StatusAccepted))
	v1.POST("/tenants/:slug/suspend", a.lifecycle(a.prov.Suspend, http.StatusOK))
	v1.POST("/tenants/:slug/resume", a.lifecycle(a.prov.Resume, http.StatusOK))
	v1.POST("/tenants/:slug/restore", a.lifecycle(a.prov.Restore, http.StatusOK))
	v1.POST("/tenants/:slug/retry", a.lifecycle(a.prov.Retry, http.StatusOK))
	v1.POST("/tenants/:slug/rotate-credentials", a.lifecycle(a.prov.RotateCredentials, http.StatusOK))
	v1.POST("/tenants/:slug/keys", a.createKey)
	v1.GET("/tenants/:slug/keys", a.listKeys)
	v1.DELETE("/tenants/:slug/keys/:id", a.revokeKey)
	v1.GET("/tenants/:slug/network", a.getNetwork)
	v1.PUT("/tenants/:slug/network", a.setNetwork)
	v1.GET("/tenants/:slug/hostnames", a.listHostnames)
	v1.POST("/tenants/:slug/hostnames", a.addHostname)
	v1.DELETE("/tenants/:slug/hostnames/:hostname", a.removeHostname)
}

func (a *App) listHostnames(c *gin.Context) {
	t, err := a.store.GetTenant(c, c.Param("slug"))
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	hs, err := a.store.ListTenantHostnames(c, t.ID)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"hostnames": hs})
}

// addHostname gives a tenant a custom hostname; requests there must carry
// one of its keys, on every replica within a second.
func (a *App) addHostname(c *gin.Context) {
	var body struct {
		Hostname string `json:"hostname"`
	}
	if err := httpapi.BindJSON(c, &body); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	h, err := catalog.NormalizeHostname(body.Hostname)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if d := a.cfg.TenantDomain; d != "" && (h == d || strings.HasSuffix(h, "."+d)) {
		httpapi.Fail(c, catalog.CodeInvalid, "hostname %q is under TENANTPLANE_TENANT_DOMAIN (%s), whose hosts are the tenants' slugs: choose a name outside it", h, d)
		return
	}
	t, err := a.store.GetTenant(c, c.Param("slug"))
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	added, err := a.store.AddTenantHostname(c, t.ID, h, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusCreated, added)
}

func (a *App) removeHostname(c *gin.Context) {
	t, err := a.store.GetTenant(c, c.Param("slug"))
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if err := a.store.RemoveTenantHostname(c, t.ID, c.Param("hostname"), adminActor); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.Status(http.StatusNoContent)
}

// networkBody is a tenant's IP allowlist: CIDRs; empty, any network.
type networkBody struct {
	Allow []string `json:"allow"`
}

func (a *App) getNetwork(c *gin.Context) {
	t, err := a.store.GetTenant(c, c.Param("slug"))
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	allow, err := a.store.TenantNetwork(c, t.ID)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, networkBody{Allow: allow})
}

// setNetwork replaces a tenant's IP allowlist; every replica applies it
// within a second (the change is announced in its transaction).
func (a *App) setNetwork(c *gin.Context) {
	var body struct {
		Allow *[]string `json:"allow"`
	}
	if err := httpapi.BindJSON(c, &body); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if body.Allow == nil {
		httpapi.Fail(c, catalog.CodeInvalid, `allow is required: a list of CIDRs, or [] for any network`)
		return
	}
	if _, err := catalog.ParsePrefixes("allow", *body.Allow); err != nil {
		httpapi.WriteError(c, err) // bad input is 400 before the tenant is looked up
		return
	}
	t, err := a.store.GetTenant(c, c.Param("slug"))
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	allow, err := a.store.SetTenantNetwork(c, t.ID, *body.Allow, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	a.logger.InfoContext(c, "tenant network allowlist set", "tenant", t.Slug, "allow", allow)
	c.JSON(http.StatusOK, networkBody{Allow: allow})
}

// orphans reports (remove false) or drops (remove true) what findOrphans finds.
func (a *App) orphans(remove bool) gin.HandlerFunc {
	return func(c *gin.Context) {
		found, err := a.findOrphans(c, remove)
		if err != nil {
			httpapi.WriteError(c, err)
			return
		}
		c.JSON(http.StatusOK, gin.H{"orphans": found})
	}
}

// createTenant answers 202 with the tenant provisioning, or with ?wait=true
// 201 once it is active (or the failure with its reason). The same request
// again answers with the same tenant.
func (a *App) createTenant(c *gin.Context) {
	var spec provisioner.TenantSpec
	if err := httpapi.BindJSON(c, &spec); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	wait, err := boolQuery(c, "wait")
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	t, created, err := a.prov.CreateTenant(c, spec, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if !wait {
		status := http.StatusAccepted
		switch {
		case created && t.State == catalog.TenantActive: // pooled: made in the call
			status = http.StatusCreated
		case t.State != catalog.TenantProvisioning:
			status = http.StatusOK
		}
		c.JSON(status, t)
		return
	}
	// Every step of provisioning is bounded (Stripe's included, to less than
	// CreateWait), so the tenant usually settles in time; if not, the answer
	// says it is still provisioning, and it goes on.
	slug := t.Slug
	ctx, cancel := context.WithTimeout(c, a.cfg.CreateWait)
	defer cancel()
	t, err = a.prov.WaitSettled(ctx, slug)
	switch {
	case err != nil && ctx.Err() != nil && c.Request.Context().Err() == nil:
		httpapi.WriteError(c, catalog.WrapError(catalog.CodeUnavailable, err, "tenant %q is still provisioning after %s; it goes on: GET /admin/v1/tenants/%s shows when it is active or why it failed", slug, a.cfg.CreateWait, slug))
	case err != nil:
		httpapi.WriteError(c, err)
	case t.State == catalog.TenantFailed:
		httpapi.WriteError(c, catalog.Errorf(catalog.CodeUnavailable, "tenant %q failed to provision: %s (fix the cause, then POST /admin/v1/tenants/%s/retry)", t.Slug, t.LastError, t.Slug))
	default:
		c.JSON(http.StatusCreated, t)
	}
}

func (a *App) listTenants(c *gin.Context) {
	limit, cursor, err := httpapi.PageQuery(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	page, err := a.store.ListTenants(c, catalog.TenantFilter{
		State: catalog.TenantState(c.Query("state")), Plan: c.Query("plan"), Server: c.Query("server"),
		Tier: c.Query("tier"), Limit: limit, Cursor: cursor,
	})
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, page)
}

func (a *App) getTenant(c *gin.Context) {
	t, err := a.store.GetTenant(c, c.Param("slug"))
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, t)
}

// reasonBody is the optional body of lifecycle calls.
type reasonBody struct {
	Reason string `json:"reason"`
}

// lifecycle serves a call that moves a tenant with op. Its body is optional
// and read however it is framed (a chunked one has no Content-Length), so a
// reason sent is never lost from the audit log.
func (a *App) lifecycle(op func(ctx context.Context, slug, actor, reason string) (catalog.Tenant, error), status int) gin.HandlerFunc {
	return func(c *gin.Context) {
		var body reasonBody
		if err := httpapi.BindOptionalJSON(c, &body); err != nil {
			httpapi.WriteError(c, err)
			return
		}
		t, err := op(c, c.Param("slug"), adminActor, body.Reason)
		if err != nil {
			httpapi.WriteError(c, err)
			return
		}
		c.JSON(status, t)
	}
}

// createKey issues a key. Its body is optional: {"scopes": [...],
// "expires_at": "RFC3339"}; without it the key may do everything, forever.
func (a *App) createKey(c *gin.Context) {
	var spec catalog.KeySpec
	if err := httpapi.BindOptionalJSON(c, &spec); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if err := spec.Validate(time.Now()); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	t, err := a.store.GetTenant(c, c.Param("slug"))
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if t.State == catalog.TenantDeleting || t.State == catalog.TenantDeleted {
		httpapi.Fail(c, catalog.CodeConflict, "tenant %q is %s: it takes no new keys", t.Slug, t.State)
		return
	}
	k, key, err := a.store.IssueAPIKey(c, t.ID, adminActor, spec)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusCreated, gin.H{"id": k.ID, "key": key, "prefix": k.Prefix, "created_at": k.CreatedAt,
		"scopes": k.Scopes, "expires_at": k.ExpiresAt})
}

func (a *App) listKeys(c *gin.Context) {
	t, err := a.store.GetTenant(c, c.Param("slug"))
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	limit, cursor, err := httpapi.PageQuery(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	keys, next, err := a.store.ListAPIKeys(c, t.ID, limit, cursor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, httpapi.Page("keys", keys, next, nil))
}

func (a *App) revokeKey(c *gin.Context) {
	t, err := a.store.GetTenant(c, c.Param("slug"))
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if err := a.store.RevokeAPIKey(c, t.ID, c.Param("id"), adminActor); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.Status(http.StatusNoContent)
}

func boolQuery(c *gin.Context, name string) (bool, error) {
	raw := c.Query(name)
	if raw == "" {
		return false, nil
	}
	v, err := strconv.ParseBool(raw)
	if err != nil {
		return false, catalog.Errorf(catalog.CodeInvalid, "%s must be true or false", name)
	}
	return v, nil
}
