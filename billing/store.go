package billing

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tenantplane/tenantplane/catalog"
)

// store is billing's access to its tables in the catalog database (plan
// versions, invoices and their lines, billing runs, billing customers,
// Stripe events): flat methods, each classified with catalog.Classify, that
// the Service composes; a change and its audit event commit in one
// transaction (catalog's InTx). The schema is catalog's, with every other
// migration.
type store struct {
	cat  *catalog.Store
	pool *pgxpool.Pool
}

func newStore(cat *catalog.Store) *store { return &store{cat: cat, pool: cat.Pool()} }

// meters returns the catalog's meters by name, with their aggregation.
func (s *store) meters(ctx context.Context) (map[string]catalog.Aggregation, error) {
	meters, err := s.cat.ListMeters(ctx)
	if err != nil {
		return nil, err
	}
	m := make(map[string]catalog.Aggregation, len(meters))
	for _, mt := range meters {
		m[mt.Name] = mt.Aggregation
	}
	return m, nil
}

func meterNames(m map[string]catalog.Aggregation) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// uuidRE matches the catalog's ids (tenants, invoices): anything else cannot
// name one, and would fail the query's cast.
var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// ListPlanVersions returns the price versions of a plan ("" for every plan),
// by plan and version.
func (s *store) ListPlanVersions(ctx context.Context, plan string) ([]PlanVersion, error) {
	all, err := planVersions(ctx, s.pool)
	if err != nil {
		return nil, err
	}
	var out []PlanVersion
	for name, vs := range all {
		if plan == "" || plan == name {
			out = append(out, vs...)
		}
	}
	slices.SortFunc(out, func(a, b PlanVersion) int {
		if c := strings.Compare(a.Plan, b.Plan); c != 0 {
			return c
		}
		return a.Version - b.Version
	})
	return out, nil
}

// planVersions loads every plan's versions, oldest first.
func planVersions(ctx context.Context, q catalog.Querier) (map[string][]PlanVersion, error) {
	rows, err := q.Query(ctx, `
		SELECT v.plan, v.version, v.currency, v.base_fee, to_char(v.effective_from, 'YYYY-MM'), v.created_at,
		       coalesce(p.meter, ''), coalesce(p.included, 0), coalesce(p.unit_price_micros, 0), coalesce(p.per_units, 1)
		FROM plan_versions v LEFT JOIN plan_meter_prices p ON p.plan = v.plan AND p.version = v.version
		ORDER BY v.plan, v.effective_from, p.meter`)
	if err != nil {
		return nil, catalog.Classify(err, "plan prices")
	}
	out := map[string][]PlanVersion{}
	var v PlanVersion
	var m MeterPrice
	_, err = pgx.ForEachRow(rows, []any{&v.Plan, &v.Version, &v.Currency, &v.BaseFee, &v.EffectiveFrom, &v.CreatedAt,
		&m.Meter, &m.Included, &m.UnitPriceMicros, &m.PerUnits}, func() error {
		vs := out[v.Plan]
		if n := len(vs); n == 0 || vs[n-1].Version != v.Version {
			vs = append(vs, PlanVersion{Plan: v.Plan, Version: v.Version, Currency: v.Currency, BaseFee: v.BaseFee,
				EffectiveFrom: v.EffectiveFrom, CreatedAt: v.CreatedAt, Meters: []MeterPrice{}})
		}
		if m.Meter != "" {
			vs[len(vs)-1].Meters = append(vs[len(vs)-1].Meters, m)
		}
		out[v.Plan] = vs
		return nil
	})
	return out, catalog.Classify(err, "plan prices")
}

// versionFor picks, from a plan's versions (oldest first), the one in effect
// for period (YYYY-MM).
func versionFor(plan string, versions []PlanVersion, period string) (PlanVersion, error) {
	for i := len(versions) - 1; i >= 0; i-- {
		if versions[i].EffectiveFrom <= period {
			return versions[i], nil
		}
	}
	return PlanVersion{}, catalog.Errorf(catalog.CodeInvalid, "plan %q has no prices in effect for %s: none of its versions takes effect by then", plan, period)
}

// PlanVersionFor returns the version of a plan's prices in effect for a period.
func (s *store) PlanVersionFor(ctx context.Context, plan string, period time.Time) (PlanVersion, error) {
	all, err := planVersions(ctx, s.pool)
	if err != nil {
		return PlanVersion{}, err
	}
	return versionFor(plan, all[plan], catalog.FormatPeriod(period))
}

var currencyRE = regexp.MustCompile(`^[a-z]{3}$`)

