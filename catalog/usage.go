package catalog

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
)

// The meters every plan prices. Meters live in the catalog (table meters);
// these are the ones the product itself records.
const (
	// MeterAPICalls counts requests to the tenant API (summed over a period).
	MeterAPICalls = "api_calls"
	// MeterStorageBytes is the size of a tenant's database (the period's largest sample).
	MeterStorageBytes = "storage_bytes"
)

// Aggregation is how a period's usage of a meter adds up.
type Aggregation string

const (
	AggregateSum Aggregation = "sum" // every count in the period, added
	AggregateMax Aggregation = "max" // the largest sample in the period
)

// Meter is something usage is counted in.
type Meter struct {
	Name        string      `json:"name"`
	Aggregation Aggregation `json:"aggregation"`
	Unit        string      `json:"unit"`
	Description string      `json:"description"`
}

// ListMeters returns every meter, by name.
func (s *Store) ListMeters(ctx context.Context) ([]Meter, error) {
	return listMeters(ctx, s.pool)
}

func listMeters(ctx context.Context, q Querier) ([]Meter, error) {
	rows, err := q.Query(ctx, `SELECT name, aggregation, unit, description FROM meters ORDER BY name`)
	if err != nil {
		return nil, Classify(err, "meters")
	}
	meters, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Meter])
	return meters, Classify(err, "meters")
}

func meterMap(ctx context.Context, q Querier) (map[string]Aggregation, error) {
	meters, err := listMeters(ctx, q)
	if err != nil {
		return nil, err
	}
	m := make(map[string]Aggregation, len(meters))
	for _, mt := range meters {
		m[mt.Name] = mt.Aggregation
	}
	return m, nil
}

// Periods are UTC calendar months, half-open: [first instant of the month,
// first instant of the next).

// PeriodOf returns the start of the period t falls in.
func PeriodOf(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// PeriodEnd returns the end (exclusive) of the period that p falls in.
func PeriodEnd(p time.Time) time.Time { return PeriodOf(p).AddDate(0, 1, 0) }

// FormatPeriod writes a period as YYYY-MM.
func FormatPeriod(p time.Time) string { return p.UTC().Format("2006-01") }

// ParsePeriod reads a period written YYYY-MM.
func ParsePeriod(s string) (time.Time, error) {
	p, err := time.Parse("2006-01", strings.TrimSpace(s))
	if err != nil {
		return time.Time{}, Errorf(CodeInvalid, "period %q must be a month written YYYY-MM, e.g. 2026-03", s)
	}
	return p, nil
}

// UsageLookback is how many periods back usage is still billed: usage that
// arrives late for a period already invoiced goes on a later invoice as an
// adjustment, as long as it is no older than this. Usage events older than
// that are refused, rather than stored and never billed.
const UsageLookback = 12

// UsageRow is a count of one meter for one tenant in one UTC hour.
type UsageRow struct {
	TenantID string
	Meter    string
	Bucket   time.Time // UTC hour; other instants are truncated to their hour
	Quantity int64
}

// RecordUsageBatch adds rows to the usage totals, idempotently by batchID: a
// batch recorded before is a no-op (nil error), so a flush that is retried
// after a lost answer counts once. Rows of a sum meter add up; rows of a max
// meter keep the largest. A row for an unknown tenant or meter, or with a
// negative quantity, fails the whole batch with a CodeInvalid error and
// stores nothing: retrying it cannot succeed, so the caller should log and
// drop it. Batch ids are kept a week (PruneUsageBatches).
func (s *Store) RecordUsageBatch(ctx context.Context, batchID string, rows []UsageRow) error {
	if batchID == "" || len(batchID) > 200 {
		return Errorf(CodeInvalid, "usage batch id must be 1 to 200 characters")
	}
	for i, r := range rows {
		switch {
		case !uuidRE.MatchString(r.TenantID):
			return Errorf(CodeInvalid, "usage row %d: tenant id %q is not a tenant id", i, r.TenantID)
		case r.Quantity < 0:
			return Errorf(CodeInvalid, "usage row %d: quantity %d is negative", i, r.Quantity)
		case r.Bucket.IsZero():
			return Errorf(CodeInvalid, "usage row %d: bucket is not set", i)
		}
	}
	return s.InTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO usage_batches (id) VALUES ($1) ON CONFLICT (id) DO NOTHING`, batchID)
		if err != nil {
			return Classify(err, "usage batch")
		}
		if tag.RowsAffected() == 0 {
			return nil // recorded before
		}
		return addUsage(ctx, tx, rows)
	})
}

// PruneUsageBatches forgets the ids of batches recorded before cutoff.
func (s *Store) PruneUsageBatches(ctx context.Context, cutoff time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM usage_batches WHERE recorded_at < $1`, cutoff)
	return tag.RowsAffected(), Classify(err, "usage batches")
}

