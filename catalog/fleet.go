package catalog

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// ServerSummary is what the catalog knows of the tenants on one server, for
// the operator's view of the fleet.
type ServerSummary struct {
	ByState  map[TenantState]int // tenants by state (deleted ones included)
	Versions map[int64]int       // tenants that are not deleted, by schema version
	// StorageBytes adds up the largest storage_bytes sample of the current
	// period of each tenant that is not deleted: the collector's last word
	// on the databases' size, not a live reading.
	StorageBytes int64
}

// FleetSummary returns a ServerSummary per server id, for every server that
// holds a tenant. It reads the catalog alone: two grouped scans of tenants,
// whatever the fleet's size.
func (s *Store) FleetSummary(ctx context.Context, now time.Time) (map[int64]*ServerSummary, error) {
	out := map[int64]*ServerSummary{}
	get := func(id int64) *ServerSummary {
		if out[id] == nil {
			out[id] = &ServerSummary{ByState: map[TenantState]int{}, Versions: map[int64]int{}}
		}
		return out[id]
	}
	rows, err := s.pool.Query(ctx, `
		SELECT server_id, state, schema_version, count(*) FROM tenants
		WHERE server_id IS NOT NULL GROUP BY 1, 2, 3`)
	if err != nil {
		return nil, Classify(err, "fleet")
	}
	var id, version, bytes int64
	var state TenantState
	var n int
	if _, err = pgx.ForEachRow(rows, []any{&id, &state, &version, &n}, func() error {
		sum := get(id)
		sum.ByState[state] += n
		if state != TenantDeleted {
			sum.Versions[version] += n
		}
		return nil
	}); err != nil {
		return nil, Classify(err, "fleet")
	}
	rows, err = s.pool.Query(ctx, `
		SELECT t.server_id, sum(up.quantity)::bigint FROM usage_periods up JOIN tenants t ON t.id = up.tenant_id
		WHERE up.meter = 'storage_bytes' AND up.period = $1 AND t.server_id IS NOT NULL AND t.state <> 'deleted'
		GROUP BY 1`, PeriodOf(now))
	if err != nil {
		return nil, Classify(err, "fleet storage")
	}
	_, err = pgx.ForEachRow(rows, []any{&id, &bytes}, func() error {
		get(id).StorageBytes = bytes
		return nil
	})
	return out, Classify(err, "fleet storage")
}

// DayUsage is one UTC day of one meter's usage.
type DayUsage struct {
	Day      time.Time
	Quantity int64
}

// TenantDailyUsage returns a tenant's usage of meter per UTC day of the
// period containing period, every day of it (0 when it had none), added up
// or the day's largest sample as the meter aggregates.
func (s *Store) TenantDailyUsage(ctx context.Context, tenantID, meter string, period time.Time) ([]DayUsage, error) {
	if !uuidRE.MatchString(tenantID) {
		return nil, Errorf(CodeNotFound, "tenant %q not found", tenantID)
	}
	start := PeriodOf(period)
	rows, err := s.pool.Query(ctx, `
		SELECT d.day, coalesce(CASE m.aggregation WHEN 'max' THEN max(u.quantity) ELSE sum(u.quantity) END, 0)::bigint
		FROM meters m
		CROSS JOIN generate_series($3::timestamptz, $4::timestamptz - interval '1 day', interval '1 day') AS d(day)
		LEFT JOIN usage u ON u.tenant_id = $1 AND u.meter = m.name AND u.bucket >= d.day AND u.bucket < d.day + interval '1 day'
		WHERE m.name = $2
		GROUP BY d.day, m.aggregation ORDER BY d.day`, tenantID, meter, start, PeriodEnd(start))
	if err != nil {
		return nil, Classify(err, "usage")
	}
	days, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (d DayUsage, err error) {
		err = row.Scan(&d.Day, &d.Quantity)
		return d, err
	})
	if err != nil {
		return nil, Classify(err, "usage")
	}
	if len(days) == 0 {
		return nil, Errorf(CodeNotFound, "meter %q not found", meter)
	}
	return days, nil
}

// TenantQuantity is one tenant's usage of one meter in a period.
type TenantQuantity struct {
	Tenant   string // slug
	Plan     string
	Quantity int64
}

// TopTenants returns the n tenants with the most usage of meter in the
// period containing period, the most first.
func (s *Store) TopTenants(ctx context.Context, meter string, period time.Time, n int) ([]TenantQuantity, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT t.slug, t.plan, up.quantity FROM usage_periods up JOIN tenants t ON t.id = up.tenant_id
		WHERE up.meter = $1 AND up.period = $2 ORDER BY up.quantity DESC, t.slug LIMIT $3`, meter, PeriodOf(period), n)
	if err != nil {
		return nil, Classify(err, "usage")
	}
	top, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (q TenantQuantity, err error) {
		err = row.Scan(&q.Tenant, &q.Plan, &q.Quantity)
		return q, err
	})
	return top, Classify(err, "usage")
}