// CreatePlanVersion adds a version of a plan's prices, numbered after the
// newest. It never changes a period already begun: a version takes effect
// from the current period at the earliest.
func (s *store) CreatePlanVersion(ctx context.Context, nv NewPlanVersion, now time.Time) (PlanVersion, error) {
	if _, err := s.cat.GetPlan(ctx, nv.Plan); err != nil {
		if catalog.CodeOf(err) == catalog.CodeInvalid {
			// The plan is named by the path, not the body: no such resource.
			return PlanVersion{}, catalog.Errorf(catalog.CodeNotFound, "%s", catalog.MessageOf(err))
		}
		return PlanVersion{}, err
	}
	nv.Currency = strings.ToLower(strings.TrimSpace(nv.Currency))
	if !currencyRE.MatchString(nv.Currency) {
		return PlanVersion{}, catalog.Errorf(catalog.CodeInvalid, "currency %q must be a three-letter ISO 4217 code, e.g. usd", nv.Currency)
	}
	if nv.BaseFee < 0 {
		return PlanVersion{}, catalog.Errorf(catalog.CodeInvalid, "base_fee must not be negative")
	}
	current := catalog.FormatPeriod(now)
	if nv.EffectiveFrom == "" {
		nv.EffectiveFrom = catalog.FormatPeriod(catalog.PeriodEnd(now))
	}
	from, err := catalog.ParsePeriod(nv.EffectiveFrom)
	if err != nil {
		return PlanVersion{}, err
	}
	if nv.EffectiveFrom = catalog.FormatPeriod(from); nv.EffectiveFrom < current {
		return PlanVersion{}, catalog.Errorf(catalog.CodeInvalid, "effective_from %s is in the past: prices change from the current period (%s) at the earliest", nv.EffectiveFrom, current)
	}
	meters, err := s.meters(ctx)
	if err != nil {
		return PlanVersion{}, err
	}
	seen := map[string]bool{}
	for _, m := range nv.Meters {
		switch _, ok := meters[m.Meter]; {
		case !ok:
			return PlanVersion{}, catalog.Errorf(catalog.CodeInvalid, "unknown meter %q (meters: %s)", m.Meter, meterNames(meters))
		case seen[m.Meter]:
			return PlanVersion{}, catalog.Errorf(catalog.CodeInvalid, "meter %q is priced twice", m.Meter)
		case m.Included < 0 || m.UnitPriceMicros < 0:
			return PlanVersion{}, catalog.Errorf(catalog.CodeInvalid, "meter %q: included and unit_price_micros must not be negative", m.Meter)
		case m.PerUnits <= 0:
			return PlanVersion{}, catalog.Errorf(catalog.CodeInvalid, "meter %q: per_units must be at least 1", m.Meter)
		}
		seen[m.Meter] = true
	}
	var version int
	err = s.cat.InTx(ctx, func(tx pgx.Tx) error {
		var latest string
		err := tx.QueryRow(ctx, `
			SELECT coalesce(max(v.version), 0), coalesce(to_char(max(v.effective_from), 'YYYY-MM'), '')
			FROM plans p LEFT JOIN plan_versions v ON v.plan = p.name WHERE p.name = $1
			GROUP BY p.name`, nv.Plan).Scan(&version, &latest)
		if err != nil {
			return catalog.Classify(err, "plan "+strconv.Quote(nv.Plan))
		}
		if nv.EffectiveFrom <= latest {
			return catalog.Errorf(catalog.CodeConflict, "plan %q already has a version from %s; a new one must start after it", nv.Plan, latest)
		}
		version++
		if _, err := tx.Exec(ctx, `
			INSERT INTO plan_versions (plan, version, currency, base_fee, effective_from) VALUES ($1, $2, $3, $4, $5)`,
			nv.Plan, version, nv.Currency, nv.BaseFee, from); err != nil {
			return catalog.Classify(err, "plan version")
		}
		for _, m := range nv.Meters {
			if _, err := tx.Exec(ctx, `
				INSERT INTO plan_meter_prices (plan, version, meter, included, unit_price_micros, per_units)
				VALUES ($1, $2, $3, $4, $5, $6)`, nv.Plan, version, m.Meter, m.Included, m.UnitPriceMicros, m.PerUnits); err != nil {
				return catalog.Classify(err, "plan price")
			}
		}
		return catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: nv.Actor, Action: "plan.version_created", Subject: nv.Plan,
			Details: map[string]any{"version": version, "effective_from": nv.EffectiveFrom, "currency": nv.Currency, "base_fee": nv.BaseFee}})
	})
	if err != nil {
		return PlanVersion{}, err
	}
	versions, err := s.ListPlanVersions(ctx, nv.Plan)
	if err != nil {
		return PlanVersion{}, err
	}
	return versions[len(versions)-1], nil
}

const invoiceColumns = `i.id, i.tenant_id, t.slug, t.name, to_char(i.period, 'YYYY-MM'), i.plan, i.plan_version, i.currency,
	i.total, i.state, i.payment, coalesce(i.stripe_customer_id, ''), coalesce(i.stripe_invoice_id, ''), coalesce(i.run_id, 0),
	i.last_error, i.computed_at, i.send_started_at, i.finalized_at, i.paid_at, i.payment_failed_at, i.dunning_suspended_at,
	i.tax, i.automatic_tax`

const invoiceFrom = ` FROM invoices i JOIN tenants t ON t.id = i.tenant_id `

func scanInvoice(row pgx.Row) (inv Invoice, err error) {
	err = row.Scan(&inv.ID, &inv.TenantID, &inv.Tenant, &inv.TenantName, &inv.Period, &inv.Plan, &inv.PlanVersion, &inv.Currency,
		&inv.Total, &inv.State, &inv.Payment, &inv.StripeCustomerID, &inv.StripeInvoiceID, &inv.RunID,
		&inv.LastError, &inv.ComputedAt, &inv.SendStartedAt, &inv.FinalizedAt, &inv.PaidAt, &inv.PaymentFailedAt, &inv.DunningSuspendedAt,
		&inv.Tax, &inv.AutomaticTax)
	inv.Sent = inv.State == InvoiceFinalized
	if inv.AutomaticTax {
		inv.TaxNote = TaxCalculatedByStripe
	}
	inv.Lines = []InvoiceLine{}
	return inv, err
}

