package billing

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
	stripe "github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/tenantplane/tenantplane/catalog"
)

// WebhookResult says what a webhook did.
type WebhookResult struct {
	EventID   string `json:"event_id"`
	Type      string `json:"type"`
	Outcome   string `json:"outcome"` // handled, duplicate, ignored
	InvoiceID string `json:"invoice_id,omitempty"`
}

// paymentEvents are the event types that change an invoice's payment status.
var paymentEvents = map[string]PaymentStatus{
	"invoice.paid":                 PaymentPaid,
	"invoice.payment_succeeded":    PaymentPaid,
	"invoice.payment_failed":       PaymentFailed,
	"invoice.marked_uncollectible": PaymentUncollectible,
	"invoice.voided":               PaymentVoid,
}

// HandleWebhook checks a Stripe webhook's signature (the Stripe-Signature
// header, against WebhookSecret and within WebhookTolerance), records its
// event id (a redelivered event is a duplicate and does nothing) and applies
// it: invoice payment events set the invoice's payment status; a payment
// resumes a tenant billing suspended once nothing of it is overdue. A
// missing or wrong signature is a CodeInvalid error; events of other types,
// or about invoices that are not ours, are recorded and ignored.
//
// The API version of the event is deliberately not checked: Stripe sends
// events in the version of the webhook endpoint (or the account's), which
// need not be stripe-go's (2023-10-16), and stripe-mock's fixtures carry
// none. Only fields that every version shares are read (the event's id and
// type, and the invoice's id and metadata), from the raw object.
func (s *Service) HandleWebhook(ctx context.Context, payload []byte, signature string) (WebhookResult, error) {
	if s.cfg.WebhookSecret == "" {
		return WebhookResult{}, catalog.Errorf(catalog.CodeUnavailable, "Stripe webhooks are off: set STRIPE_WEBHOOK_SECRET to the endpoint's signing secret")
	}
	ev, err := webhook.ConstructEventWithOptions(payload, signature, s.cfg.WebhookSecret, webhook.ConstructEventOptions{
		Tolerance: s.cfg.WebhookTolerance, IgnoreAPIVersionMismatch: true,
	})
	if err != nil {
		return WebhookResult{}, catalog.WrapError(catalog.CodeInvalid, err, "webhook refused: %s", webhookReason(err))
	}
	if ev.ID == "" || ev.Type == "" {
		return WebhookResult{}, catalog.Errorf(catalog.CodeInvalid, "webhook refused: the event has no id or type")
	}
	s.noteAPIVersion(ctx, ev.APIVersion)
	res := WebhookResult{EventID: ev.ID, Type: string(ev.Type), Outcome: "ignored"}
	status, isPayment := paymentEvents[string(ev.Type)]
	var obj struct {
		ID       string            `json:"id"`
		Object   string            `json:"object"`
		Metadata map[string]string `json:"metadata"`
	}
	if isPayment {
		if ev.Data == nil || json.Unmarshal(ev.Data.Raw, &obj) != nil || obj.ID == "" {
			return WebhookResult{}, catalog.Errorf(catalog.CodeInvalid, "webhook refused: %s event %s carries no invoice", ev.Type, ev.ID)
		}
	}
	var inv Invoice
	dup, err := s.store.HandleStripeEvent(ctx, ev.ID, string(ev.Type), func(ctx context.Context, tx pgx.Tx) error {
		if !isPayment {
			return nil
		}
		var err error
		inv, err = s.store.SetInvoicePaymentTx(ctx, tx, obj.ID, obj.Metadata[metaInvoiceID], status)
		if errors.Is(err, catalog.ErrNotFound) {
			return nil // an invoice made by something else on the account
		}
		if err == nil {
			res.Outcome = "handled"
		}
		return err
	})
	if err != nil {
		return WebhookResult{}, err
	}
	if dup {
		res.Outcome = "duplicate"
		return res, nil
	}
	if res.Outcome != "handled" {
		return res, nil
	}
	res.InvoiceID = inv.ID
	s.logger.InfoContext(ctx, "invoice payment", "op", "webhook", "tenant", inv.Tenant, "invoice_id", inv.ID, "period", inv.Period,
		"event", ev.Type, "event_id", ev.ID, "payment", inv.Payment)
	if inv.Payment == PaymentPaid && s.dunning() {
		// Stripe gets its 2xx regardless: the dunning sweep retries the resume.
		if err := s.resumeIfPaidUp(ctx, inv.TenantID); err != nil {
			s.logger.WarnContext(ctx, "resume after payment failed; the dunning sweep retries it", "op", "dunning", "tenant", inv.Tenant, "error", err)
		}
	}
	return res, nil
}

func webhookReason(err error) string {
	switch {
	case errors.Is(err, webhook.ErrNotSigned):
		return "no Stripe-Signature header"
	case errors.Is(err, webhook.ErrInvalidHeader):
		return "the Stripe-Signature header is malformed"
	case errors.Is(err, webhook.ErrNoValidSignature):
		return "the signature does not match (check STRIPE_WEBHOOK_SECRET)"
	case errors.Is(err, webhook.ErrTooOld):
		return "the signature is too old"
	}
	return fmt.Sprintf("the payload is not a Stripe event (%v)", err)
}

var versionNoted sync.Map

// noteAPIVersion logs, once per version, events in an API version other
// than stripe-go's.
func (s *Service) noteAPIVersion(ctx context.Context, v string) {
	if v == stripe.APIVersion {
		return
	}
	if _, seen := versionNoted.LoadOrStore(v, true); !seen {
		s.logger.InfoContext(ctx, "Stripe webhook in another API version; only version-stable fields are read",
			"op", "webhook", "event_api_version", v, "client_api_version", stripe.APIVersion)
	}
}
