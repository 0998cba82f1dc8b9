package billing_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/stripetest"
)

const webhookSecret = "whsec_test_tenantplane"

// event is a Stripe event about an invoice, in an API version that is not
// stripe-go's: Stripe sends the endpoint's version.
func event(id, typ, stripeInvoiceID string, metadata map[string]string) []byte {
	b, _ := json.Marshal(map[string]any{
		"id": id, "object": "event", "type": typ, "api_version": "2024-06-20", "created": time.Now().Unix(),
		"data": map[string]any{"object": map[string]any{"id": stripeInvoiceID, "object": "invoice", "metadata": metadata}},
	})
	return b
}

func sign(payload []byte, secret string) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: secret, Timestamp: time.Now()}).Header
}

// sentInvoice bills a tenant through stripe-mock and returns its invoice.
// stripe-mock gives each invoice it is asked to create an id of its own, as
// Stripe does: the events below name invoices by it.
func (b *testBundle) sentInvoice(t *testing.T, svc *billing.Service, tn catalog.Tenant, period time.Time) billing.Invoice {
	t.Helper()
	b.usage(t, tn.ID, period, 100)
	run := b.run(t, svc, period)
	require.Equal(t, billing.BillingRunDone, run.State, run.LastError)
	inv := b.invoice(t, tn.ID, period)
	require.Equal(t, billing.PaymentOpen, inv.Payment)
	return inv
}

func TestWebhookMarksInvoicesPaid(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	svc := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: stripetest.Shared(t).URL, WebhookSecret: webhookSecret})
	acme, globex := b.addTenant(t, "acme", "pro"), b.addTenant(t, "globex", "basic")
	b.usage(t, globex.ID, b.last, 1)
	inv := b.sentInvoice(t, svc, acme, b.last)
	other := b.invoice(t, globex.ID, b.last)
	require.NotEqual(t, inv.StripeInvoiceID, other.StripeInvoiceID, "each invoice has a Stripe id of its own")

	paid := event("evt_paid_1", "invoice.paid", inv.StripeInvoiceID, nil)
	res, err := svc.HandleWebhook(ctx, paid, sign(paid, webhookSecret))
	require.NoError(t, err)
	require.Equal(t, billing.WebhookResult{EventID: "evt_paid_1", Type: "invoice.paid", Outcome: "handled", InvoiceID: inv.ID}, res)
	got := b.invoice(t, acme.ID, b.last)
	require.Equal(t, billing.PaymentPaid, got.Payment)
	require.NotNil(t, got.PaidAt)

	// Redelivered: a duplicate, nothing done.
	res, err = svc.HandleWebhook(ctx, paid, sign(paid, webhookSecret))
	require.NoError(t, err)
	require.Equal(t, "duplicate", res.Outcome)

	// A failure arriving after the payment does not undo it.
	failed := event("evt_failed_1", "invoice.payment_failed", inv.StripeInvoiceID, nil)
	_, err = svc.HandleWebhook(ctx, failed, sign(failed, webhookSecret))
	require.NoError(t, err)
	require.Equal(t, billing.PaymentPaid, b.invoice(t, acme.ID, b.last).Payment)

	// A failure of another invoice, found by the id in its metadata.
	failed = event("evt_failed_2", "invoice.payment_failed", "in_unknown_to_us", map[string]string{"tenantplane_invoice_id": other.ID})
	_, err = svc.HandleWebhook(ctx, failed, sign(failed, webhookSecret))
	require.NoError(t, err)
	got = b.invoice(t, globex.ID, b.last)
	require.Equal(t, billing.PaymentFailed, got.Payment)
	require.NotNil(t, got.PaymentFailedAt)

	// Events about invoices that are not ours, and of other types, are ignored.
	for i, payload := range [][]byte{
		event("evt_x_1", "invoice.paid", "in_not_ours", nil),
		event("evt_x_2", "customer.created", "cus_1", nil),
	} {
		res, err := svc.HandleWebhook(ctx, payload, sign(payload, webhookSecret))
		require.NoError(t, err, i)
		require.Equal(t, "ignored", res.Outcome, i)
	}

	// Forged, unsigned, or stale: refused, nothing changed.
	forged := event("evt_forged", "invoice.paid", other.StripeInvoiceID, nil)
	for name, sig := range map[string]string{
		"wrong secret": sign(forged, "whsec_someone_else"),
		"unsigned":     "",
		"malformed":    "t=abc",
		"stale":        webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: forged, Secret: webhookSecret, Timestamp: time.Now().Add(-time.Hour)}).Header,
	} {
		_, err := svc.HandleWebhook(ctx, forged, sig)
		require.ErrorIs(t, err, catalog.ErrInvalid, name)
	}
	require.Equal(t, billing.PaymentFailed, b.invoice(t, globex.ID, b.last).Payment)

	// Without a secret, webhooks are off.
	off := b.service(t, billing.Config{})
	_, err = off.HandleWebhook(ctx, paid, sign(paid, webhookSecret))
	require.ErrorIs(t, err, catalog.ErrUnavailable)
}