// queryInvoices runs a query selecting invoiceColumns and attaches each
// invoice's lines.
func (s *store) queryInvoices(ctx context.Context, sql string, args ...any) ([]Invoice, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+invoiceColumns+invoiceFrom+sql, args...)
	if err != nil {
		return nil, catalog.Classify(err, "invoices")
	}
	invoices, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Invoice, error) { return scanInvoice(row) })
	if err != nil {
		return nil, catalog.Classify(err, "invoices")
	}
	if len(invoices) == 0 {
		return []Invoice{}, nil
	}
	ids := make([]string, len(invoices))
	byID := make(map[string]*Invoice, len(invoices))
	for i := range invoices {
		ids[i] = invoices[i].ID
		byID[invoices[i].ID] = &invoices[i]
	}
	rows, err = s.pool.Query(ctx, `
		SELECT invoice_id, line_no, kind, coalesce(meter, ''), coalesce(to_char(usage_period, 'YYYY-MM'), ''), quantity, included,
		       unit_price_micros, per_units, amount, description, coalesce(stripe_item_id, '')
		FROM invoice_lines WHERE invoice_id = ANY($1) ORDER BY invoice_id, line_no`, ids)
	if err != nil {
		return nil, catalog.Classify(err, "invoice lines")
	}
	var id string
	var l InvoiceLine
	_, err = pgx.ForEachRow(rows, []any{&id, &l.No, &l.Kind, &l.Meter, &l.UsagePeriod, &l.Quantity, &l.Included,
		&l.UnitPriceMicros, &l.PerUnits, &l.Amount, &l.Description, &l.StripeItemID}, func() error {
		byID[id].Lines = append(byID[id].Lines, l)
		return nil
	})
	return invoices, catalog.Classify(err, "invoice lines")
}

// ListInvoices returns a page of a tenant's invoices with their lines,
// newest period first: at most limit (catalog.CheckLimit's bounds) after cursor, and
// the next page's cursor ("" on the last).
func (s *store) ListInvoices(ctx context.Context, tenantID string, limit int, cursor string) ([]Invoice, string, error) {
	limit, err := catalog.CheckLimit(limit)
	if err != nil {
		return nil, "", err
	}
	before := "9999-12"
	if parts, err := catalog.DecodeCursor(cursor, 1); err != nil {
		return nil, "", err
	} else if parts != nil {
		p, perr := catalog.ParsePeriod(parts[0])
		if perr != nil {
			return nil, "", catalog.ErrBadCursor()
		}
		before = catalog.FormatPeriod(p)
	}
	invs, err := s.queryInvoices(ctx, `WHERE i.tenant_id = $1 AND to_char(i.period, 'YYYY-MM') < $2 ORDER BY i.period DESC LIMIT $3`,
		tenantID, before, limit+1)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(invs) > limit {
		invs = invs[:limit]
		next = catalog.EncodeCursor(invs[limit-1].Period)
	}
	return invs, next, nil
}

// GetInvoice returns an invoice with its lines.
func (s *store) GetInvoice(ctx context.Context, id string) (Invoice, error) {
	if !uuidRE.MatchString(id) {
		return Invoice{}, catalog.Errorf(catalog.CodeNotFound, "invoice %q not found", id)
	}
	invs, err := s.queryInvoices(ctx, `WHERE i.id = $1`, id)
	if err != nil {
		return Invoice{}, err
	}
	if len(invs) == 0 {
		return Invoice{}, catalog.Errorf(catalog.CodeNotFound, "invoice %q not found", id)
	}
	return invs[0], nil
}

// TenantInvoice returns a tenant's invoice for a period (YYYY-MM).
func (s *store) TenantInvoice(ctx context.Context, tenantID, period string) (Invoice, error) {
	invs, err := s.queryInvoices(ctx, `WHERE i.tenant_id = $1 AND to_char(i.period, 'YYYY-MM') = $2`, tenantID, period)
	if err != nil {
		return Invoice{}, err
	}
	if len(invs) == 0 {
		return Invoice{}, catalog.Errorf(catalog.CodeNotFound, "no invoice for %s", period)
	}
	return invs[0], nil
}

// InvoicesToSend returns up to limit invoices of a period not yet finalized,
// with their lines, ordered by id after the id cursor.
func (s *store) InvoicesToSend(ctx context.Context, period, after string, limit int) ([]Invoice, error) {
	if after == "" {
		after = "00000000-0000-0000-0000-000000000000"
	}
	return s.queryInvoices(ctx, `WHERE to_char(i.period, 'YYYY-MM') = $1 AND i.state <> 'finalized' AND i.id > $2
		ORDER BY i.id LIMIT $3`, period, after, limit)
}

