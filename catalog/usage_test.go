package catalog_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/catalog"
)

// addTenant inserts an active tenant directly (billing needs no database of its own).
func (b *testBundle) addTenant(t *testing.T, slug, plan string) catalog.Tenant {
	t.Helper()
	ctx := context.Background()
	_, err := b.store.Pool().Exec(ctx, `INSERT INTO tenants (slug, name, plan, state, created_at) VALUES ($1, $2, $3, 'active', now() - interval '400 days')`,
		slug, "Tenant "+slug, plan)
	require.NoError(t, err)
	tn, err := b.store.GetTenant(ctx, slug)
	require.NoError(t, err)
	return tn
}

func TestPeriods(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 3, 31, 23, 59, 59, 0, time.FixedZone("x", -5*3600)) // April 1st in UTC
	require.Equal(t, time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC), catalog.PeriodOf(at))
	require.Equal(t, time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC), catalog.PeriodEnd(at))
	require.Equal(t, "2026-04", catalog.FormatPeriod(catalog.PeriodOf(at)))
	p, err := catalog.ParsePeriod("2026-12")
	require.NoError(t, err)
	require.Equal(t, time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), p)
	for _, bad := range []string{"", "2026-13", "2026/03", "March"} {
		_, err := catalog.ParsePeriod(bad)
		require.ErrorIs(t, err, catalog.ErrInvalid, bad)
	}
}

// TestSeededMeters checks the meters the catalog's migrations seed: those
// the product records itself.
func TestSeededMeters(t *testing.T) {
	t.Parallel()
	b := setup(t)
	meters, err := b.store.ListMeters(context.Background())
	require.NoError(t, err)
	require.Equal(t, []catalog.Meter{
		{Name: "api_calls", Aggregation: catalog.AggregateSum, Unit: "call", Description: "requests to the tenant API"},
		{Name: "storage_bytes", Aggregation: catalog.AggregateMax, Unit: "byte", Description: "size of the tenant database (pg_database_size), the period's largest sample"},
	}, meters)
}

func TestRecordUsageBatchIsIdempotent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	a, z := b.addTenant(t, "alpha", "basic"), b.addTenant(t, "zulu", "pro")
	now := time.Now().UTC()
	hour := now.Truncate(time.Hour)
	rows := []catalog.UsageRow{
		{TenantID: a.ID, Meter: catalog.MeterAPICalls, Bucket: hour, Quantity: 7},
		{TenantID: a.ID, Meter: catalog.MeterAPICalls, Bucket: hour.Add(15 * time.Minute), Quantity: 3}, // same hour: merged
		{TenantID: z.ID, Meter: catalog.MeterAPICalls, Bucket: hour, Quantity: 1},
		{TenantID: z.ID, Meter: catalog.MeterStorageBytes, Bucket: hour, Quantity: 500},
		{TenantID: z.ID, Meter: catalog.MeterStorageBytes, Bucket: hour, Quantity: 300}, // max, not sum
	}
	require.NoError(t, b.store.RecordUsageBatch(ctx, "flush-1", rows))
	require.NoError(t, b.store.RecordUsageBatch(ctx, "flush-1", rows), "a retried batch is a no-op")
	// Retried concurrently, too.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { require.NoError(t, b.store.RecordUsageBatch(ctx, "flush-2", rows[:1])) })
	}
	wg.Wait()

	got, err := b.store.TenantUsage(ctx, a.ID, now)
	require.NoError(t, err)
	require.Equal(t, map[string]int64{catalog.MeterAPICalls: 17, catalog.MeterStorageBytes: 0}, got)
	got, err = b.store.TenantUsage(ctx, z.ID, now)
	require.NoError(t, err)
	require.Equal(t, map[string]int64{catalog.MeterAPICalls: 1, catalog.MeterStorageBytes: 500}, got)

	// A larger sample raises the max; a smaller one does not lower it.
	require.NoError(t, b.store.RecordUsageBatch(ctx, "s-1", []catalog.UsageRow{{TenantID: z.ID, Meter: catalog.MeterStorageBytes, Bucket: hour, Quantity: 900}}))
	require.NoError(t, b.store.RecordUsageBatch(ctx, "s-2", []catalog.UsageRow{{TenantID: z.ID, Meter: catalog.MeterStorageBytes, Bucket: hour.Add(-time.Hour), Quantity: 100}}))
	got, err = b.store.TenantUsage(ctx, z.ID, now)
	require.NoError(t, err)
	require.Equal(t, int64(900), got[catalog.MeterStorageBytes])

	// Bad rows fail the batch, store nothing, and do not use up its id.
	for _, bad := range [][]catalog.UsageRow{
		{{TenantID: a.ID, Meter: "bogus", Bucket: hour, Quantity: 1}},
		{{TenantID: a.ID, Meter: catalog.MeterAPICalls, Bucket: hour, Quantity: -1}},
		{{TenantID: "00000000-0000-0000-0000-000000000001", Meter: catalog.MeterAPICalls, Bucket: hour, Quantity: 1}},
	} {
		err := b.store.RecordUsageBatch(ctx, "bad", append([]catalog.UsageRow{{TenantID: a.ID, Meter: catalog.MeterAPICalls, Bucket: hour, Quantity: 1000}}, bad...))
		require.ErrorIs(t, err, catalog.ErrInvalid)
	}
	got, err = b.store.TenantUsage(ctx, a.ID, now)
	require.NoError(t, err)
	require.Equal(t, int64(17), got[catalog.MeterAPICalls])
	require.NoError(t, b.store.RecordUsageBatch(ctx, "bad", rows[:1]))

	// Old batch ids are pruned.
	n, err := b.store.PruneUsageBatches(ctx, time.Now().Add(time.Hour))
	require.NoError(t, err)
	require.EqualValues(t, 5, n)
}