// suspender suspends and resumes through the catalog, as the provisioner does.
type suspender struct{ store *catalog.Store }

func (s suspender) transition(ctx context.Context, slug, actor, reason, action string, from, to catalog.TenantState) (catalog.Tenant, error) {
	t, err := s.store.GetTenant(ctx, slug)
	if err != nil {
		return catalog.Tenant{}, err
	}
	return s.store.TransitionTenant(ctx, catalog.Transition{TenantID: t.ID, From: []catalog.TenantState{from}, To: to, Actor: actor, Action: action, Reason: reason})
}

func (s suspender) Suspend(ctx context.Context, slug, actor, reason string) (catalog.Tenant, error) {
	return s.transition(ctx, slug, actor, reason, "tenant.suspended", catalog.TenantActive, catalog.TenantSuspended)
}

func (s suspender) Resume(ctx context.Context, slug, actor, reason string) (catalog.Tenant, error) {
	return s.transition(ctx, slug, actor, reason, "tenant.resumed", catalog.TenantSuspended, catalog.TenantActive)
}

// TestDunningSuspendsAndPaymentResumes leaves an invoice unpaid past the
// grace: its tenant is suspended (once, audited), and resumed when the
// payment's webhook arrives. A tenant an operator suspended stays suspended.
func TestDunningSuspendsAndPaymentResumes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	clock := time.Now()
	cfg := billing.Config{StripeKey: stripetest.Key, StripeAPIBase: stripetest.Shared(t).URL, WebhookSecret: webhookSecret,
		Suspender: suspender{b.store}, DunningGrace: 7 * 24 * time.Hour, Now: func() time.Time { return clock }}
	svc := b.service(t, cfg)
	late, onTime, held := b.addTenant(t, "late-payer", "pro"), b.addTenant(t, "on-time", "basic"), b.addTenant(t, "held", "basic")
	forgiven := b.addTenant(t, "forgiven", "basic")
	for _, tn := range []catalog.Tenant{onTime, held, forgiven} {
		b.usage(t, tn.ID, b.last, 1)
	}
	inv := b.sentInvoice(t, svc, late, b.last)
	paid := event("evt_on_time", "invoice.paid", b.invoice(t, onTime.ID, b.last).StripeInvoiceID, nil)
	_, err := svc.HandleWebhook(ctx, paid, sign(paid, webhookSecret))
	require.NoError(t, err)

	// Within the grace: nothing happens.
	require.NoError(t, svc.SweepDunning(ctx))
	requireState(t, b, late.Slug, catalog.TenantActive)

	// An operator suspends "held" for reasons of their own.
	_, err = suspender{b.store}.Suspend(ctx, held.Slug, "admin", "abuse")
	require.NoError(t, err)

	// Past the grace: the unpaid tenants are suspended, once.
	clock = clock.Add(8 * 24 * time.Hour)
	require.NoError(t, svc.SweepDunning(ctx))
	require.NoError(t, svc.SweepDunning(ctx))
	requireState(t, b, late.Slug, catalog.TenantSuspended)
	requireState(t, b, forgiven.Slug, catalog.TenantSuspended)
	requireState(t, b, onTime.Slug, catalog.TenantActive)
	audit, err := b.store.ListAudit(ctx, catalog.AuditFilter{TenantID: late.ID, Action: "tenant.suspended"})
	require.NoError(t, err)
	require.Len(t, audit, 1)
	require.Equal(t, billing.Actor, audit[0].Actor)
	require.Contains(t, audit[0].Reason, inv.ID)
	require.Contains(t, audit[0].Reason, "unpaid")
	require.NotNil(t, b.invoice(t, late.ID, b.last).DunningSuspendedAt)

	// Paying resumes it.
	paid = event("evt_late", "invoice.paid", inv.StripeInvoiceID, nil)
	_, err = svc.HandleWebhook(ctx, paid, sign(paid, webhookSecret))
	require.NoError(t, err)
	requireState(t, b, late.Slug, catalog.TenantActive)
	audit, err = b.store.ListAudit(ctx, catalog.AuditFilter{TenantID: late.ID, Action: "tenant.resumed"})
	require.NoError(t, err)
	require.Len(t, audit, 1)
	require.Equal(t, billing.Actor, audit[0].Actor)

	// "held" pays too, but an operator suspended it: it stays suspended.
	paid = event("evt_held", "invoice.paid", b.invoice(t, held.ID, b.last).StripeInvoiceID, nil)
	_, err = svc.HandleWebhook(ctx, paid, sign(paid, webhookSecret))
	require.NoError(t, err)
	require.NoError(t, svc.SweepDunning(ctx))
	requireState(t, b, held.Slug, catalog.TenantSuspended)

	// An operator who resumes a tenant dunning suspended is not overruled:
	// the invoice suspended it once.
	_, err = suspender{b.store}.Resume(ctx, forgiven.Slug, "admin", "paying by cheque")
	require.NoError(t, err)
	clock = clock.Add(24 * time.Hour)
	require.NoError(t, svc.SweepDunning(ctx))
	requireState(t, b, forgiven.Slug, catalog.TenantActive)
}