// BillableTenants returns the ids of the tenants billable for a period: made
// before it ended, and now active or suspended, or deleted during or after it.
func (s *store) BillableTenants(ctx context.Context, period time.Time) ([]string, error) {
	start := catalog.PeriodOf(period)
	rows, err := s.pool.Query(ctx, `
		SELECT t.id FROM tenants t
		WHERE t.created_at < $2 AND (
			t.state IN ('active', 'suspended') OR
			(t.state IN ('deleting', 'deleted') AND
			 (SELECT max(a.at) FROM audit_events a WHERE a.tenant_id = t.id AND a.action = 'tenant.deleted') >= $1))
		ORDER BY t.id`, start, catalog.PeriodEnd(start))
	if err != nil {
		return nil, catalog.Classify(err, "tenants")
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return ids, catalog.Classify(err, "tenants")
}

// computeLock serialises invoice computation across processes: a tenant's
// adjustments depend on what its other invoices billed, so two invoices of
// one tenant must not be computed at once. Computing is a short phase.
const computeLock = `SELECT pg_advisory_xact_lock(hashtext('tenantplane.billing.compute'))`

// LockCompute takes the compute lock for the rest of tx, waiting up to a
// minute for a computation elsewhere to commit.
func (s *store) LockCompute(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '60s'`); err != nil {
		return catalog.Classify(err, "billing lock")
	}
	if _, err := tx.Exec(ctx, computeLock); err != nil {
		return catalog.Classify(err, "billing lock")
	}
	return nil
}

// Uninvoiced returns those of tenantIDs that have no invoice for the period.
func (s *store) Uninvoiced(ctx context.Context, q catalog.Querier, period time.Time, tenantIDs []string) ([]string, error) {
	rows, err := q.Query(ctx, `
		SELECT t FROM unnest($1::uuid[]) t
		WHERE NOT EXISTS (SELECT 1 FROM invoices i WHERE i.tenant_id = t AND i.period = $2)`, tenantIDs, catalog.PeriodOf(period))
	if err != nil {
		return nil, catalog.Classify(err, "invoices")
	}
	todo, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return todo, catalog.Classify(err, "invoices")
}

// NewInvoice is a tenant's priced invoice for a period, to be stored.
type NewInvoice struct {
	TenantID string
	Version  PlanVersion // the plan, version and currency it is priced in
	Total    int64
	Lines    []InvoiceLine // numbered from 1
}

// InsertInvoices stores invoices of a period with their lines, made by run
// runID (0 for none), and returns how many it stored.
func (s *store) InsertInvoices(ctx context.Context, q catalog.Querier, runID int64, period time.Time, invoices []NewInvoice) (int, error) {
	var (
		tids, plans, currencies []string
		versions                []int
		totals                  []int64
		lines                   = make(map[string][]InvoiceLine, len(invoices))
	)
	for _, inv := range invoices {
		tids, plans, currencies = append(tids, inv.TenantID), append(plans, inv.Version.Plan), append(currencies, inv.Version.Currency)
		versions, totals = append(versions, inv.Version.Version), append(totals, inv.Total)
		lines[inv.TenantID] = inv.Lines
	}
	rows, err := q.Query(ctx, `
		INSERT INTO invoices (tenant_id, period, plan, plan_version, currency, total, run_id)
		SELECT t, $6::date, pl, v, c, tot, nullif($7::bigint, 0)
		FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::bigint[]) AS u(t, pl, v, c, tot)
		RETURNING id, tenant_id`, tids, plans, versions, currencies, totals, catalog.PeriodOf(period), runID)
	if err != nil {
		return 0, catalog.Classify(err, "invoices")
	}
	var (
		created                             int
		invID, tenantID                     string
		lInv, lKind, lMeter, lPeriod, lDesc []string
		lNo                                 []int
		lQty, lIncl, lMicros, lPer, lAmount []int64
	)
	_, err = pgx.ForEachRow(rows, []any{&invID, &tenantID}, func() error {
		created++
		for _, l := range lines[tenantID] {
			lInv, lKind, lMeter, lPeriod, lDesc = append(lInv, invID), append(lKind, string(l.Kind)), append(lMeter, l.Meter), append(lPeriod, l.UsagePeriod), append(lDesc, l.Description)
			lNo, lQty, lIncl = append(lNo, l.No), append(lQty, l.Quantity), append(lIncl, l.Included)
			lMicros, lPer, lAmount = append(lMicros, l.UnitPriceMicros), append(lPer, max(l.PerUnits, 1)), append(lAmount, l.Amount)
		}
		return nil
	})
	if err != nil {
		return 0, catalog.Classify(err, "invoices")
	}
	_, err = q.Exec(ctx, `
		INSERT INTO invoice_lines (invoice_id, line_no, kind, meter, usage_period, quantity, included, unit_price_micros, per_units, amount, description)
		SELECT i, n, k, nullif(m, ''), to_date(nullif(up, ''), 'YYYY-MM'), q, inc, mic, per, amt, d
		FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::text[])
		     AS u(i, n, k, m, up, q, inc, mic, per, amt, d)`,
		lInv, lNo, lKind, lMeter, lPeriod, lQty, lIncl, lMicros, lPer, lAmount, lDesc)
	if err != nil {
		return 0, catalog.Classify(err, "invoice lines")
	}
	return created, nil
}

// PreviewInputs returns what pricing a tenant's period would take now,
// without storing anything.
func (s *store) PreviewInputs(ctx context.Context, tenantID string, period time.Time) (InvoiceInputs, error) {
	inputs, err := s.InvoiceInputs(ctx, s.pool, period, []string{tenantID})
	if err != nil {
		return InvoiceInputs{}, err
	}
	in, ok := inputs[tenantID]
	if !ok {
		return InvoiceInputs{}, catalog.Errorf(catalog.CodeNotFound, "tenant %q not found", tenantID)
	}
	return *in, nil
}

// InvoiceInputs reads, for each of the tenants, its plan version for the
// period, its usage, and the late usage of its invoiced periods within
// catalog.UsageLookback. A tenant that is gone has none.
func (s *store) InvoiceInputs(ctx context.Context, q catalog.Querier, period time.Time, ids []string) (map[string]*InvoiceInputs, error) {
	period = catalog.PeriodOf(period)
	p := catalog.FormatPeriod(period)
	versions, err := planVersions(ctx, q)
	if err != nil {
		return nil, err
	}
	rows, err := q.Query(ctx, `SELECT id, slug, name, plan FROM tenants WHERE id = ANY($1)`, ids)
	if err != nil {
		return nil, catalog.Classify(err, "tenants")
	}
	out := make(map[string]*InvoiceInputs, len(ids))
	var id, slug, name, plan string
	_, err = pgx.ForEachRow(rows, []any{&id, &slug, &name, &plan}, func() error {
		v, err := versionFor(plan, versions[plan], p)
		if err != nil {
			return err
		}
		out[id] = &InvoiceInputs{TenantID: id, Tenant: slug, TenantName: name, Period: p, Version: v, Usage: map[string]int64{}}
		return nil
	})
	if err != nil {
		return nil, catalog.Classify(err, "tenants")
	}
	rows, err = q.Query(ctx, `SELECT tenant_id, meter, quantity FROM usage_periods WHERE tenant_id = ANY($1) AND period = $2`, ids, period)
	if err != nil {
		return nil, catalog.Classify(err, "usage")
	}
	var meter string
	var qty int64
	_, err = pgx.ForEachRow(rows, []any{&id, &meter, &qty}, func() error {
		if in := out[id]; in != nil {
			in.Usage[meter] = qty
		}
		return nil
	})
	if err != nil {
		return nil, catalog.Classify(err, "usage")
	}
	// Late usage: periods of ours that have an invoice and more usage now
	// than their lines, and later adjustments, accounted for.
	rows, err = q.Query(ctx, `
		SELECT up.tenant_id, up.meter, to_char(up.period, 'YYYY-MM'), up.quantity, i.plan, i.plan_version,
		       coalesce(b.quantity, 0)::bigint, coalesce(b.amount, 0)::bigint
		FROM usage_periods up
		JOIN invoices i ON i.tenant_id = up.tenant_id AND i.period = up.period
		LEFT JOIN LATERAL (
			SELECT sum(l.quantity) AS quantity, sum(l.amount) AS amount
			FROM invoices i2 JOIN invoice_lines l ON l.invoice_id = i2.id
			WHERE i2.tenant_id = up.tenant_id AND l.meter = up.meter AND l.usage_period = up.period
			  AND l.kind IN ('usage', 'adjustment')
		) b ON true
		WHERE up.tenant_id = ANY($1) AND up.period < $2 AND up.period >= $3 AND up.quantity > coalesce(b.quantity, 0)
		ORDER BY up.tenant_id, up.period, up.meter`, ids, period, period.AddDate(0, -catalog.UsageLookback, 0))
	if err != nil {
		return nil, catalog.Classify(err, "usage")
	}
	var late LateUsage
	var version int
	_, err = pgx.ForEachRow(rows, []any{&id, &late.Meter, &late.Period, &late.Total, &plan, &version, &late.BilledQuantity, &late.BilledAmount}, func() error {
		in := out[id]
		if in == nil {
			return nil
		}
		i := slices.IndexFunc(versions[plan], func(v PlanVersion) bool { return v.Version == version })
		if i < 0 {
			return catalog.Errorf(catalog.CodeInternal, "plan %q version %d of invoice %s is missing", plan, version, late.Period)
		}
		late.Version = versions[plan][i]
		in.Late = append(in.Late, late)
		return nil
	})
	if err != nil {
		return nil, catalog.Classify(err, "usage")
	}
	return out, nil
}

// BillingCustomer is a tenant's Stripe customer, as far as it is known.
type BillingCustomer struct {
	TenantID         string
	StripeCustomerID string    // "" until created
	AttemptedAt      time.Time // first attempt to create it
}

// BillingCustomers returns the Stripe customers of tenants, by tenant id,
// recording for those that have none that an attempt to create one begins
// now (once: a later attempt keeps the first time).
func (s *store) BillingCustomers(ctx context.Context, tenantIDs []string) (map[string]BillingCustomer, error) {
	rows, err := s.pool.Query(ctx, `
		WITH made AS (
			INSERT INTO billing_customers (tenant_id) SELECT unnest($1::uuid[])
			ON CONFLICT (tenant_id) DO NOTHING
			RETURNING tenant_id, coalesce(stripe_customer_id, ''), attempted_at
		)
		SELECT * FROM made
		UNION ALL
		SELECT tenant_id, coalesce(stripe_customer_id, ''), attempted_at FROM billing_customers WHERE tenant_id = ANY($1)`, tenantIDs)
	if err != nil {
		return nil, catalog.Classify(err, "billing customers")
	}
	out := map[string]BillingCustomer{}
	var c BillingCustomer
	_, err = pgx.ForEachRow(rows, []any{&c.TenantID, &c.StripeCustomerID, &c.AttemptedAt}, func() error {
		out[c.TenantID] = c
		return nil
	})
	return out, catalog.Classify(err, "billing customers")
}

// SetStripeCustomer stores a tenant's Stripe customer id, unless one is
// stored already; it returns the one stored.
func (s *store) SetStripeCustomer(ctx context.Context, tenantID, customerID string) (string, error) {
	var stored string
	err := s.pool.QueryRow(ctx, `
		INSERT INTO billing_customers (tenant_id, stripe_customer_id) VALUES ($1, $2)
		ON CONFLICT (tenant_id) DO UPDATE SET stripe_customer_id = coalesce(billing_customers.stripe_customer_id, excluded.stripe_customer_id)
		RETURNING stripe_customer_id`, tenantID, customerID).Scan(&stored)
	return stored, catalog.Classify(err, "billing customer")
}

// MarkSendStarted records, before their first Stripe write, when sending
// each of the invoices began (once: a retry keeps the first time), and
// returns those times by invoice id.
func (s *store) MarkSendStarted(ctx context.Context, invoiceIDs []string) (map[string]time.Time, error) {
	rows, err := s.pool.Query(ctx, `UPDATE invoices SET send_started_at = coalesce(send_started_at, now())
		WHERE id = ANY($1) RETURNING id, send_started_at`, invoiceIDs)
	if err != nil {
		return nil, catalog.Classify(err, "invoices")
	}
	out := make(map[string]time.Time, len(invoiceIDs))
	var id string
	var at time.Time
	_, err = pgx.ForEachRow(rows, []any{&id, &at}, func() error {
		out[id] = at
		return nil
	})
	return out, catalog.Classify(err, "invoices")
}

// SetInvoiceCreated records the draft invoice made in Stripe.
func (s *store) SetInvoiceCreated(ctx context.Context, invoiceID, customerID, stripeInvoiceID string) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE invoices SET stripe_customer_id = $2, stripe_invoice_id = $3, state = 'invoice_created', last_error = ''
		WHERE id = $1 AND state = 'computed'`, invoiceID, customerID, stripeInvoiceID)
	return catalog.Classify(err, "invoice")
}

