package billing_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/stripetest"
)

// TestRunAgainstStripeMock bills tenants through stripe-mock and records
// every request: each write carries its deterministic idempotency key, every
// invoice ends finalized with its Stripe ids stored, and a second run sends
// nothing at all.
func TestRunAgainstStripeMock(t *testing.T) {
	t.Parallel()
	b := setup(t)
	mock := stripetest.Shared(t)
	rec, hc := newRecorder()
	svc := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: mock.URL, StripeHTTPClient: hc, Concurrency: 4})
	require.True(t, svc.SendsToStripe())
	var tenants []catalog.Tenant
	for i := range 6 {
		tn := b.addTenant(t, fmt.Sprintf("tenant-%d", i), []string{"basic", "pro"}[i%2])
		if i != 5 { // one tenant made no calls: a base fee only
			b.usage(t, tn.ID, b.last, int64(100*(i+1)))
		}
		tenants = append(tenants, tn)
	}
	run := b.run(t, svc, b.last)
	require.Equal(t, billing.BillingRunDone, run.State, run.LastError)
	require.True(t, run.Send)
	require.Equal(t, 6, run.Invoices)
	require.Equal(t, 6, run.Progress.Finalized)
	require.Empty(t, run.Failures)

	period := catalog.FormatPeriod(b.last)
	want := map[string]bool{}
	for _, tn := range tenants {
		inv := b.invoice(t, tn.ID, b.last)
		require.Equal(t, billing.InvoiceFinalized, inv.State)
		require.True(t, inv.Sent)
		require.Equal(t, billing.PaymentOpen, inv.Payment)
		require.NotEmpty(t, inv.StripeInvoiceID)
		require.NotEmpty(t, inv.StripeCustomerID)
		want[billing.CustomerKey(tn.ID)] = true
		want[billing.InvoiceKey(tn.ID, period)] = true
		want[billing.FinalizeKey(tn.ID, period)] = true
		for _, l := range inv.Lines {
			require.NotEmpty(t, l.StripeItemID, "line %d of %s", l.No, tn.Slug)
			want[billing.ItemKey(tn.ID, period, l.No)] = true
		}
	}
	got := map[string]bool{}
	for _, r := range writes(rec.take()) {
		require.Equal(t, http.StatusOK, r.Status, r)
		require.NotEmpty(t, r.IdempotencyKey, "every write carries an idempotency key: %+v", r)
		require.False(t, got[r.IdempotencyKey], "key %s sent twice", r.IdempotencyKey)
		got[r.IdempotencyKey] = true
		switch {
		case r.Path == "/v1/customers":
			require.Regexp(t, `^tenantplane-customer-[0-9a-f-]{36}$`, r.IdempotencyKey)
		case r.Path == "/v1/invoices":
			require.Regexp(t, `^tenantplane-invoice-[0-9a-f-]{36}-`+period+`$`, r.IdempotencyKey)
		case r.Path == "/v1/invoiceitems":
			require.Regexp(t, `^tenantplane-item-[0-9a-f-]{36}-`+period+`-[0-9]+$`, r.IdempotencyKey)
		default:
			require.Regexp(t, `^/v1/invoices/[^/]+/finalize$`, r.Path)
			require.Regexp(t, `^tenantplane-finalize-[0-9a-f-]{36}-`+period+`$`, r.IdempotencyKey)
		}
	}
	require.Equal(t, want, got)

	// A second run of the period sends nothing: no write, no read.
	again := b.run(t, svc, b.last)
	require.Equal(t, billing.BillingRunDone, again.State)
	require.NotEqual(t, run.ID, again.ID)
	require.Empty(t, rec.take())

	// The next period reuses each tenant's customer.
	next := b.last.AddDate(0, -1, 0)
	b.run(t, svc, next)
	for _, r := range writes(rec.take()) {
		require.NotEqual(t, "/v1/customers", r.Path, "a customer is created once per tenant")
	}
}