func TestUsageEventsDedupAcrossRetriedBatches(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.addTenant(t, "acme", "pro")
	globex := b.addTenant(t, "globex", "basic")
	now := time.Now().UTC()
	ev := func(id, tenant string, q int64) catalog.UsageEvent {
		return catalog.UsageEvent{ID: id, Tenant: tenant, Meter: catalog.MeterAPICalls, Quantity: q, Timestamp: now.Add(-time.Minute)}
	}
	batch := []catalog.UsageEvent{ev("e1", "acme", 10), ev("e2", "acme", 20), ev("e3", "globex", 5), ev("e1", "acme", 10)}
	res, err := b.store.RecordUsageEvents(ctx, batch, now)
	require.NoError(t, err)
	require.Equal(t, catalog.UsageEventsResult{Accepted: 3, Duplicates: 1}, res)

	// The producer retries the batch (with one more event), several times at once.
	retry := append(batch[:3:3], ev("e4", "globex", 1))
	var wg sync.WaitGroup
	results := make([]catalog.UsageEventsResult, 6)
	for i := range results {
		wg.Go(func() {
			var err error
			results[i], err = b.store.RecordUsageEvents(ctx, retry, now)
			require.NoError(t, err)
		})
	}
	wg.Wait()
	accepted := 0
	for _, r := range results {
		accepted += r.Accepted
		require.Equal(t, 4, r.Accepted+r.Duplicates)
	}
	require.Equal(t, 1, accepted, "e4 counts once across the concurrent retries")

	page, err := b.store.PeriodUsage(ctx, now, "", 0)
	require.NoError(t, err)
	require.Equal(t, catalog.FormatPeriod(now), page.Period)
	require.Len(t, page.Tenants, 2)
	require.Equal(t, "acme", page.Tenants[0].Tenant)
	require.Equal(t, int64(30), page.Tenants[0].Usage[catalog.MeterAPICalls])
	require.Equal(t, "globex", page.Tenants[1].Tenant)
	require.Equal(t, int64(6), page.Tenants[1].Usage[catalog.MeterAPICalls])
	require.Equal(t, int64(36), page.Totals[catalog.MeterAPICalls])
	got, err := b.store.TenantUsage(ctx, globex.ID, now)
	require.NoError(t, err)
	require.Equal(t, int64(6), got[catalog.MeterAPICalls])

	// Pages by slug.
	page, err = b.store.PeriodUsage(ctx, now, "", 1)
	require.NoError(t, err)
	require.Len(t, page.Tenants, 1)
	require.Equal(t, catalog.EncodeCursor("acme"), page.NextCursor, "an opaque cursor, as every list has")
	page, err = b.store.PeriodUsage(ctx, now, page.NextCursor, 1)
	require.NoError(t, err)
	require.Equal(t, "globex", page.Tenants[0].Tenant)
	require.Empty(t, page.NextCursor)

	// Duplicates are permanent: an id is never counted again, however late.
	res, err = b.store.RecordUsageEvents(ctx, []catalog.UsageEvent{ev("e2", "acme", 20)}, now.Add(40*24*time.Hour))
	require.NoError(t, err)
	require.Equal(t, catalog.UsageEventsResult{Duplicates: 1}, res)
}