// SetLineItem records the Stripe invoice item made for a line; with last,
// it also records that every line is an item on the Stripe invoice (state
// items_added), in the same statement.
func (s *store) SetLineItem(ctx context.Context, invoiceID string, lineNo int, itemID string, last bool) error {
	_, err := s.pool.Exec(ctx, `
		WITH line AS (
			UPDATE invoice_lines SET stripe_item_id = $3 WHERE invoice_id = $1 AND line_no = $2 AND stripe_item_id IS NULL
		)
		UPDATE invoices SET state = 'items_added', last_error = '' WHERE $4 AND id = $1 AND state = 'invoice_created'`,
		invoiceID, lineNo, itemID, last)
	return catalog.Classify(err, "invoice line")
}

// SetInvoiceItemsAdded records that every line is an item on the Stripe invoice.
func (s *store) SetInvoiceItemsAdded(ctx context.Context, invoiceID string) error {
	_, err := s.pool.Exec(ctx, `UPDATE invoices SET state = 'items_added', last_error = '' WHERE id = $1 AND state = 'invoice_created'`, invoiceID)
	return catalog.Classify(err, "invoice")
}

// SetInvoiceFinalized records that the invoice is finalized in Stripe, with
// the payment status Stripe gave (a status a webhook recorded first is kept).
func (s *store) SetInvoiceFinalized(ctx context.Context, invoiceID string, payment PaymentStatus) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE invoices SET state = 'finalized', last_error = '', finalized_at = coalesce(finalized_at, now()),
		       payment = CASE WHEN payment = 'none' THEN $2 ELSE payment END,
		       paid_at = CASE WHEN $2 = 'paid' THEN coalesce(paid_at, now()) ELSE paid_at END
		WHERE id = $1`, invoiceID, payment)
	return catalog.Classify(err, "invoice")
}

// SetInvoiceError records why the last attempt at sending an invoice failed.
func (s *store) SetInvoiceError(ctx context.Context, invoiceID string, runID int64, msg string) error {
	_, err := s.pool.Exec(ctx, `UPDATE invoices SET last_error = $3, run_id = coalesce(nullif($2::bigint, 0), run_id) WHERE id = $1`, invoiceID, runID, msg)
	return catalog.Classify(err, "invoice")
}

const billingRunColumns = `id, to_char(period, 'YYYY-MM'), state, send, trigger, actor, invoices, failed, last_error, created_at, started_at, finished_at`

func scanBillingRun(row pgx.Row) (r BillingRun, err error) {
	err = row.Scan(&r.ID, &r.Period, &r.State, &r.Send, &r.Trigger, &r.Actor, &r.Invoices, &r.Failed, &r.LastError,
		&r.CreatedAt, &r.StartedAt, &r.FinishedAt)
	return r, err
}

// CreateBillingRun records a run of a period, pending. A period has one
// unfinished run at a time: while one is pending or running, asking again
// returns it (created false). The schedule starts one run per period: a
// second scheduled run returns the first.
func (s *store) CreateBillingRun(ctx context.Context, nr NewBillingRun) (run BillingRun, created bool, err error) {
	if nr.Trigger != TriggerAPI && nr.Trigger != TriggerSchedule {
		return BillingRun{}, false, catalog.Errorf(catalog.CodeInvalid, "unknown trigger %q", nr.Trigger)
	}
	period := catalog.PeriodOf(nr.Period)
	for range 3 {
		err = s.cat.InTx(ctx, func(tx pgx.Tx) error {
			run, err = scanBillingRun(tx.QueryRow(ctx, `
				INSERT INTO billing_runs (period, send, trigger, actor) VALUES ($1, $2, $3, $4)
				ON CONFLICT DO NOTHING RETURNING `+billingRunColumns, period, nr.Send, nr.Trigger, nr.Actor))
			if err != nil {
				return err
			}
			created = true
			return catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: nr.Actor, Action: "billing.run_created", Subject: catalog.FormatPeriod(period),
				Details: map[string]any{"run_id": run.ID, "send": nr.Send, "trigger": nr.Trigger}})
		})
		if !errors.Is(err, pgx.ErrNoRows) {
			return run, created, catalog.Classify(err, "billing run")
		}
		// Taken: the open run, or the period's scheduled one.
		run, err = scanBillingRun(s.pool.QueryRow(ctx, `SELECT `+billingRunColumns+` FROM billing_runs
			WHERE period = $1 AND (state IN ('pending', 'running') OR (trigger = 'schedule' AND $2 = 'schedule'))
			ORDER BY id DESC LIMIT 1`, period, nr.Trigger))
		if !errors.Is(err, pgx.ErrNoRows) {
			return run, false, catalog.Classify(err, "billing run")
		}
		// It finished in between: try again.
	}
	return BillingRun{}, false, catalog.Errorf(catalog.CodeUnavailable, "billing run for %s: the catalog is busy, try again", catalog.FormatPeriod(period))
}

// ScheduleFrom is the first period the schedule bills by itself: the first
// that began after billing was installed.
func (s *store) ScheduleFrom(ctx context.Context) (time.Time, error) {
	var from time.Time
	err := s.pool.QueryRow(ctx, `SELECT schedule_from FROM billing_settings`).Scan(&from)
	return from.UTC(), catalog.Classify(err, "billing settings")
}

// HasBillingRun reports whether any run of the period was ever made.
func (s *store) HasBillingRun(ctx context.Context, period time.Time) (bool, error) {
	var ok bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM billing_runs WHERE period = $1)`, catalog.PeriodOf(period)).Scan(&ok)
	return ok, catalog.Classify(err, "billing runs")
}

