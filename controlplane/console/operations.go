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

func (c *Console) runData(ctx context.Context, r *http.Request) (runData, error) {
	id, err := pathID(r, "run")
	if err != nil {
		return runData{}, err
	}
	rep, err := c.cfg.Fanout.Report(ctx, id)
	if err != nil {
		return runData{}, err
	}
	live := rep.State == fanout.RunRunning || rep.State == fanout.RunPaused
	return runData{RunReport: rep, Live: live}, nil
}

func (c *Console) runPage(w http.ResponseWriter, r *http.Request, s session) {
	ctx, cancel := bounded(r)
	defer cancel()
	d, err := c.runData(ctx, r)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, http.StatusOK, "run.html", page{Title: "Migration run", Nav: "operations", CSRF: s.CSRF, Data: d, Notice: notice(r)})
}

// runProgress is the run page's progress section alone: the page asks for
// it every second while the run is live, and it stops asking once the
// answer says the run is over.
func (c *Console) runProgress(w http.ResponseWriter, r *http.Request, s session) {
	ctx, cancel := bounded(r)
	defer cancel()
	d, err := c.runData(ctx, r)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, http.StatusOK, "run_progress.html", page{CSRF: s.CSRF, Data: d})
}

func (c *Console) billingRunPage(w http.ResponseWriter, r *http.Request, s session) {
	ctx, cancel := bounded(r)
	defer cancel()
	id, err := pathID(r, "billing run")
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	run, err := c.cfg.Billing.GetRun(ctx, id)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, http.StatusOK, "billing_run.html", page{Title: "Billing run", Nav: "operations", CSRF: s.CSRF, Data: run, Notice: notice(r)})
}

func (c *Console) movePage(w http.ResponseWriter, r *http.Request, s session) {
	ctx, cancel := bounded(r)
	defer cancel()
	id, err := pathID(r, "move")
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	m, err := c.cfg.Moves.Get(ctx, id)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, http.StatusOK, "move.html", page{Title: "Move", Nav: "operations", CSRF: s.CSRF, Data: m, Notice: notice(r)})
}

func (c *Console) evacuationPage(w http.ResponseWriter, r *http.Request, s session) {
	ctx, cancel := bounded(r)
	defer cancel()
	id, err := pathID(r, "evacuation")
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	e, err := c.cfg.Moves.GetEvacuation(ctx, id)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, http.StatusOK, "evacuation.html", page{Title: "Evacuation", Nav: "operations", CSRF: s.CSRF, Data: e, Notice: notice(r)})
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
