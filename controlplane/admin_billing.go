package controlplane

import (
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/httpapi"
	"github.com/tenantplane/tenantplane/provisioner"
)

// newBilling wires billing: Stripe from the environment, the provisioner's
// lifecycle for dunning, and the schedule, dunning and collector switched off
// when their setting says "off".
func newBilling(store *catalog.Store, prov *provisioner.Provisioner, reg prometheus.Registerer, cfg Config, logger *slog.Logger) (*billing.Service, error) {
	bc := billing.Config{
		Logger: logger, Registerer: reg,
		StripeKey: cfg.StripeAPIKey, StripeAPIBase: cfg.StripeAPIBase, WebhookSecret: cfg.StripeWebhookSecret,
		StripeTimeout: cfg.StripeTimeout, StripeRetries: stripeRetries,
		BillingGrace: cfg.BillingGrace, DunningGrace: cfg.DunningGrace, StorageInterval: cfg.StorageInterval, Suspender: prov,
		AutomaticTax: cfg.StripeTax == "automatic",
	}
	return billing.New(store, bc)
}

// billingRoutes adds metering and billing to the admin API, and the Stripe
// webhook outside of it: Stripe signs its calls instead of holding the admin token.
func (a *App) billingRoutes(e *gin.Engine, v1 *gin.RouterGroup) {
	e.POST("/webhooks/stripe", a.stripeWebhook)
	v1.POST("/usage/events", a.postUsageEvents)
	v1.GET("/usage", a.periodUsage)
	v1.GET("/tenants/:slug/usage", a.tenantUsage)
	v1.GET("/plans", a.listPlans)
	v1.POST("/plans/:name/versions", a.createPlanVersion)
	v1.POST("/billing/runs", a.startBillingRun)
	v1.GET("/billing/runs", a.listBillingRuns)
	v1.GET("/billing/runs/:id", getByID("billing run", a.billing.GetRun))
	v1.GET("/tenants/:slug/invoices", a.listInvoices)
	v1.GET("/tenants/:slug/invoice-preview", a.invoicePreview)
	v1.GET("/tenants/:slug/billing-address", a.getBillingAddress)
	v1.PUT("/tenants/:slug/billing-address", a.setBillingAddress)
}

func (a *App) getBillingAddress(c *gin.Context) {
	addr, err := a.billing.BillingAddress(c, c.Param("slug"))
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, addr)
}

// setBillingAddress stores the tenant's billing address and sends it to its
// Stripe customer; sync_error says when Stripe did not take it yet.
func (a *App) setBillingAddress(c *gin.Context) {
	var addr billing.Address
	if err := httpapi.BindJSON(c, &addr); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	addr, err := a.billing.SetBillingAddress(c, c.Param("slug"), addr, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, addr)
}

// periodQuery reads ?period=YYYY-MM, the current period when absent.
func periodQuery(c *gin.Context) (time.Time, error) {
	raw := c.Query("period")
	if raw == "" {
		return catalog.PeriodOf(time.Now()), nil
	}
	return catalog.ParsePeriod(raw)
}

func (a *App) stripeWebhook(c *gin.Context) {
	payload, err := io.ReadAll(c.Request.Body)
	if err != nil {
		httpapi.WriteError(c, catalog.WrapError(catalog.CodeTooLarge, err, "webhook body is too large or unreadable"))
		return
	}
	res, err := a.billing.HandleWebhook(c, payload, c.GetHeader("Stripe-Signature"))
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, res)
}

// postUsageEvents takes a JSON array of {id, tenant, meter, quantity,
// timestamp}: all recorded, or none (400 naming each bad event).
func (a *App) postUsageEvents(c *gin.Context) {
	var events []catalog.UsageEvent
	if err := httpapi.BindJSON(c, &events); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	res, err := a.billing.RecordUsageEvents(c, events)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, res)
}

func (a *App) periodUsage(c *gin.Context) {
	period, err := periodQuery(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	limit, cursor, err := httpapi.PageQuery(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	page, err := a.store.PeriodUsage(c, period, cursor, limit)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, page)
}

func (a *App) tenantUsage(c *gin.Context) {
	period, err := periodQuery(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	t, err := a.store.GetTenant(c, c.Param("slug"))
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	usage, err := a.store.TenantUsage(c, t.ID, period)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"tenant": t.Slug, "period": catalog.FormatPeriod(period), "usage": usage})
}

func (a *App) listPlans(c *gin.Context) {
	plans, err := a.store.ListPlans(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	versions, err := a.billing.ListPlanVersions(c, "")
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"plans": plans, "versions": versions})
}

func (a *App) createPlanVersion(c *gin.Context) {
	var nv billing.NewPlanVersion
	if err := httpapi.BindJSON(c, &nv); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	nv.Plan, nv.Actor = c.Param("name"), adminActor
	v, err := a.billing.CreatePlanVersion(c, nv)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusCreated, v)
}

// startBillingRun answers 202 with a new run, or 200 with the period's run
// already pending or running.
func (a *App) startBillingRun(c *gin.Context) {
	var body struct {
		Period string `json:"period"`
	}
	if err := httpapi.BindJSON(c, &body); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if body.Period == "" {
		httpapi.Fail(c, catalog.CodeInvalid, "period is required: {\"period\": \"YYYY-MM\"}, a month that has ended")
		return
	}
	period, err := catalog.ParsePeriod(body.Period)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	run, created, err := a.billing.StartRun(c, period, adminActor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusAccepted
	}
	c.JSON(status, run)
}

func (a *App) listBillingRuns(c *gin.Context) {
	period := c.Query("period")
	if period != "" {
		p, err := catalog.ParsePeriod(period)
		if err != nil {
			httpapi.WriteError(c, err)
			return
		}
		period = catalog.FormatPeriod(p)
	}
	limit, cursor, err := httpapi.PageQuery(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	runs, next, err := a.billing.ListRuns(c, period, limit, cursor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, httpapi.Page("runs", runs, next, nil))
}

func (a *App) listInvoices(c *gin.Context) {
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
	invoices, next, err := a.billing.ListInvoices(c, t.ID, limit, cursor)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, httpapi.Page("invoices", invoices, next, nil))
}

// invoicePreview shows a tenant's invoice of the open period (or ?period=)
// as it stands, without storing it or calling Stripe.
func (a *App) invoicePreview(c *gin.Context) {
	period, err := periodQuery(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	inv, err := a.billing.Preview(c, c.Param("slug"), period)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	c.JSON(http.StatusOK, inv)
}