// GetBillingRun returns a run with the live progress of its period's
// invoices and up to 50 of their failures.
func (s *store) GetBillingRun(ctx context.Context, id int64) (BillingRun, error) {
	run, err := scanBillingRun(s.pool.QueryRow(ctx, `SELECT `+billingRunColumns+` FROM billing_runs WHERE id = $1`, id))
	if err != nil {
		if err == pgx.ErrNoRows {
			return BillingRun{}, catalog.Errorf(catalog.CodeNotFound, "billing run %d not found", id)
		}
		return BillingRun{}, catalog.Classify(err, "billing run")
	}
	p := &BillingRunProgress{}
	err = s.pool.QueryRow(ctx, `
		SELECT count(*), count(*) FILTER (WHERE state = 'computed'), count(*) FILTER (WHERE state = 'invoice_created'),
		       count(*) FILTER (WHERE state = 'items_added'), count(*) FILTER (WHERE state = 'finalized'),
		       count(*) FILTER (WHERE state <> 'finalized' AND last_error <> '')
		FROM invoices WHERE period = to_date($1, 'YYYY-MM')`, run.Period).
		Scan(&p.Invoices, &p.Computed, &p.InvoiceCreated, &p.ItemsAdded, &p.Finalized, &p.Failed)
	if err != nil {
		return BillingRun{}, catalog.Classify(err, "invoices")
	}
	run.Progress = p
	rows, err := s.pool.Query(ctx, `
		SELECT t.slug, i.id, i.state, i.last_error FROM invoices i JOIN tenants t ON t.id = i.tenant_id
		WHERE i.period = to_date($1, 'YYYY-MM') AND i.state <> 'finalized' AND i.last_error <> ''
		ORDER BY t.slug LIMIT 50`, run.Period)
	if err != nil {
		return BillingRun{}, catalog.Classify(err, "invoices")
	}
	run.Failures, err = pgx.CollectRows(rows, pgx.RowToStructByPos[BillingRunFailure])
	return run, catalog.Classify(err, "invoices")
}

