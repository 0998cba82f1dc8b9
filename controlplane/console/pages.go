package console

import (
	"context"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/provisioner"
)

// tenantsPerPage is the Tenants page's page size.
const tenantsPerPage = 50

var funcs = template.FuncMap{
	"tiers": func() []string { return []string{string(catalog.IsolationDedicated), string(catalog.IsolationPooled)} },
	"bytes": func(n int64) string { return humanize.IBytes(uint64(max(n, 0))) },
	"when": func(t any) string {
		switch v := t.(type) {
		case time.Time:
			return v.UTC().Format("2006-01-02 15:04:05")
		case *time.Time:
			if v == nil {
				return "—"
			}
			return v.UTC().Format("2006-01-02 15:04:05")
		}
		return ""
	},
	"money": billing.FormatAmount,
	"ms":    func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) },
	"pct": func(n, of int) int {
		if of <= 0 {
			return 0
		}
		return min(100, n*100/of)
	},
	"join": strings.Join,
	"deref": func(p *int64) int64 {
		if p == nil {
			return 0
		}
		return *p
	},
}

// fleetServer is one row of the Fleet page.
type fleetServer struct {
	catalog.Server
	ByState    []stateCount
	Versions   []versionCount
	Bytes      int64
	Stats      provisioner.ServerStats
	StatsError string // why the live reading failed
}

type stateCount struct {
	State catalog.TenantState
	N     int
}

type versionCount struct {
	Version int64
	N       int
}

type fleetData struct {
	Servers []fleetServer
	Totals  []stateCount
}

func (c *Console) fleetPage(w http.ResponseWriter, r *http.Request, s session) {
	start := time.Now()
	ctx, cancel := bounded(r)
	defer cancel()
	d, err := c.fleet(ctx)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, http.StatusOK, "fleet.html", page{Title: "Fleet", Nav: "fleet", CSRF: s.CSRF, Data: d, Elapsed: time.Since(start)})
}

// fleet reads the servers and the catalog's summary of their tenants, and
// each server's live reading in parallel, each bounded by ServerTimeout: a
// server that does not answer shows why, and holds up no other.
func (c *Console) fleet(ctx context.Context) (fleetData, error) {
	servers, err := c.cfg.Store.ListServers(ctx)
	if err != nil {
		return fleetData{}, err
	}
	sums, err := c.cfg.Store.FleetSummary(ctx, c.cfg.Now())
	if err != nil {
		return fleetData{}, err
	}
	d := fleetData{Servers: make([]fleetServer, len(servers))}
	totals := map[catalog.TenantState]int{}
	var wg sync.WaitGroup
	for i, srv := range servers {
		fs := &d.Servers[i]
		fs.Server = srv
		if sum := sums[srv.ID]; sum != nil {
			for _, st := range catalog.TenantStates {
				if n := sum.ByState[st]; n > 0 {
					fs.ByState = append(fs.ByState, stateCount{st, n})
					totals[st] += n
				}
			}
			for v, n := range sum.Versions {
				fs.Versions = append(fs.Versions, versionCount{v, n})
			}
			slices.SortFunc(fs.Versions, func(a, b versionCount) int { return int(a.Version - b.Version) })
			fs.Bytes = sum.StorageBytes
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, c.cfg.ServerTimeout)
			defer cancel()
			st, err := c.cfg.Provisioner.ServerStats(sctx, srv)
			if err != nil {
				fs.StatsError = catalog.MessageOf(err)
				if fs.StatsError == "" || sctx.Err() != nil {
					fs.StatsError = fmt.Sprintf("no answer within %s", c.cfg.ServerTimeout)
				}
				return
			}
			fs.Stats = st
		}()
	}
	wg.Wait()
	for _, st := range catalog.TenantStates {
		if totals[st] > 0 {
			d.Totals = append(d.Totals, stateCount{st, totals[st]})
		}
	}
	return d, nil
}

// tenantsData is the Tenants page's.
type tenantsData struct {
	Q       string
	State   string
	Plan    string
	Server  string
	Tier    string
	States  []catalog.TenantState
	Plans   []catalog.Plan
	Servers []catalog.Server
	Tenants []catalog.Tenant
	Next    string // the next page's URL, "" on the last
	First   bool
}