func TestUsageEventsValidation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	acme := b.addTenant(t, "acme", "pro")
	now := time.Now().UTC()
	good := catalog.UsageEvent{ID: "ok-1", Tenant: "acme", Meter: catalog.MeterAPICalls, Quantity: 5, Timestamp: now}
	for name, bad := range map[string]catalog.UsageEvent{
		"unknown tenant":  {ID: "b", Tenant: "nosuch", Meter: catalog.MeterAPICalls, Quantity: 1, Timestamp: now},
		"unknown meter":   {ID: "b", Tenant: "acme", Meter: "gigawatts", Quantity: 1, Timestamp: now},
		"negative":        {ID: "b", Tenant: "acme", Meter: catalog.MeterAPICalls, Quantity: -1, Timestamp: now},
		"future":          {ID: "b", Tenant: "acme", Meter: catalog.MeterAPICalls, Quantity: 1, Timestamp: now.Add(time.Hour)},
		"no timestamp":    {ID: "b", Tenant: "acme", Meter: catalog.MeterAPICalls, Quantity: 1},
		"too old to bill": {ID: "b", Tenant: "acme", Meter: catalog.MeterAPICalls, Quantity: 1, Timestamp: now.AddDate(-2, 0, 0)},
		"no id":           {Tenant: "acme", Meter: catalog.MeterAPICalls, Quantity: 1, Timestamp: now},
	} {
		_, err := b.store.RecordUsageEvents(ctx, []catalog.UsageEvent{good, bad}, now)
		require.ErrorIs(t, err, catalog.ErrInvalid, name)
		require.Contains(t, catalog.MessageOf(err), "event 1", name)
	}
	_, err := b.store.RecordUsageEvents(ctx, nil, now)
	require.ErrorIs(t, err, catalog.ErrInvalid)

	// Nothing of the refused batches was stored, the good event's id included.
	got, err := b.store.TenantUsage(ctx, acme.ID, now)
	require.NoError(t, err)
	require.Zero(t, got[catalog.MeterAPICalls])
	res, err := b.store.RecordUsageEvents(ctx, []catalog.UsageEvent{good}, now)
	require.NoError(t, err)
	require.Equal(t, 1, res.Accepted)

	// A few minutes of clock skew is fine.
	skewed := good
	skewed.ID, skewed.Timestamp = "ok-2", now.Add(2*time.Minute)
	_, err = b.store.RecordUsageEvents(ctx, []catalog.UsageEvent{skewed}, now)
	require.NoError(t, err)
}

func TestUsageEventsAcrossPeriods(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	acme := b.addTenant(t, "acme", "pro")
	now := time.Now().UTC()
	last := catalog.PeriodOf(now).AddDate(0, -1, 0)
	events := make([]catalog.UsageEvent, 0, 48)
	for h := range 48 {
		events = append(events, catalog.UsageEvent{ID: fmt.Sprint("h", h), Tenant: "acme", Meter: catalog.MeterAPICalls, Quantity: 1,
			Timestamp: catalog.PeriodOf(now).Add(time.Duration(h-24) * time.Hour)}) // half last period, half this
	}
	_, err := b.store.RecordUsageEvents(ctx, events, catalog.PeriodOf(now).Add(24*time.Hour))
	require.NoError(t, err)
	for _, p := range []time.Time{last, catalog.PeriodOf(now)} {
		got, err := b.store.TenantUsage(ctx, acme.ID, p)
		require.NoError(t, err)
		require.Equal(t, int64(24), got[catalog.MeterAPICalls], catalog.FormatPeriod(p))
	}
}