type usageKey struct {
	tenant, meter string
	at            time.Time
}

// addUsage adds rows to the hourly and the period totals. Rows are merged
// per key first (one statement may touch a row once) and written in key
// order, so concurrent batches lock rows in the same order and never deadlock.
func addUsage(ctx context.Context, tx pgx.Tx, rows []UsageRow) error {
	if len(rows) == 0 {
		return nil
	}
	meters, err := meterMap(ctx, tx)
	if err != nil {
		return err
	}
	hours := map[usageKey]int64{}
	periods := map[usageKey]int64{}
	merge := func(m map[usageKey]int64, k usageKey, q int64, agg Aggregation) {
		old, ok := m[k]
		switch {
		case !ok:
			m[k] = q
		case agg == AggregateMax:
			m[k] = max(old, q)
		default:
			m[k] = old + q
		}
	}
	for i, r := range rows {
		agg, ok := meters[r.Meter]
		if !ok {
			return Errorf(CodeInvalid, "usage row %d: unknown meter %q (meters: %s)", i, r.Meter, meterNames(meters))
		}
		merge(hours, usageKey{r.TenantID, r.Meter, r.Bucket.UTC().Truncate(time.Hour)}, r.Quantity, agg)
		merge(periods, usageKey{r.TenantID, r.Meter, PeriodOf(r.Bucket)}, r.Quantity, agg)
	}
	for _, agg := range []Aggregation{AggregateSum, AggregateMax} {
		update := "usage.quantity + excluded.quantity"
		pupdate := "usage_periods.quantity + excluded.quantity"
		if agg == AggregateMax {
			update = "greatest(usage.quantity, excluded.quantity)"
			pupdate = "greatest(usage_periods.quantity, excluded.quantity)"
		}
		t, m, at, q := columns(hours, meters, agg)
		if len(t) == 0 {
			continue
		}
		_, err := tx.Exec(ctx, `
			INSERT INTO usage (tenant_id, meter, bucket, quantity)
			SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::bigint[])
			ON CONFLICT (tenant_id, meter, bucket) DO UPDATE SET quantity = `+update, t, m, at, q)
		if err != nil {
			return classifyUsage(err)
		}
		t, m, at, q = columns(periods, meters, agg)
		_, err = tx.Exec(ctx, `
			INSERT INTO usage_periods (tenant_id, meter, period, quantity)
			SELECT * FROM unnest($1::uuid[], $2::text[], $3::date[], $4::bigint[])
			ON CONFLICT (tenant_id, meter, period) DO UPDATE SET quantity = `+pupdate+`, updated_at = now()`, t, m, at, q)
		if err != nil {
			return classifyUsage(err)
		}
	}
	return nil
}

// columns returns the entries of m for meters of one aggregation, in key order.
func columns(m map[usageKey]int64, meters map[string]Aggregation, agg Aggregation) (tenants, names []string, at []time.Time, qty []int64) {
	keys := make([]usageKey, 0, len(m))
	for k := range m {
		if meters[k.meter] == agg {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b usageKey) int {
		return cmp.Or(strings.Compare(a.tenant, b.tenant), strings.Compare(a.meter, b.meter), a.at.Compare(b.at))
	})
	for _, k := range keys {
		tenants, names, at, qty = append(tenants, k.tenant), append(names, k.meter), append(at, k.at), append(qty, m[k])
	}
	return tenants, names, at, qty
}

