package billing_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/internal/stripetest"
)

// counter is an http.RoundTripper counting the requests to Stripe.
type counter struct {
	base          http.RoundTripper
	calls, writes atomic.Int64
}

func (c *counter) RoundTrip(req *http.Request) (*http.Response, error) {
	c.calls.Add(1)
	if req.Method != http.MethodGet {
		c.writes.Add(1)
	}
	return c.base.RoundTrip(req)
}

// benchStore is a catalog with production pool settings.
func benchStore(b *testing.B) *catalog.Store {
	key, err := catalog.ParseKey(catalog.NewKey())
	require.NoError(b, err)
	cipher, err := catalog.NewCipher(key)
	require.NoError(b, err)
	store, err := catalog.Open(context.Background(), pgtest.NewDB(b, catalogTemplate), cipher, catalog.StoreConfig{})
	require.NoError(b, err)
	b.Cleanup(store.Close)
	return store
}

// BenchmarkBillingRun bills 10,000 tenants with usage against stripe-mock:
// the run's wall time and Stripe calls per second, then a rerun, which must
// write nothing. Tenants are catalog rows only: billing needs no databases.
//
//	go test -run '^$' -bench BillingRun -benchtime 1x ./billing/
func BenchmarkBillingRun(b *testing.B) {
	tenants := 10_000
	if n, err := strconv.Atoi(os.Getenv("BENCH_TENANTS")); err == nil {
		tenants = n
	}
	ctx := context.Background()
	mock := stripetest.Shared(b)
	for range b.N {
		b.StopTimer()
		store := benchStore(b)
		_, err := store.Pool().Exec(ctx, `
			INSERT INTO tenants (slug, name, plan, state, created_at)
			SELECT 'bench-' || g, 'Bench tenant ' || g, CASE WHEN g % 2 = 0 THEN 'pro' ELSE 'basic' END, 'active', now() - interval '400 days'
			FROM generate_series(1, $1) g`, tenants)
		require.NoError(b, err)
		last := catalog.PeriodOf(time.Now()).AddDate(0, -1, 0)
		_, err = store.Pool().Exec(ctx, `
			INSERT INTO usage_periods (tenant_id, meter, period, quantity)
			SELECT id, 'api_calls', $1, 100 + (hashtext(slug) & 65535) FROM tenants`, last)
		require.NoError(b, err)

		cnt := &counter{base: http.DefaultTransport.(*http.Transport).Clone()}
		cnt.base.(*http.Transport).MaxIdleConnsPerHost = 64
		concurrency, _ := strconv.Atoi(os.Getenv("BENCH_CONCURRENCY"))
		svc, err := billing.New(store, billing.Config{Logger: testLogger(), StripeKey: stripetest.Key, StripeAPIBase: mock.URL, Concurrency: concurrency,
			StripeHTTPClient: &http.Client{Transport: cnt, Timeout: 30 * time.Second}, BillingGrace: -1, StorageInterval: -1})
		require.NoError(b, err)

		b.StartTimer()
		began := time.Now()
		run, _, err := svc.StartRun(ctx, last, "bench")
		require.NoError(b, err)
		run, err = svc.ProcessRun(ctx, run.ID)
		require.NoError(b, err)
		wall := time.Since(began)
		b.StopTimer()
		require.Equal(b, billing.BillingRunDone, run.State, run.LastError)
		require.Equal(b, tenants, run.Progress.Finalized)
		calls := cnt.calls.Load()

		cnt.calls.Store(0)
		cnt.writes.Store(0)
		began = time.Now()
		rerun, _, err := svc.StartRun(ctx, last, "bench")
		require.NoError(b, err)
		rerun, err = svc.ProcessRun(ctx, rerun.ID)
		require.NoError(b, err)
		rewall := time.Since(began)
		require.Equal(b, billing.BillingRunDone, rerun.State)
		require.Zero(b, cnt.writes.Load(), "a rerun writes nothing to Stripe")

		b.ReportMetric(wall.Seconds(), "run_s")
		b.ReportMetric(float64(calls), "stripe_calls")
		b.ReportMetric(float64(calls)/wall.Seconds(), "stripe_calls/s")
		b.ReportMetric(rewall.Seconds(), "rerun_s")
		b.ReportMetric(float64(cnt.calls.Load()), "rerun_stripe_calls")
		b.Logf("%d tenants on %d CPUs: run %s (%d Stripe calls, %.0f/s); rerun %s, %d Stripe calls, %d writes",
			tenants, runtime.NumCPU(), wall.Round(time.Millisecond), calls, float64(calls)/wall.Seconds(),
			rewall.Round(time.Millisecond), cnt.calls.Load(), cnt.writes.Load())
	}
}

