package billing_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/catalog"
)

func TestSeededPrices(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	now := time.Now()
	for plan, fee := range map[string]int64{"basic": 500, "pro": 2000, "enterprise": 10000} {
		v, err := b.billing.PlanVersionFor(ctx, plan, now)
		require.NoError(t, err)
		require.Equal(t, 1, v.Version)
		require.Equal(t, "usd", v.Currency)
		require.Equal(t, fee, v.BaseFee, plan)
		calls, ok := v.Price(catalog.MeterAPICalls)
		require.True(t, ok)
		require.Equal(t, billing.MeterPrice{Meter: catalog.MeterAPICalls, Included: 0, UnitPriceMicros: 1_000_000, PerUnits: 1}, calls,
			"$0.01 per API call from the first")
		_, ok = v.Price(catalog.MeterStorageBytes)
		require.True(t, ok)
	}
}

func TestPlanVersions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	now := time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)
	nv := billing.NewPlanVersion{Plan: "pro", Currency: "USD", BaseFee: 2500, Actor: "test",
		Meters: []billing.MeterPrice{{Meter: catalog.MeterAPICalls, Included: 1000, UnitPriceMicros: 500_000, PerUnits: 1}}}
	v, err := b.billing.CreatePlanVersion(ctx, nv, now)
	require.NoError(t, err)
	require.Equal(t, 2, v.Version)
	require.Equal(t, "2026-04", v.EffectiveFrom, "by default from the next period")
	require.Equal(t, "usd", v.Currency)

	// A period is billed on the version in effect at its start.
	march, err := b.billing.PlanVersionFor(ctx, "pro", now)
	require.NoError(t, err)
	require.Equal(t, 1, march.Version)
	april, err := b.billing.PlanVersionFor(ctx, "pro", now.AddDate(0, 1, 0))
	require.NoError(t, err)
	require.Equal(t, 2, april.Version)
	require.Equal(t, int64(2500), april.BaseFee)

	for name, bad := range map[string]billing.NewPlanVersion{
		"past":           {Plan: "pro", Currency: "usd", EffectiveFrom: "2026-02"},
		"not after last": {Plan: "pro", Currency: "usd", EffectiveFrom: "2026-04"},
		"unknown plan":   {Plan: "platinum", Currency: "usd"}, // not found: the plan is named by the path
		"currency":       {Plan: "pro", Currency: "dollars", EffectiveFrom: "2026-06"},
		"unknown meter":  {Plan: "pro", Currency: "usd", EffectiveFrom: "2026-06", Meters: []billing.MeterPrice{{Meter: "x", PerUnits: 1}}},
		"per_units":      {Plan: "pro", Currency: "usd", EffectiveFrom: "2026-06", Meters: []billing.MeterPrice{{Meter: catalog.MeterAPICalls}}},
		"negative fee":   {Plan: "pro", Currency: "usd", EffectiveFrom: "2026-06", BaseFee: -1},
	} {
		_, err := b.billing.CreatePlanVersion(ctx, bad, now)
		require.Error(t, err, name)
		require.Contains(t, []catalog.ErrorCode{catalog.CodeInvalid, catalog.CodeConflict, catalog.CodeNotFound}, catalog.CodeOf(err), name)
	}
	versions, err := b.billing.ListPlanVersions(ctx, "pro")
	require.NoError(t, err)
	require.Len(t, versions, 2)

	// Before the first version, a plan has no prices: the error says so,
	// whichever API or CLI the caller came through.
	_, err = b.billing.PlanVersionFor(ctx, "pro", time.Date(1999, 12, 1, 0, 0, 0, 0, time.UTC))
	require.Equal(t, catalog.CodeInvalid, catalog.CodeOf(err))
	require.Equal(t, `plan "pro" has no prices in effect for 1999-12: none of its versions takes effect by then`, catalog.MessageOf(err))
}

func TestBillingRunsOneOpenPerPeriod(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	period := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	ids := make([]int64, 6)
	created := make([]bool, 6)
	for i := range ids {
		wg.Go(func() {
			r, c, err := b.billing.CreateBillingRun(ctx, billing.NewBillingRun{Period: period, Trigger: billing.TriggerAPI, Actor: "test"})
			require.NoError(t, err)
			ids[i], created[i] = r.ID, c
		})
	}
	wg.Wait()
	n := 0
	for i := range ids {
		require.Equal(t, ids[0], ids[i], "one open run for the period")
		if created[i] {
			n++
		}
	}
	require.Equal(t, 1, n)

	run, err := b.billing.FinishBillingRun(ctx, ids[0], "")
	require.NoError(t, err)
	require.Equal(t, billing.BillingRunDone, run.State)

	// Finished: a new run may start; the schedule makes one per period.
	again, created2, err := b.billing.CreateBillingRun(ctx, billing.NewBillingRun{Period: period, Trigger: billing.TriggerAPI, Actor: "test"})
	require.NoError(t, err)
	require.True(t, created2)
	require.NotEqual(t, ids[0], again.ID)
	_, err = b.billing.FinishBillingRun(ctx, again.ID, "")
	require.NoError(t, err)
	s1, c1, err := b.billing.CreateBillingRun(ctx, billing.NewBillingRun{Period: period, Trigger: billing.TriggerSchedule, Actor: "schedule"})
	require.NoError(t, err)
	require.True(t, c1)
	_, err = b.billing.FinishBillingRun(ctx, s1.ID, "")
	require.NoError(t, err)
	s2, c2, err := b.billing.CreateBillingRun(ctx, billing.NewBillingRun{Period: period, Trigger: billing.TriggerSchedule, Actor: "schedule"})
	require.NoError(t, err)
	require.False(t, c2)
	require.Equal(t, s1.ID, s2.ID)

	_, err = b.billing.GetBillingRun(ctx, 999999)
	require.ErrorIs(t, err, catalog.ErrNotFound)
	audit, err := b.store.ListAudit(ctx, catalog.AuditFilter{Action: "billing.run_created"})
	require.NoError(t, err)
	require.Len(t, audit, 3)
}