func classifyUsage(err error) error {
	err = Classify(err, "usage")
	if CodeOf(err) == CodeInvalid {
		return WrapError(CodeInvalid, err, "usage names a tenant that does not exist")
	}
	return err
}

func meterNames(m map[string]Aggregation) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// UsageEvent is a count reported by the product's own backend. ID makes it
// idempotent: an id counts once, for good.
type UsageEvent struct {
	ID        string    `json:"id"`
	Tenant    string    `json:"tenant"` // the tenant's slug
	Meter     string    `json:"meter"`
	Quantity  int64     `json:"quantity"`
	Timestamp time.Time `json:"timestamp"`
}

// UsageEventsResult says what a batch of usage events did.
type UsageEventsResult struct {
	Accepted   int `json:"accepted"`   // new events, now counted
	Duplicates int `json:"duplicates"` // ids seen before (or twice in the batch), not counted again
}

// Limits of usage events.
const (
	// MaxUsageEvents is the most events one batch may hold.
	MaxUsageEvents = 10000
	// MaxUsageEventSkew is how far in the future an event's timestamp may be
	// (clocks differ); later ones are refused.
	MaxUsageEventSkew = 5 * time.Minute
)

// RecordUsageEvents validates a batch of usage events and counts the new
// ones, all in one transaction. Any invalid event (unknown tenant or meter,
// negative quantity, a timestamp missing, more than MaxUsageEventSkew after
// now or older than UsageLookback periods) fails the whole batch with a
// CodeInvalid error naming each bad event, and stores nothing. An id seen
// before is a duplicate, whatever its other fields: the first one counts.
func (s *Store) RecordUsageEvents(ctx context.Context, events []UsageEvent, now time.Time) (UsageEventsResult, error) {
	switch {
	case len(events) == 0:
		return UsageEventsResult{}, Errorf(CodeInvalid, "the batch holds no events: send a JSON array of {id, tenant, meter, quantity, timestamp}")
	case len(events) > MaxUsageEvents:
		return UsageEventsResult{}, Errorf(CodeInvalid, "the batch holds %d events; send at most %d at a time", len(events), MaxUsageEvents)
	}
	var res UsageEventsResult
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		meters, err := meterMap(ctx, tx)
		if err != nil {
			return err
		}
		slugs := make([]string, 0, len(events))
		for _, e := range events {
			slugs = append(slugs, e.Tenant)
		}
		tenants, err := tenantIDsBySlug(ctx, tx, slugs)
		if err != nil {
			return err
		}
		oldest, newest := PeriodOf(now).AddDate(0, -UsageLookback, 0), now.Add(MaxUsageEventSkew)
		var problems []string
		bad := func(i int, e UsageEvent, format string, args ...any) {
			if len(problems) < 10 {
				problems = append(problems, fmt.Sprintf("event %d (id %q): ", i, e.ID)+fmt.Sprintf(format, args...))
			} else if len(problems) == 10 {
				problems = append(problems, "and more")
			}
		}
		seen := make(map[string]bool, len(events))
		var fresh []UsageEvent
		for i, e := range events {
			id, ok := tenants[e.Tenant]
			_, known := meters[e.Meter]
			switch {
			case e.ID == "" || len(e.ID) > 255 || strings.ContainsFunc(e.ID, unicode.IsControl):
				bad(i, e, "id must be 1 to 255 printable characters")
			case !ok:
				bad(i, e, "unknown tenant %q", e.Tenant)
			case !known:
				bad(i, e, "unknown meter %q (meters: %s)", e.Meter, meterNames(meters))
			case e.Quantity < 0:
				bad(i, e, "quantity %d is negative", e.Quantity)
			case e.Timestamp.IsZero():
				bad(i, e, "timestamp is required (RFC 3339)")
			case e.Timestamp.After(newest):
				bad(i, e, "timestamp %s is in the future", e.Timestamp.UTC().Format(time.RFC3339))
			case e.Timestamp.Before(oldest):
				bad(i, e, "timestamp %s is older than the %d periods billing looks back (from %s)",
					e.Timestamp.UTC().Format(time.RFC3339), UsageLookback, FormatPeriod(oldest))
			case seen[e.ID]:
				res.Duplicates++
			default:
				seen[e.ID] = true
				e.Tenant = id
				fresh = append(fresh, e)
			}
		}
		if len(problems) > 0 {
			return Errorf(CodeInvalid, "no events were recorded: %s", strings.Join(problems, "; "))
		}
		// Ids in order, so concurrent batches with common ids wait on each
		// other instead of deadlocking.
		slices.SortFunc(fresh, func(a, b UsageEvent) int { return strings.Compare(a.ID, b.ID) })
		ids, tids, names, qty, at := make([]string, len(fresh)), make([]string, len(fresh)), make([]string, len(fresh)), make([]int64, len(fresh)), make([]time.Time, len(fresh))
		for i, e := range fresh {
			ids[i], tids[i], names[i], qty[i], at[i] = e.ID, e.Tenant, e.Meter, e.Quantity, e.Timestamp
		}
		rows, err := tx.Query(ctx, `
			INSERT INTO usage_events (id, tenant_id, meter, quantity, occurred_at)
			SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::bigint[], $5::timestamptz[])
			ON CONFLICT (id) DO NOTHING
			RETURNING id`, ids, tids, names, qty, at)
		if err != nil {
			return Classify(err, "usage events")
		}
		inserted, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return Classify(err, "usage events")
		}
		isNew := make(map[string]bool, len(inserted))
		for _, id := range inserted {
			isNew[id] = true
		}
		usage := make([]UsageRow, 0, len(inserted))
		for _, e := range fresh {
			if isNew[e.ID] {
				usage = append(usage, UsageRow{TenantID: e.Tenant, Meter: e.Meter, Bucket: e.Timestamp, Quantity: e.Quantity})
			}
		}
		res.Accepted = len(usage)
		res.Duplicates += len(fresh) - len(usage)
		return addUsage(ctx, tx, usage)
	})
	if err != nil {
		return UsageEventsResult{}, err
	}
	return res, nil
}