// BenchmarkUsageEvents posts 100,000 usage events for 10,000 tenants in
// batches of 1,000, then the same batches again (a producer retrying): the
// rate of events taken, and that the retries count nothing.
//
//	go test -run '^$' -bench UsageEvents -benchtime 1x ./billing/
func BenchmarkUsageEvents(b *testing.B) {
	const (
		tenants = 10_000
		events  = 100_000
		batch   = 1_000
	)
	ctx := context.Background()
	for range b.N {
		b.StopTimer()
		store := benchStore(b)
		_, err := store.Pool().Exec(ctx, `
			INSERT INTO tenants (slug, name, plan, state) SELECT 'bench-' || g, 'Bench', 'basic', 'active' FROM generate_series(1, $1) g`, tenants)
		require.NoError(b, err)
		svc, err := billing.New(store, billing.Config{Logger: testLogger(), BillingGrace: -1, StorageInterval: -1})
		require.NoError(b, err)
		now := time.Now()
		batches := make([][]catalog.UsageEvent, 0, events/batch)
		for i := 0; i < events; i += batch {
			evs := make([]catalog.UsageEvent, batch)
			for j := range evs {
				n := i + j
				evs[j] = catalog.UsageEvent{ID: fmt.Sprintf("evt-%08d", n), Tenant: fmt.Sprintf("bench-%d", n%tenants+1),
					Meter: catalog.MeterAPICalls, Quantity: 1, Timestamp: now.Add(-time.Duration(n%3600) * time.Second)}
			}
			batches = append(batches, evs)
		}
		post := func() (accepted, dups int, took time.Duration) {
			began := time.Now()
			results := make(chan catalog.UsageEventsResult, len(batches))
			work := make(chan []catalog.UsageEvent)
			for range 4 {
				go func() {
					for evs := range work {
						res, err := svc.RecordUsageEvents(ctx, evs)
						if err != nil {
							b.Error(err)
						}
						results <- res
					}
				}()
			}
			for _, evs := range batches {
				work <- evs
			}
			close(work)
			for range batches {
				r := <-results
				accepted, dups = accepted+r.Accepted, dups+r.Duplicates
			}
			return accepted, dups, time.Since(began)
		}
		b.StartTimer()
		accepted, _, took := post()
		b.StopTimer()
		require.Equal(b, events, accepted)
		reAccepted, dups, retook := post()
		require.Zero(b, reAccepted)
		require.Equal(b, events, dups)
		page, err := store.PeriodUsage(ctx, now, "", 1)
		require.NoError(b, err)
		require.Equal(b, int64(events), page.Totals[catalog.MeterAPICalls])

		b.ReportMetric(float64(events)/took.Seconds(), "events/s")
		b.ReportMetric(float64(events)/retook.Seconds(), "duplicates/s")
		b.Logf("%d events in batches of %d, 4 producers: %s (%.0f/s); sent again: %s (%.0f/s), all duplicates",
			events, batch, took.Round(time.Millisecond), float64(events)/took.Seconds(), retook.Round(time.Millisecond), float64(events)/retook.Seconds())
	}
}