// TestRunResumesAfterEveryFault injects, at each Stripe step, a failure (a
// 500, nothing done) and a lost answer (done, the answer dropped, as if the
// process died before storing it), then reruns: each tenant ends with one
// customer, one invoice with one item per line, finalized once.
func TestRunResumesAfterEveryFault(t *testing.T) {
	t.Parallel()
	for _, op := range []string{"customer.create", "invoice.create", "invoiceitem.create", "invoice.finalize"} {
		for _, kind := range []string{"fail", "drop"} {
			t.Run(op+"/"+kind, func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				fake := newFakeStripe(t)
				svc := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: fake.srv.URL, StripeHTTPClient: fakeClient(), StripeRetries: -1, Concurrency: 2})
				var tenants []catalog.Tenant
				for i := range 3 {
					tn := b.addTenant(t, fmt.Sprintf("t-%d", i), "basic")
					b.usage(t, tn.ID, b.last, 1234)
					tenants = append(tenants, tn)
				}
				// The second call of the step fails for one tenant; the others go through.
				fake.setFault(func(o string, n int) string {
					if o == op && n == 2 {
						return kind
					}
					return ""
				})
				first := b.run(t, svc, b.last)
				require.Equal(t, billing.BillingRunFailed, first.State)
				require.Equal(t, 1, first.Failed)
				require.Len(t, first.Failures, 1)
				require.Contains(t, first.Failures[0].Error, op)

				second := b.run(t, svc, b.last)
				require.Equal(t, billing.BillingRunDone, second.State, second.LastError)
				requireOneInvoiceEach(t, b, fake, tenants)
				third := b.run(t, svc, b.last)
				require.Equal(t, billing.BillingRunDone, third.State)
				requireOneInvoiceEach(t, b, fake, tenants)
			})
		}
	}
}

func requireOneInvoiceEach(t *testing.T, b *testBundle, fake *fakeStripe, tenants []catalog.Tenant) {
	t.Helper()
	state := fake.state()
	for _, tn := range tenants {
		inv := b.invoice(t, tn.ID, b.last)
		require.Equal(t, billing.InvoiceFinalized, inv.State, tn.Slug)
		st := state[tn.ID]
		require.NotNil(t, st, tn.Slug)
		require.Equal(t, 1, st.Customers, "%s: one customer", tn.Slug)
		require.Len(t, st.Invoices, 1, "%s: one invoice", tn.Slug)
		require.Equal(t, "open", st.Invoices[0].Status)
		require.Equal(t, 1, st.Invoices[0].Finalized)
		require.Equal(t, catalog.FormatPeriod(b.last), st.Invoices[0].Period)
		var amounts []int64
		for _, l := range inv.Lines {
			amounts = append(amounts, l.Amount)
		}
		require.Equal(t, amounts, st.Invoices[0].Amounts, "%s: one item per line, with its amount", tn.Slug)
	}
	require.Len(t, state, len(tenants))
}

// TestRunRecoversAfterIdempotencyKeysExpire drops Stripe's answer at a step,
// then reruns more than a day later, when Stripe has forgotten the keys: the
// run finds what the first attempt made (by its metadata) instead of making
// it again.
func TestRunRecoversAfterIdempotencyKeysExpire(t *testing.T) {
	t.Parallel()
	for _, op := range []string{"customer.create", "invoice.create", "invoiceitem.create", "invoice.finalize"} {
		t.Run(op, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			fake := newFakeStripe(t)
			tn := b.addTenant(t, "slow-payer", "pro")
			b.usage(t, tn.ID, b.last, 77)
			svc := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: fake.srv.URL, StripeHTTPClient: fakeClient(), StripeRetries: -1})
			fake.setFault(func(o string, n int) string {
				if o == op {
					return "drop"
				}
				return ""
			})
			require.Equal(t, billing.BillingRunFailed, b.run(t, svc, b.last).State)

			// A day later, Stripe has forgotten the keys. The catalog's clock
			// has not moved: age the first attempts instead.
			later := time.Now().Add(25 * time.Hour)
			fake.setNow(func() time.Time { return later })
			fake.setFault(nil)
			_, err := b.store.Pool().Exec(context.Background(), `UPDATE billing_customers SET attempted_at = attempted_at - interval '25 hours'`)
			require.NoError(t, err)
			_, err = b.store.Pool().Exec(context.Background(), `UPDATE invoices SET send_started_at = send_started_at - interval '25 hours'`)
			require.NoError(t, err)

			run := b.run(t, svc, b.last)
			require.Equal(t, billing.BillingRunDone, run.State, run.LastError)
			requireOneInvoiceEach(t, b, fake, []catalog.Tenant{tn})
		})
	}
}