// ListBillingRuns returns a page of runs, newest first, of one period
// (YYYY-MM) or of all when period is "": at most limit (catalog.CheckLimit's bounds)
// after cursor, and the next page's cursor ("" on the last).
func (s *store) ListBillingRuns(ctx context.Context, period string, limit int, cursor string) ([]BillingRun, string, error) {
	return catalog.IDPage(ctx, s.pool, limit, cursor, "billing runs", `SELECT `+billingRunColumns+` FROM billing_runs
		WHERE ($1 = '' OR to_char(period, 'YYYY-MM') = $1) AND id < $2 ORDER BY id DESC LIMIT $3`,
		scanBillingRun, func(r BillingRun) int64 { return r.ID }, period)
}

// OpenBillingRuns returns the runs pending or running, oldest first.
func (s *store) OpenBillingRuns(ctx context.Context) ([]BillingRun, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+billingRunColumns+` FROM billing_runs WHERE state IN ('pending', 'running') ORDER BY id`)
	if err != nil {
		return nil, catalog.Classify(err, "billing runs")
	}
	runs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (BillingRun, error) { return scanBillingRun(row) })
	return runs, catalog.Classify(err, "billing runs")
}

// StartBillingRun marks a run running.
func (s *store) StartBillingRun(ctx context.Context, id int64) error {
	_, err := s.pool.Exec(ctx, `UPDATE billing_runs SET state = 'running', started_at = coalesce(started_at, now()) WHERE id = $1 AND state IN ('pending', 'running')`, id)
	return catalog.Classify(err, "billing run")
}

// FinishBillingRun ends a run: done when every invoice of its period is
// finished (finalized, or computed when it does not send), failed otherwise
// or when lastError says why it stopped.
func (s *store) FinishBillingRun(ctx context.Context, id int64, lastError string) (BillingRun, error) {
	run, err := scanBillingRun(s.pool.QueryRow(ctx, `
		WITH r AS (SELECT id, period, send FROM billing_runs WHERE id = $1),
		c AS (
			SELECT count(*) AS invoices,
			       count(*) FILTER (WHERE r.send AND i.state <> 'finalized') AS unfinished
			FROM r JOIN invoices i ON i.period = r.period
		)
		UPDATE billing_runs b SET invoices = c.invoices, failed = c.unfinished,
		       state = CASE WHEN c.unfinished = 0 AND $2 = '' THEN 'done' ELSE 'failed' END,
		       last_error = $2, finished_at = now()
		FROM c WHERE b.id = $1
		RETURNING b.id, to_char(b.period, 'YYYY-MM'), b.state, b.send, b.trigger, b.actor, b.invoices, b.failed, b.last_error,
		          b.created_at, b.started_at, b.finished_at`, id, lastError))
	if err == pgx.ErrNoRows {
		return BillingRun{}, catalog.Errorf(catalog.CodeNotFound, "billing run %d not found", id)
	}
	return run, catalog.Classify(err, "billing run")
}