// tenantIDsBySlug maps the slugs of tenants that exist and are not deleted to their ids.
func tenantIDsBySlug(ctx context.Context, q Querier, slugs []string) (map[string]string, error) {
	rows, err := q.Query(ctx, `SELECT slug, id FROM tenants WHERE slug = ANY($1) AND state <> 'deleted'`, slugs)
	if err != nil {
		return nil, Classify(err, "tenants")
	}
	out := map[string]string{}
	var slug, id string
	_, err = pgx.ForEachRow(rows, []any{&slug, &id}, func() error {
		out[slug] = id
		return nil
	})
	return out, Classify(err, "tenants")
}

// TenantUsage returns one tenant's usage per meter for the period (UTC
// calendar month) containing period: every meter, 0 when it has none.
func (s *Store) TenantUsage(ctx context.Context, tenantID string, period time.Time) (map[string]int64, error) {
	if !uuidRE.MatchString(tenantID) {
		return nil, Errorf(CodeNotFound, "tenant %q not found", tenantID)
	}
	rows, err := s.pool.Query(ctx, `
		SELECT m.name, coalesce(up.quantity, 0)
		FROM meters m LEFT JOIN usage_periods up ON up.meter = m.name AND up.tenant_id = $1 AND up.period = $2`,
		tenantID, PeriodOf(period))
	if err != nil {
		return nil, Classify(err, "usage")
	}
	out := map[string]int64{}
	var name string
	var q int64
	_, err = pgx.ForEachRow(rows, []any{&name, &q}, func() error {
		out[name] = q
		return nil
	})
	return out, Classify(err, "usage")
}

