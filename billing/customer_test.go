package billing_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/internal/stripetest"
)

// storedCustomer is the Stripe customer id the catalog holds for a tenant ("" for none).
func (b *testBundle) storedCustomer(t testing.TB, tenantID string) string {
	t.Helper()
	var id string
	err := b.store.Pool().QueryRow(context.Background(),
		`SELECT coalesce((SELECT stripe_customer_id FROM billing_customers WHERE tenant_id = $1), '')`, tenantID).Scan(&id)
	require.NoError(t, err)
	return id
}

// TestEnsureCustomerCreatesOneAndABillingRunUsesIt: EnsureCustomer (what
// provisioning calls) creates the tenant's customer through stripe-mock
// with the tenant's idempotency key and stores its id; called again it
// sends nothing; a billing run then invoices that customer without
// creating another.
func TestEnsureCustomerCreatesOneAndABillingRunUsesIt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	mock := stripetest.Shared(t)
	rec, hc := newRecorder()
	svc := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: mock.URL, StripeHTTPClient: hc})
	tn := b.addTenant(t, "acme", "basic")

	require.NoError(t, svc.EnsureCustomer(ctx, tn))
	reqs := rec.take()
	require.Len(t, reqs, 1)
	require.Equal(t, recorded{Method: http.MethodPost, Path: "/v1/customers", IdempotencyKey: billing.CustomerKey(tn.ID), Status: http.StatusOK}, reqs[0].wire())
	customer := b.storedCustomer(t, tn.ID)
	require.NotEmpty(t, customer)

	require.NoError(t, svc.EnsureCustomer(ctx, tn))
	require.Empty(t, rec.take(), "a tenant with a stored customer sends nothing")
	require.Equal(t, customer, b.storedCustomer(t, tn.ID))

	b.usage(t, tn.ID, b.last, 100)
	run := b.run(t, svc, b.last)
	require.Equal(t, billing.BillingRunDone, run.State, run.LastError)
	for _, r := range writes(rec.take()) {
		require.NotEqual(t, "/v1/customers", r.Path, "the run uses the customer made before")
	}
	require.Equal(t, customer, b.invoice(t, tn.ID, b.last).StripeCustomerID)
}

// TestEnsureCustomerAfterTheKeyExpired: a first attempt older than Stripe
// keeps idempotency keys looks for the customer it may have made (by our
// metadata) before creating one, as a billing run does: one code path.
func TestEnsureCustomerAfterTheKeyExpired(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	mock := stripetest.Shared(t)
	rec, hc := newRecorder()
	later := func() time.Time { return time.Now().Add(25 * time.Hour) }
	svc := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: mock.URL, StripeHTTPClient: hc, Now: later})
	tn := b.addTenant(t, "acme", "basic")

	require.NoError(t, svc.EnsureCustomer(ctx, tn))
	reqs := rec.take()
	require.Len(t, reqs, 2, "%+v", reqs)
	require.Equal(t, recorded{Method: http.MethodGet, Path: "/v1/customers/search", Status: http.StatusOK}, reqs[0].wire())
	// stripe-mock's search answers a fixture without our metadata: not ours, so one is created.
	require.Equal(t, recorded{Method: http.MethodPost, Path: "/v1/customers", IdempotencyKey: billing.CustomerKey(tn.ID), Status: http.StatusOK}, reqs[1].wire())
	require.NotEmpty(t, b.storedCustomer(t, tn.ID))
}

// TestEnsureCustomerFailure: a Stripe refusal is an error that names the
// step and what Stripe said, never the secret key (stripe-mock quotes it,
// unmasked), and stores nothing. Without a key, EnsureCustomer says so.
func TestEnsureCustomerFailure(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	mock := stripetest.Shared(t)
	const secret = "sk_live_tenantplane_do_not_print_me"
	svc := b.service(t, billing.Config{StripeKey: secret, StripeAPIBase: mock.URL})
	tn := b.addTenant(t, "acme", "basic")

	err := svc.EnsureCustomer(ctx, tn)
	require.Error(t, err)
	require.Contains(t, err.Error(), "customer.create: Stripe answered 401")
	require.NotContains(t, err.Error(), secret)
	require.Empty(t, b.storedCustomer(t, tn.ID))

	local := b.service(t, billing.Config{})
	require.False(t, local.SendsToStripe())
	require.True(t, errors.Is(local.EnsureCustomer(ctx, tn), billing.ErrNoStripe))
}