func (c *Console) tenantsPage(w http.ResponseWriter, r *http.Request, s session) {
	start := time.Now()
	ctx, cancel := bounded(r)
	defer cancel()
	q := r.URL.Query()
	d := tenantsData{Q: strings.TrimSpace(q.Get("q")), State: q.Get("state"), Plan: q.Get("plan"), Server: q.Get("server"),
		Tier: q.Get("tier"), States: catalog.TenantStates, First: q.Get("cursor") == ""}
	var err error
	if d.Plans, err = c.cfg.Store.ListPlans(ctx); err != nil {
		c.fail(w, r, s, err)
		return
	}
	if d.Servers, err = c.cfg.Store.ListServers(ctx); err != nil {
		c.fail(w, r, s, err)
		return
	}
	res, err := c.cfg.Store.ListTenants(ctx, catalog.TenantFilter{
		State: catalog.TenantState(d.State), Plan: d.Plan, Server: d.Server, Search: d.Q, Tier: d.Tier, Limit: tenantsPerPage, Cursor: q.Get("cursor"),
	})
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	d.Tenants = res.Tenants
	if res.NextCursor != "" {
		next := url.Values{}
		for _, k := range []string{"q", "state", "plan", "server", "tier"} {
			if v := q.Get(k); v != "" {
				next.Set(k, v)
			}
		}
		next.Set("cursor", res.NextCursor)
		d.Next = Prefix + "tenants?" + next.Encode()
	}
	c.render(w, http.StatusOK, "tenants.html", page{Title: "Tenants", Nav: "tenants", CSRF: s.CSRF, Data: d, Elapsed: time.Since(start)})
}

// tenantData is a tenant's page.
type tenantData struct {
	Tenant   catalog.Tenant
	Audit    []catalog.AuditEvent
	Keys     []catalog.APIKey
	Usage    map[string]int64
	Meters   []string
	Meter    string
	Chart    chart
	Period   string
	Invoices []billing.Invoice
	Actions  []tenantAction
	Servers  []catalog.Server // where it can move
	Plans    []catalog.Plan   // it can change to
}

// tenantAction is a button on a tenant's page.
type tenantAction struct {
	Name, Label string
	Danger      bool
}

// tenantActions are the actions a tenant in its state can take.
func tenantActions(t catalog.Tenant) []tenantAction {
	var out []tenantAction
	add := func(name, label string, danger bool) { out = append(out, tenantAction{name, label, danger}) }
	switch t.State {
	case catalog.TenantActive:
		add("suspend", "Suspend", true)
		add("rotate", "Rotate credentials", false)
		add("delete", "Delete", true)
	case catalog.TenantSuspended:
		add("resume", "Resume", false)
		add("rotate", "Rotate credentials", false)
		add("delete", "Delete", true)
	case catalog.TenantDeleting:
		add("restore", "Restore", false)
	case catalog.TenantFailed:
		add("retry", "Retry", false)
		add("delete", "Delete", true)
	}
	return out
}

func (c *Console) tenantPage(w http.ResponseWriter, r *http.Request, s session) {
	ctx, cancel := bounded(r)
	defer cancel()
	t, err := c.cfg.Store.GetTenant(ctx, r.PathValue("slug"))
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	now := c.cfg.Now()
	d := tenantData{Tenant: t, Actions: tenantActions(t), Period: catalog.FormatPeriod(now), Meter: r.URL.Query().Get("meter")}
	if d.Audit, err = c.cfg.Store.ListAudit(ctx, catalog.AuditFilter{TenantID: t.ID, Limit: 50, Newest: true}); err != nil {
		c.fail(w, r, s, err)
		return
	}
	if d.Keys, _, err = c.cfg.Store.ListAPIKeys(ctx, t.ID, 100, ""); err != nil {
		c.fail(w, r, s, err)
		return
	}
	if d.Usage, err = c.cfg.Store.TenantUsage(ctx, t.ID, now); err != nil {
		c.fail(w, r, s, err)
		return
	}
	for m := range d.Usage {
		d.Meters = append(d.Meters, m)
	}
	slices.Sort(d.Meters)
	if d.Meter == "" {
		d.Meter = "api_calls"
	}
	days, err := c.cfg.Store.TenantDailyUsage(ctx, t.ID, d.Meter, now)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	d.Chart = dailyChart(d.Meter, days)
	if d.Invoices, _, err = c.cfg.Billing.ListInvoices(ctx, t.ID, 24, ""); err != nil {
		c.fail(w, r, s, err)
		return
	}
	if t.State == catalog.TenantActive || t.State == catalog.TenantSuspended {
		servers, err := c.cfg.Store.ListServers(ctx)
		if err != nil {
			c.fail(w, r, s, err)
			return
		}
		for _, srv := range servers {
			if srv.Name != t.Server && srv.State == catalog.ServerActive {
				d.Servers = append(d.Servers, srv)
			}
		}
		if d.Plans, err = c.cfg.Store.ListPlans(ctx); err != nil {
			c.fail(w, r, s, err)
			return
		}
	}
	c.render(w, http.StatusOK, "tenant.html", page{Title: t.Slug, Nav: "tenants", CSRF: s.CSRF, Data: d, Notice: notice(r)})
}

// notice is the word of the action just done, from the redirect after it:
// one of the fixed texts of actions, never text from the URL.
func notice(r *http.Request) string {
	a, ok := actions[r.URL.Query().Get("done")]
	if !ok {
		return ""
	}
	return a.Done
}

// pathID reads a numbered object's {id}; one that cannot be ours is not found.
func pathID(r *http.Request, what string) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		return 0, catalog.Errorf(catalog.CodeNotFound, "%s %q not found", what, r.PathValue("id"))
	}
	return id, nil
}