// TenantUsageSummary is one tenant's usage in a period.
type TenantUsageSummary struct {
	TenantID string           `json:"tenant_id"`
	Tenant   string           `json:"tenant"` // slug
	Usage    map[string]int64 `json:"usage"`  // by meter
}

// UsagePage is a page of the usage of a period, by tenant slug.
type UsagePage struct {
	Period  string               `json:"period"`
	Tenants []TenantUsageSummary `json:"tenants"`
	// Totals adds up every tenant's usage of the period per meter, all pages
	// (for a max meter, the sum of each tenant's maximum).
	Totals     map[string]int64 `json:"totals"`
	NextCursor string           `json:"next_cursor,omitempty"` // the cursor of the next page
}

// PeriodUsage returns the usage of a period by tenant (those with any),
// ordered by slug, limit tenants (default 1000, at most 10000) after the
// slug cursor.
func (s *Store) PeriodUsage(ctx context.Context, period time.Time, cursor string, limit int) (UsagePage, error) {
	limit, err := CheckLimit(limit)
	if err != nil {
		return UsagePage{}, err
	}
	after, err := DecodeCursor(cursor, 1)
	if err != nil {
		return UsagePage{}, err
	}
	cursor = ""
	if after != nil {
		cursor = after[0]
	}
	period = PeriodOf(period)
	page := UsagePage{Period: FormatPeriod(period), Tenants: []TenantUsageSummary{}, Totals: map[string]int64{}}
	rows, err := s.pool.Query(ctx, `
		WITH page AS (
			SELECT DISTINCT t.id, t.slug FROM usage_periods up JOIN tenants t ON t.id = up.tenant_id
			WHERE up.period = $1 AND t.slug > $2 ORDER BY t.slug LIMIT $3
		)
		SELECT page.id, page.slug, up.meter, up.quantity
		FROM page JOIN usage_periods up ON up.tenant_id = page.id AND up.period = $1
		ORDER BY page.slug, up.meter`, period, cursor, limit+1)
	if err != nil {
		return UsagePage{}, Classify(err, "usage")
	}
	var id, slug, meter string
	var q int64
	_, err = pgx.ForEachRow(rows, []any{&id, &slug, &meter, &q}, func() error {
		if n := len(page.Tenants); n == 0 || page.Tenants[n-1].TenantID != id {
			page.Tenants = append(page.Tenants, TenantUsageSummary{TenantID: id, Tenant: slug, Usage: map[string]int64{}})
		}
		page.Tenants[len(page.Tenants)-1].Usage[meter] = q
		return nil
	})
	if err != nil {
		return UsagePage{}, Classify(err, "usage")
	}
	if len(page.Tenants) > limit {
		page.Tenants = page.Tenants[:limit]
		page.NextCursor = EncodeCursor(page.Tenants[limit-1].Tenant)
	}
	rows, err = s.pool.Query(ctx, `
		SELECT meter, sum(quantity)::bigint FROM usage_periods WHERE period = $1 GROUP BY meter`, period)
	if err != nil {
		return UsagePage{}, Classify(err, "usage")
	}
	_, err = pgx.ForEachRow(rows, []any{&meter, &q}, func() error {
		page.Totals[meter] = q
		return nil
	})
	return page, Classify(err, "usage")
}

// TenantDatabase is where a live tenant's data is, for per-database meters.
type TenantDatabase struct {
	TenantID string
	Slug     string
	Server   string
	Database string
}

// TenantDatabases returns the databases of active and suspended tenants, by server.
func (s *Store) TenantDatabases(ctx context.Context) ([]TenantDatabase, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT t.id, t.slug, s.name, t.db_name FROM tenants t JOIN servers s ON s.id = t.server_id
		WHERE t.state IN ('active', 'suspended') AND t.db_name IS NOT NULL
		ORDER BY s.name, t.db_name`)
	if err != nil {
		return nil, Classify(err, "tenants")
	}
	dbs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[TenantDatabase])
	return dbs, Classify(err, "tenants")
}