// TestDunningResumeIsRetriedBySweep resumes, from the sweep, a tenant whose
// payment arrived while its resume could not be made.
func TestDunningResumeIsRetriedBySweep(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	clock := time.Now()
	flaky := &flakySuspender{suspender: suspender{b.store}}
	svc := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: stripetest.Shared(t).URL, WebhookSecret: webhookSecret,
		Suspender: flaky, Now: func() time.Time { return clock }})
	tn := b.addTenant(t, "acme", "pro")
	inv := b.sentInvoice(t, svc, tn, b.last)
	clock = clock.Add(15 * 24 * time.Hour) // past the default grace of 14 days
	require.NoError(t, svc.SweepDunning(ctx))
	requireState(t, b, tn.Slug, catalog.TenantSuspended)

	flaky.failResume = true
	paid := event("evt_1", "invoice.paid", inv.StripeInvoiceID, nil)
	_, err := svc.HandleWebhook(ctx, paid, sign(paid, webhookSecret))
	require.NoError(t, err, "Stripe gets its 2xx: the payment is recorded")
	requireState(t, b, tn.Slug, catalog.TenantSuspended)
	flaky.failResume = false
	require.NoError(t, svc.SweepDunning(ctx))
	requireState(t, b, tn.Slug, catalog.TenantActive)
}

type flakySuspender struct {
	suspender
	failResume bool
}

func (f *flakySuspender) Resume(ctx context.Context, slug, actor, reason string) (catalog.Tenant, error) {
	if f.failResume {
		return catalog.Tenant{}, fmt.Errorf("provisioner unavailable")
	}
	return f.suspender.Resume(ctx, slug, actor, reason)
}

func requireState(t *testing.T, b *testBundle, slug string, want catalog.TenantState) {
	t.Helper()
	tn, err := b.store.GetTenant(context.Background(), slug)
	require.NoError(t, err)
	require.Equal(t, want, tn.State, slug)
}
