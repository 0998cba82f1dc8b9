package billing_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/faulttest"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/internal/stripetest"
)

// TestRunUnderNetworkFaults sends a billing run through each network fault
// in turn on the wire to stripe-mock: a slowed wire still bills everyone; a
// hung or resetting one fails the invoices it stops, each saying why, within
// the client's timeout; the run of the period once the wire is clean bills
// the rest, and every tenant ends with one customer, one invoice and one
// item per line in Stripe (requireOneInvoiceEach: what a call cut on the
// wire may have made, its retry asked again under the same key). It runs
// alone (its subtests in parallel): it checks that no goroutine is left
// running once they are over.
func TestRunUnderNetworkFaults(t *testing.T) {
	pgtest.Shared(t)
	stripetest.Shared(t)
	faulttest.VerifyNoLeaks(t)
	_ = faulttest.Seed(t) // the schedule is fixed; the seed is printed for the record
	for _, fault := range faulttest.Each() {
		t.Run(fault.Name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			mock := stripetest.Shared(t)
			proxy := faulttest.NewProxy(t, "stripe", strings.TrimPrefix(mock.URL, "http://"))
			// Keep-alives off: net/http resends by itself a request with an
			// Idempotency-Key when a reused connection breaks before the
			// answer, so one call the recorder sees could be two on the
			// faulty wire; on a connection of its own, each call is one.
			tr := http.DefaultTransport.(*http.Transport).Clone()
			tr.DisableKeepAlives = true
			rec, client := newRecorderOver(tr)
			client.Timeout = 2 * time.Second
			svc := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: proxy.URL(mock.URL), StripeHTTPClient: client, StripeRetries: -1, Concurrency: 2})
			tenants := b.billedTenants(t, 3)
			remove := proxy.Add(t, fault)
			start := time.Now()
			first := b.run(t, svc, b.last)
			t.Logf("%s: run %s in %v, %d failed: %v", fault.Name, first.State, time.Since(start).Round(time.Millisecond), first.Failed, first.Failures)
			switch fault.Name {
			case "hang", "reset":
				require.Equal(t, billing.BillingRunFailed, first.State)
				require.Equal(t, len(tenants), first.Failed)
				want := map[string]string{"hang": "Stripe did not answer in time", "reset": "Stripe is unreachable"}[fault.Name]
				for _, f := range first.Failures {
					require.Contains(t, f.Error, want, "the failure says why")
				}
			default:
				require.Equal(t, billing.BillingRunDone, first.State, first.LastError)
			}
			remove()
			second := b.run(t, svc, b.last)
			require.Equal(t, billing.BillingRunDone, second.State, second.LastError)
			requireOneInvoiceEach(t, b, rec, tenants)
		})
	}
}

// TestRunUnderACatalogReset closes every catalog connection while Stripe is
// creating the second invoice, so its answer cannot be recorded: the run
// is not failed for it (nor the invoice), but stops, still running, for
// the next poll to resume; the resumed run bills everyone once.
func TestRunUnderACatalogReset(t *testing.T) {
	t.Parallel()
	proxy, dsn := faulttest.ProxyDSN(t, "catalog", pgtest.NewDB(t, catalogTemplate))
	b := setupOn(t, dsn)
	rec, hc := newRecorder()
	svc := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: stripetest.Shared(t).URL, StripeHTTPClient: hc, StripeRetries: -1, Concurrency: 1})
	tenants := b.billedTenants(t, 3)
	rec.set(hooks{fault: func(op string, n int) string {
		if op == "invoice.create" && n == 2 {
			proxy.Cut()
			if err := proxy.Restore(); err != nil {
				t.Error(err)
			}
		}
		return ""
	}})
	ctx := context.Background()
	run, _, err := svc.StartRun(ctx, b.last, "test")
	require.NoError(t, err)
	_, err = svc.ProcessRun(ctx, run.ID)
	require.Error(t, err)
	require.True(t, catalog.CatalogDown(err), "the run stopped on the catalog: %v", err)
	stopped, err := svc.GetRun(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, billing.BillingRunRunning, stopped.State, "not failed for the catalog's reset: %s", stopped.LastError)
	require.Zero(t, stopped.Progress.Failed, "no invoice failed for it: %+v", stopped.Failures)

	done, err := svc.ProcessRun(ctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, billing.BillingRunDone, done.State, done.LastError)
	requireOneInvoiceEach(t, b, rec, tenants)
}