// TestRunResumesAfterCrash stops a process in the middle of a run (its
// context ends, as in a shutdown or a kill): the run stays running, and
// another process takes it over and finishes it, nothing made twice.
func TestRunResumesAfterCrash(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fake := newFakeStripe(t)
	var tenants []catalog.Tenant
	for i := range 20 {
		tn := b.addTenant(t, fmt.Sprintf("c-%02d", i), "pro")
		b.usage(t, tn.ID, b.last, int64(i))
		tenants = append(tenants, tn)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var once sync.Once
	fake.setFault(func(op string, n int) string {
		if op == "invoiceitem.create" && n == 10 {
			once.Do(cancel) // the process goes away mid-run
		}
		return ""
	})
	first := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: fake.srv.URL, StripeHTTPClient: fakeClient(), Concurrency: 3})
	run, _, err := first.StartRun(context.Background(), b.last, "test")
	require.NoError(t, err)
	_, err = first.ProcessRun(ctx, run.ID)
	require.Error(t, err)
	got, err := b.billing.GetBillingRun(context.Background(), run.ID)
	require.NoError(t, err)
	require.Equal(t, billing.BillingRunRunning, got.State, "left for another process")
	require.Less(t, got.Progress.Finalized, 20)

	// Another process, polling, takes it over.
	second := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: fake.srv.URL, StripeHTTPClient: fakeClient(), Concurrency: 3, PollInterval: 50 * time.Millisecond})
	require.NoError(t, second.Start(context.Background()))
	t.Cleanup(func() { _ = second.Stop(context.Background()) })
	require.Eventually(t, func() bool {
		r, err := b.billing.GetBillingRun(context.Background(), run.ID)
		return err == nil && r.State == billing.BillingRunDone
	}, 30*time.Second, 50*time.Millisecond)
	requireOneInvoiceEach(t, b, fake, tenants)
}

// TestRunHeldByOneProcess shows two processes never work one run at once.
func TestRunHeldByOneProcess(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fake := newFakeStripe(t)
	tn := b.addTenant(t, "acme", "basic")
	b.usage(t, tn.ID, b.last, 1)
	hold := make(chan struct{})
	entered := make(chan struct{})
	var once sync.Once
	fake.setFault(func(op string, n int) string {
		if op == "customer.create" {
			once.Do(func() { close(entered) })
			<-hold
		}
		return ""
	})
	svc := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: fake.srv.URL, StripeHTTPClient: fakeClient()})
	other := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: fake.srv.URL, StripeHTTPClient: fakeClient()})
	run, _, err := svc.StartRun(context.Background(), b.last, "test")
	require.NoError(t, err)
	done := make(chan billing.BillingRun)
	go func() {
		r, err := svc.ProcessRun(context.Background(), run.ID)
		require.NoError(t, err)
		done <- r
	}()
	<-entered
	_, err = other.ProcessRun(context.Background(), run.ID)
	require.ErrorIs(t, err, catalog.ErrConflict)
	// Asking for a run of the period again returns the one running.
	again, created, err := other.StartRun(context.Background(), b.last, "test")
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, run.ID, again.ID)
	close(hold)
	require.Equal(t, billing.BillingRunDone, (<-done).State)
}

func TestStartRunRefusesAnOpenPeriod(t *testing.T) {
	t.Parallel()
	b := setup(t)
	svc := b.service(t, billing.Config{})
	_, _, err := svc.StartRun(context.Background(), time.Now(), "test")
	require.ErrorIs(t, err, catalog.ErrInvalid)
	require.Contains(t, catalog.MessageOf(err), "still open")
}

// TestLocalInvoicesAreSentLater computes invoices without Stripe, then sends
// them when Stripe is configured.
func TestLocalInvoicesAreSentLater(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tn := b.addTenant(t, "acme", "pro")
	b.usage(t, tn.ID, b.last, 10)
	local := b.run(t, b.service(t, billing.Config{}), b.last)
	require.Equal(t, billing.BillingRunDone, local.State)
	require.Equal(t, 1, local.Progress.Computed)
	inv := b.invoice(t, tn.ID, b.last)
	require.False(t, inv.Sent)

	fake := newFakeStripe(t)
	sent := b.run(t, b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: fake.srv.URL, StripeHTTPClient: fakeClient()}), b.last)
	require.Equal(t, billing.BillingRunDone, sent.State)
	require.True(t, b.invoice(t, tn.ID, b.last).Sent)
	requireOneInvoiceEach(t, b, fake, []catalog.Tenant{tn})
}