func TestComputeInvoicesAndPayments(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	acme := b.addTenant(t, "acme", "pro")
	period := catalog.PeriodOf(time.Now()).AddDate(0, -1, 0)
	require.NoError(t, b.store.RecordUsageBatch(ctx, "u", []catalog.UsageRow{{TenantID: acme.ID, Meter: catalog.MeterAPICalls, Bucket: period, Quantity: 42}}))

	ids, err := b.billing.BillableTenants(ctx, period)
	require.NoError(t, err)
	require.Equal(t, []string{acme.ID}, ids)
	// What pricing the period takes: pro's prices, 42 calls at a cent each.
	in, err := b.billing.PreviewInputs(ctx, acme.ID, period)
	require.NoError(t, err)
	require.Equal(t, int64(42), in.Usage[catalog.MeterAPICalls])
	require.Equal(t, "pro", in.Version.Plan)
	svc := b.service(t, billing.Config{})
	n, err := svc.ComputeInvoices(ctx, 0, period, ids)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	n, err = svc.ComputeInvoices(ctx, 0, period, ids)
	require.NoError(t, err)
	require.Zero(t, n, "computed once")

	inv, err := b.billing.TenantInvoice(ctx, acme.ID, catalog.FormatPeriod(period))
	require.NoError(t, err)
	require.Equal(t, int64(2042), inv.Total)
	require.Equal(t, billing.InvoiceComputed, inv.State)
	require.False(t, inv.Sent)
	require.Len(t, inv.Lines, 2)
	require.Equal(t, []billing.LineKind{billing.LineBaseFee, billing.LineUsage}, []billing.LineKind{inv.Lines[0].Kind, inv.Lines[1].Kind})
	require.Equal(t, catalog.FormatPeriod(period), inv.Lines[1].UsagePeriod)

	// Into Stripe, step by step.
	require.NoError(t, b.billing.SetInvoiceCreated(ctx, inv.ID, "cus_1", "in_1"))
	require.NoError(t, b.billing.SetLineItem(ctx, inv.ID, 1, "ii_1", false))
	inv = b.invoice(t, acme.ID, period)
	require.Equal(t, billing.InvoiceCreated, inv.State)
	require.Equal(t, "ii_1", inv.Lines[0].StripeItemID)
	require.NoError(t, b.billing.SetLineItem(ctx, inv.ID, 2, "ii_2", true))
	inv = b.invoice(t, acme.ID, period)
	require.Equal(t, billing.InvoiceItemsAdded, inv.State, "the last item moves the invoice on, in the same statement")
	require.Equal(t, "ii_2", inv.Lines[1].StripeItemID)
	require.NoError(t, b.billing.SetLineItem(ctx, inv.ID, 2, "ii_other", true))
	require.Equal(t, "ii_2", b.invoice(t, acme.ID, period).Lines[1].StripeItemID, "an item id once stored stays")
	require.NoError(t, b.billing.SetInvoiceFinalized(ctx, inv.ID, billing.PaymentOpen))

	require.Equal(t, billing.InvoiceFinalized, b.invoice(t, acme.ID, period).State)

	// Webhooks: deduplicated; paid stays paid whatever comes after.
	apply := func(eventID string, status billing.PaymentStatus) (bool, billing.Invoice) {
		var got billing.Invoice
		dup, err := b.billing.HandleStripeEvent(ctx, eventID, "invoice.x", func(ctx context.Context, tx pgx.Tx) error {
			var err error
			got, err = b.billing.SetInvoicePaymentTx(ctx, tx, "in_1", "", status)
			return err
		})
		require.NoError(t, err)
		return dup, got
	}
	dup, got := apply("evt_1", billing.PaymentPaid)
	require.False(t, dup)
	require.Equal(t, billing.PaymentPaid, got.Payment)
	dup, _ = apply("evt_1", billing.PaymentFailed)
	require.True(t, dup)
	_, got = apply("evt_2", billing.PaymentFailed)
	require.Equal(t, billing.PaymentPaid, got.Payment, "a late payment_failed does not undo a payment")

	// An unknown Stripe invoice is not found; the event is not recorded.
	_, err = b.billing.HandleStripeEvent(ctx, "evt_3", "invoice.paid", func(ctx context.Context, tx pgx.Tx) error {
		_, err := b.billing.SetInvoicePaymentTx(ctx, tx, "in_other", "", billing.PaymentPaid)
		return err
	})
	require.ErrorIs(t, err, catalog.ErrNotFound)
	dup, _ = apply("evt_3", billing.PaymentPaid)
	require.False(t, dup)
}