// HandleStripeEvent records a Stripe event id and runs fn in the same
// transaction. An id recorded before is a duplicate: fn does not run. When fn
// fails nothing is recorded, so Stripe's redelivery is handled afresh.
func (s *store) HandleStripeEvent(ctx context.Context, id, typ string, fn func(ctx context.Context, tx pgx.Tx) error) (duplicate bool, err error) {
	err = s.cat.InTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO stripe_events (id, type) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING`, id, typ)
		if err != nil {
			return catalog.Classify(err, "stripe event")
		}
		if tag.RowsAffected() == 0 {
			duplicate = true
			return nil
		}
		return fn(ctx, tx)
	})
	return duplicate, err
}

// SetInvoicePaymentTx records a payment status Stripe reported for the
// invoice with that Stripe id (or, when none has it, with our invoice id,
// which its metadata carries). A paid invoice stays paid whatever arrives
// after: Stripe does not promise the order of events.
func (s *store) SetInvoicePaymentTx(ctx context.Context, tx pgx.Tx, stripeInvoiceID, invoiceID string, status PaymentStatus) (Invoice, error) {
	if !uuidRE.MatchString(invoiceID) {
		invoiceID = ""
	}
	var id string
	err := tx.QueryRow(ctx, `
		UPDATE invoices SET
		    payment = CASE WHEN payment IN ('paid', 'void') THEN payment ELSE $3 END,
		    paid_at = CASE WHEN $3 = 'paid' THEN coalesce(paid_at, now()) ELSE paid_at END,
		    payment_failed_at = CASE WHEN $3 = 'payment_failed' THEN now() ELSE payment_failed_at END,
		    stripe_invoice_id = coalesce(stripe_invoice_id, nullif($1, ''))
		WHERE id = (SELECT id FROM invoices WHERE stripe_invoice_id = $1
		            UNION ALL SELECT id FROM invoices WHERE $2 <> '' AND id = nullif($2, '')::uuid LIMIT 1)
		RETURNING id`, stripeInvoiceID, invoiceID, status).Scan(&id)
	if err == pgx.ErrNoRows {
		return Invoice{}, catalog.Errorf(catalog.CodeNotFound, "no invoice has Stripe id %q", stripeInvoiceID)
	}
	if err != nil {
		return Invoice{}, catalog.Classify(err, "invoice")
	}
	inv, err := scanInvoice(tx.QueryRow(ctx, `SELECT `+invoiceColumns+invoiceFrom+`WHERE i.id = $1`, id))
	return inv, catalog.Classify(err, "invoice")
}

// OverdueInvoices returns up to limit sent invoices unpaid since before
// cutoff for which no tenant was suspended yet, oldest first.
func (s *store) OverdueInvoices(ctx context.Context, cutoff time.Time, limit int) ([]Invoice, error) {
	return s.queryInvoices(ctx, `WHERE i.state = 'finalized' AND i.payment IN ('open', 'payment_failed')
		AND i.dunning_suspended_at IS NULL AND i.finalized_at < $1 ORDER BY i.finalized_at LIMIT $2`, cutoff, limit)
}

// ClaimDunning marks an invoice as the reason its tenant is suspended; false
// when another process claimed it first.
func (s *store) ClaimDunning(ctx context.Context, invoiceID string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE invoices SET dunning_suspended_at = now() WHERE id = $1 AND dunning_suspended_at IS NULL`, invoiceID)
	return tag.RowsAffected() == 1, catalog.Classify(err, "invoice")
}

// ReleaseDunning undoes ClaimDunning when the suspension could not be made.
func (s *store) ReleaseDunning(ctx context.Context, invoiceID string) error {
	_, err := s.pool.Exec(ctx, `UPDATE invoices SET dunning_suspended_at = NULL WHERE id = $1`, invoiceID)
	return catalog.Classify(err, "invoice")
}

// CountOverdue counts a tenant's sent invoices unpaid since before cutoff.
func (s *store) CountOverdue(ctx context.Context, tenantID string, cutoff time.Time) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM invoices WHERE tenant_id = $1 AND state = 'finalized'
		AND payment IN ('open', 'payment_failed') AND finalized_at < $2`, tenantID, cutoff).Scan(&n)
	return n, catalog.Classify(err, "invoices")
}

// PaidDunningTenants returns the suspended tenants with an invoice that got
// them suspended and was paid in the last 30 days: those dunning may resume.
func (s *store) PaidDunningTenants(ctx context.Context) ([]string, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT DISTINCT i.tenant_id FROM invoices i JOIN tenants t ON t.id = i.tenant_id
		WHERE t.state = 'suspended' AND i.dunning_suspended_at IS NOT NULL AND i.payment = 'paid'
		  AND i.paid_at > now() - interval '30 days'`)
	if err != nil {
		return nil, catalog.Classify(err, "invoices")
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return ids, catalog.Classify(err, "invoices")
}