// TestLateUsageIsAdjustedOnTheNextInvoice invoices a period, then records
// usage of it that arrived late: the next invoice carries it as an
// adjustment line, once.
func TestLateUsageIsAdjustedOnTheNextInvoice(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	tn := b.addTenant(t, "acme", "basic")
	svc := b.service(t, billing.Config{})
	before := b.last.AddDate(0, -1, 0)
	b.usage(t, tn.ID, before, 100)
	b.run(t, svc, before)
	require.Equal(t, int64(600), b.invoice(t, tn.ID, before).Total)

	// 250 calls of that period arrive after its invoice.
	_, err := svc.RecordUsageEvents(ctx, []catalog.UsageEvent{{ID: "late-1", Tenant: tn.Slug, Meter: catalog.MeterAPICalls, Quantity: 250, Timestamp: before.Add(48 * time.Hour)}})
	require.NoError(t, err)
	b.usage(t, tn.ID, b.last, 40)

	// The preview of the open period shows nothing late: it was not this
	// period's; the next invoice (b.last) takes it.
	b.run(t, svc, b.last)
	inv := b.invoice(t, tn.ID, b.last)
	require.Len(t, inv.Lines, 3)
	adj := inv.Lines[2]
	require.Equal(t, billing.LineAdjustment, adj.Kind)
	require.Equal(t, catalog.FormatPeriod(before), adj.UsagePeriod)
	require.Equal(t, int64(250), adj.Quantity)
	require.Equal(t, int64(250), adj.Amount)
	require.Contains(t, adj.Description, "recorded after it was invoiced")
	require.Equal(t, int64(500+40+250), inv.Total)
	require.Equal(t, int64(600), b.invoice(t, tn.ID, before).Total, "an invoice never changes once computed")

	// Nothing late is left: the open period's preview has no adjustment.
	prev, err := svc.Preview(ctx, tn.Slug, time.Time{})
	require.NoError(t, err)
	require.Equal(t, billing.StatePreview, prev.State)
	require.Len(t, prev.Lines, 1, "the base fee only")

	// More late usage of the same period: adjusted again, only for the new part.
	_, err = svc.RecordUsageEvents(ctx, []catalog.UsageEvent{{ID: "late-2", Tenant: tn.Slug, Meter: catalog.MeterAPICalls, Quantity: 5, Timestamp: before.Add(49 * time.Hour)}})
	require.NoError(t, err)
	prev, err = svc.Preview(ctx, tn.Slug, time.Time{})
	require.NoError(t, err)
	require.Len(t, prev.Lines, 2)
	require.Equal(t, int64(5), prev.Lines[1].Quantity)
	require.Equal(t, int64(505), prev.Total)

	// A period already invoiced previews as stored.
	stored, err := svc.Preview(ctx, tn.Slug, b.last)
	require.NoError(t, err)
	require.Equal(t, inv.ID, stored.ID)
}

// TestScheduleStartsOneRunAfterTheGrace starts the run of the last period
// once its grace has passed, once, whatever the number of replicas.
func TestScheduleStartsOneRunAfterTheGrace(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tn := b.addTenant(t, "acme", "basic")
	b.usage(t, tn.ID, b.last, 3)
	// A catalog migrated this month schedules from the next period on: an
	// upgrade does not bill the last month by itself.
	from, err := b.billing.ScheduleFrom(context.Background())
	require.NoError(t, err)
	require.Equal(t, catalog.PeriodEnd(time.Now()), from)
	early, err := billing.New(b.store, billing.Config{Logger: testLogger(), StorageInterval: -1, BillingGrace: time.Nanosecond,
		ScheduleInterval: 20 * time.Millisecond, PollInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, early.Start(context.Background()))
	time.Sleep(200 * time.Millisecond)
	require.NoError(t, early.Stop(context.Background()))
	runs, _, err := b.billing.ListBillingRuns(context.Background(), "", 10, "")
	require.NoError(t, err)
	require.Empty(t, runs)

	_, err = b.store.Pool().Exec(context.Background(), `UPDATE billing_settings SET schedule_from = $1`, b.last.AddDate(0, -1, 0))
	require.NoError(t, err)
	var svcs []*billing.Service
	for range 3 {
		svc, err := billing.New(b.store, billing.Config{Logger: testLogger(), StorageInterval: -1, BillingGrace: time.Nanosecond,
			ScheduleInterval: 20 * time.Millisecond, PollInterval: 20 * time.Millisecond})
		require.NoError(t, err)
		require.NoError(t, svc.Start(context.Background()))
		t.Cleanup(func() { _ = svc.Stop(context.Background()) })
		svcs = append(svcs, svc)
	}
	require.Eventually(t, func() bool {
		runs, _, err := b.billing.ListBillingRuns(context.Background(), catalog.FormatPeriod(b.last), 10, "")
		return err == nil && len(runs) == 1 && runs[0].State == billing.BillingRunDone
	}, 20*time.Second, 20*time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	runs, _, err = b.billing.ListBillingRuns(context.Background(), "", 10, "")
	require.NoError(t, err)
	require.Len(t, runs, 1)
	require.Equal(t, billing.TriggerSchedule, runs[0].Trigger)
	require.Equal(t, int64(503), b.invoice(t, tn.ID, b.last).Total)
	_ = svcs
}
