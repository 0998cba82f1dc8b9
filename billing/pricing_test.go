package billing_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/catalog"
)

func TestCharge(t *testing.T) {
	t.Parallel()
	cent := billing.MeterPrice{Meter: "api_calls", UnitPriceMicros: 1_000_000, PerUnits: 1}
	for _, tc := range []struct {
		name  string
		q     int64
		price billing.MeterPrice
		want  int64
	}{
		{"10,000 calls at a cent", 10_000, cent, 10_000},
		{"500 calls at a cent", 500, cent, 500},
		{"nothing", 0, cent, 0},
		{"within the included", 900, billing.MeterPrice{UnitPriceMicros: 1_000_000, PerUnits: 1, Included: 1000}, 0},
		{"over the included", 1500, billing.MeterPrice{UnitPriceMicros: 1_000_000, PerUnits: 1, Included: 1000}, 500},
		// $0.004 a call: 0.4 of a cent, exact until the line is rounded once.
		{"sub-cent, rounds down", 3, billing.MeterPrice{UnitPriceMicros: 400_000, PerUnits: 1}, 1},    // 1.2
		{"sub-cent, half rounds up", 5, billing.MeterPrice{UnitPriceMicros: 100_000, PerUnits: 1}, 1}, // 0.5
		{"sub-cent, below half", 4, billing.MeterPrice{UnitPriceMicros: 100_000, PerUnits: 1}, 0},     // 0.4
		{"a million at $0.0001", 1_000_000, billing.MeterPrice{UnitPriceMicros: 10_000, PerUnits: 1}, 10_000},
		// $0.25 per GiB over 1 GiB: 3.5 GiB is 2.5 GiB over, 62.5 cents.
		{"GiB pricing", 3584 << 20, billing.MeterPrice{UnitPriceMicros: 25_000_000, PerUnits: 1 << 30, Included: 1 << 30}, 63},
	} {
		got, err := billing.Charge(tc.q, tc.price)
		require.NoError(t, err, tc.name)
		require.Equal(t, tc.want, got, tc.name)
	}
	_, err := billing.Charge(1<<62, billing.MeterPrice{UnitPriceMicros: 1 << 40, PerUnits: 1})
	require.ErrorIs(t, err, catalog.ErrInvalid, "too large an amount is an error, never a wrap-around")
}

func TestFormatting(t *testing.T) {
	t.Parallel()
	require.Equal(t, "$100.00", billing.FormatAmount(10_000, "usd"))
	require.Equal(t, "$5.00", billing.FormatAmount(500, "usd"))
	require.Equal(t, "$1,234,567.89", billing.FormatAmount(123_456_789, "usd"))
	require.Equal(t, "€0.05", billing.FormatAmount(5, "eur"))
	require.Equal(t, "1,000 JPY", billing.FormatAmount(1000, "jpy"))
	// What the CLI prints with it.
	require.Equal(t, "$5.00", billing.FormatAmount(500, "USD"))
	require.Equal(t, "$1,234.05", billing.FormatAmount(123405, "usd"))
	require.Equal(t, "-€0.07", billing.FormatAmount(-7, "eur"))
	require.Equal(t, "1,500 JPY", billing.FormatAmount(1500, "jpy"))
	require.Equal(t, "12.00 CHF", billing.FormatAmount(1200, "chf"))
	require.Equal(t, "$0.01", billing.UnitPrice(1_000_000, "usd"))
	require.Equal(t, "$0.0001", billing.UnitPrice(10_000, "usd"))
	require.Equal(t, "$0.25", billing.UnitPrice(25_000_000, "usd"))
	require.Equal(t, "$12.00", billing.UnitPrice(1_200_000_000, "usd"))
}

// TestGoldenPricing bills the product's origin-story prices from the seeded
// catalog: $0.01 per API call, from the first call, so 10,000 calls are
// $100.00 and 500 calls $5.00, on top of the plan's monthly fee.
func TestGoldenPricing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	big, small := b.addTenant(t, "big-user", "basic"), b.addTenant(t, "small-user", "pro")
	b.usage(t, big.ID, b.last, 10_000)
	b.usage(t, small.ID, b.last, 500)
	run := b.run(t, b.service(t, billing.Config{}), b.last) // no Stripe key: computed and stored
	require.Equal(t, billing.BillingRunDone, run.State)
	require.False(t, run.Send)
	require.Equal(t, 2, run.Invoices)

	for _, tc := range []struct {
		tenant      catalog.Tenant
		base, calls int64
		total       string
	}{
		{big, 500, 10_000, "$105.00"},
		{small, 2000, 500, "$25.00"},
	} {
		inv := b.invoice(t, tc.tenant.ID, b.last)
		require.False(t, inv.Sent, "without Stripe, marked not sent")
		require.Equal(t, billing.PaymentNone, inv.Payment)
		require.Len(t, inv.Lines, 2)
		require.Equal(t, billing.LineBaseFee, inv.Lines[0].Kind)
		require.Equal(t, tc.base, inv.Lines[0].Amount)
		calls := inv.Lines[1]
		require.Equal(t, catalog.MeterAPICalls, calls.Meter)
		require.Equal(t, tc.calls, calls.Amount)
		require.Equal(t, tc.total, billing.FormatAmount(inv.Total, inv.Currency))
	}
	require.Equal(t, "$100.00", billing.FormatAmount(b.invoice(t, big.ID, b.last).Lines[1].Amount, "usd"))
	require.Equal(t, "$5.00", billing.FormatAmount(b.invoice(t, small.ID, b.last).Lines[1].Amount, "usd"))
	require.Contains(t, b.invoice(t, big.ID, b.last).Lines[1].Description, "10,000, at $0.01 per")
}
