package console

import (
	"context"
	"net/http"
	"time"

	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/fanout"
	"github.com/tenantplane/tenantplane/mover"
	"github.com/tenantplane/tenantplane/provisioner"
)

// listLimit is how many of each kind of operation the Operations page shows.
const listLimit = 20

type operationsData struct {
	Runs        []fanout.MigrationRun
	Billing     []billing.BillingRun
	Moves       []mover.Move
	Evacuations []mover.Evacuation
	Newest      uint   // the newest tenant schema version
	Period      string // the last period that ended, for a billing run
}

func (c *Console) operationsPage(w http.ResponseWriter, r *http.Request, s session) {
	ctx, cancel := bounded(r)
	defer cancel()
	var d operationsData
	var err error
	if d.Runs, _, err = c.cfg.Fanout.ListRuns(ctx, listLimit, ""); err != nil {
		c.fail(w, r, s, err)
		return
	}
	if d.Billing, _, err = c.cfg.Billing.ListRuns(ctx, "", listLimit, ""); err != nil {
		c.fail(w, r, s, err)
		return
	}
	if d.Moves, _, err = c.cfg.Moves.List(ctx, listLimit, ""); err != nil {
		c.fail(w, r, s, err)
		return
	}
	if d.Evacuations, _, err = c.cfg.Moves.ListEvacuations(ctx, listLimit, ""); err != nil {
		c.fail(w, r, s, err)
		return
	}
	d.Newest = c.cfg.Fanout.Schema().Latest()
	d.Period = catalog.FormatPeriod(catalog.PeriodOf(c.cfg.Now()).AddDate(0, -1, 0))
	c.render(w, http.StatusOK, "operations.html", page{Title: "Operations", Nav: "operations", CSRF: s.CSRF, Data: d})
}

// runData is a migration run's page and its progress fragment.
type runData struct {
	fanout.RunReport
	Live bool // still going: the page polls its progress
}

// runReport is a run's report, and whether it is live.
func (c *Console) runReport(ctx context.Context, id int64) (runData, error) {
	rep, err := c.cfg.Fanout.Report(ctx, id)
	if err != nil {
		return runData{}, err
	}
	live := rep.State == fanout.RunRunning || rep.State == fanout.RunPaused
	return runData{RunReport: rep, Live: live}, nil
}

// objectPage serves the page of a numbered operation that get reads.
func objectPage[T any](c *Console, what, name, title string, get func(context.Context, int64) (T, error)) func(http.ResponseWriter, *http.Request, session) {
	return func(w http.ResponseWriter, r *http.Request, s session) {
		ctx, cancel := bounded(r)
		defer cancel()
		id, err := pathID(r, what)
		if err != nil {
			c.fail(w, r, s, err)
			return
		}
		v, err := get(ctx, id)
		if err != nil {
			c.fail(w, r, s, err)
			return
		}
		c.render(w, http.StatusOK, name, page{Title: title, Nav: "operations", CSRF: s.CSRF, Data: v, Notice: notice(r)})
	}
}

// billingData is the Billing page's.
type billingData struct {
	Period   string
	Plans    []catalog.Plan
	Versions []billing.PlanVersion
	Outlook  []billing.PlanOutlook
	Top      []catalog.TenantQuantity
	Unpaid   []billing.Invoice
}

func (c *Console) billingPage(w http.ResponseWriter, r *http.Request, s session) {
	ctx, cancel := bounded(r)
	defer cancel()
	now := c.cfg.Now()
	d := billingData{Period: catalog.FormatPeriod(now)}
	var err error
	if d.Plans, err = c.cfg.Store.ListPlans(ctx); err != nil {
		c.fail(w, r, s, err)
		return
	}
	if d.Versions, err = c.cfg.Billing.ListPlanVersions(ctx, ""); err != nil {
		c.fail(w, r, s, err)
		return
	}
	if d.Outlook, err = c.cfg.Billing.Outlook(ctx, now); err != nil {
		c.fail(w, r, s, err)
		return
	}
	if d.Top, err = c.cfg.Store.TopTenants(ctx, "api_calls", now, 10); err != nil {
		c.fail(w, r, s, err)
		return
	}
	if d.Unpaid, err = c.cfg.Billing.Unpaid(ctx, 50); err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, http.StatusOK, "billing.html", page{Title: "Billing", Nav: "billing", CSRF: s.CSRF, Data: d})
}

// orphans is what the reconciler finds, as the admin API's GET (or,
// removing, DELETE) /orphans answers: the same function serves both.
func (c *Console) orphans(ctx context.Context, remove bool) ([]provisioner.Orphan, error) {
	ctx, cancel := context.WithTimeout(ctx, 50*time.Second)
	defer cancel()
	return c.cfg.Orphans(ctx, remove)
}

func (c *Console) orphansPage(w http.ResponseWriter, r *http.Request, s session) {
	found, err := c.orphans(r.Context(), false)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, http.StatusOK, "orphans.html", page{Title: "Orphans", Nav: "orphans", CSRF: s.CSRF, Data: found, Notice: notice(r)})
}
