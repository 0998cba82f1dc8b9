package billing

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	stripe "github.com/stripe/stripe-go/v76"

	"github.com/tenantplane/tenantplane/catalog"
)

// Idempotency keys are deterministic: built from the tenant, the period and
// the line, so a retry of any write, by any process, is the same request to
// Stripe, which answers it with the first answer instead of doing it again.
// Stripe keeps keys for 24 hours; a step whose first attempt may be older
// (recoverAfter) looks in Stripe for what that attempt made before writing.

// CustomerKey is the idempotency key of a tenant's customer.
func CustomerKey(tenantID string) string { return "tenantplane-customer-" + tenantID }

// InvoiceKey is the idempotency key of a tenant's draft invoice for a period.
func InvoiceKey(tenantID, period string) string {
	return "tenantplane-invoice-" + tenantID + "-" + period
}

// ItemKey is the idempotency key of one line's invoice item.
func ItemKey(tenantID, period string, line int) string {
	return "tenantplane-item-" + tenantID + "-" + period + "-" + strconv.Itoa(line)
}

// FinalizeKey is the idempotency key of finalizing a tenant's invoice for a period.
func FinalizeKey(tenantID, period string) string {
	return "tenantplane-finalize-" + tenantID + "-" + period
}

// recoverAfter is how old a step's first attempt must be for a retry to look
// in Stripe first: within it, the idempotency key answers for it.
const recoverAfter = 23 * time.Hour

// Metadata keys on the objects billing makes in Stripe.
const (
	metaTenantID  = "tenantplane_tenant_id"
	metaTenant    = "tenantplane_tenant"
	metaInvoiceID = "tenantplane_invoice_id"
	metaPeriod    = "tenantplane_period"
	metaLine      = "tenantplane_line"
)

// stepErr names the Stripe step an error happened at. Its message goes to
// the catalog (an invoice's or a tenant's last error), so it never holds the
// secret key: Stripe masks a key it quotes, stripe-mock does not.
type stepErr struct {
	step string
	err  error
	key  string // the secret key, to redact
}

func (e *stepErr) Error() string { return redactKey(e.step+": "+stripeMessage(e.err), e.key) }
func (e *stepErr) Unwrap() error { return e.err }

// redactKey replaces the secret key in msg by the name of its setting.
func redactKey(msg, key string) string {
	if key == "" {
		return msg
	}
	return strings.ReplaceAll(msg, key, "[STRIPE_API_KEY]")
}

func stepError(err error) string { return err.Error() }

// stripeMessage is a short, key-free account of a Stripe failure.
func stripeMessage(err error) string {
	var se *stripe.Error
	if errors.As(err, &se) {
		msg := se.Msg
		if msg == "" {
			msg = string(se.Type)
		}
		if se.HTTPStatusCode != 0 {
			return fmt.Sprintf("Stripe answered %d: %s", se.HTTPStatusCode, msg)
		}
		return "Stripe: " + msg
	}
	if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		return "Stripe did not answer in time: " + err.Error()
	}
	return "Stripe is unreachable: " + err.Error()
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// call runs one Stripe request and counts it.
func (s *Service) call(op string, fn func() error) error {
	err := fn()
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	s.metrics.stripe.WithLabelValues(op, outcome).Inc()
	if err != nil {
		return &stepErr{step: op, err: err, key: s.cfg.StripeKey}
	}
	return nil
}

// send takes one invoice through Stripe from wherever it stopped: customer,
// draft invoice, an item per line, finalize. Each step's id is stored before
// the next step starts. inv.SendStartedAt is when sending it first began;
// cust is the tenant's customer as the catalog knows it.
func (s *Service) send(ctx context.Context, inv Invoice, cust BillingCustomer) (err error) {
	stale := inv.SendStartedAt != nil && s.now().Sub(*inv.SendStartedAt) > recoverAfter
	defer func() {
		// A location Stripe Tax cannot use fails this invoice alone, saying
		// how to fix it; the run goes on, and running the period again
		// retries it.
		var se *stripe.Error
		if errors.As(err, &se) && se.Code == stripe.ErrorCodeCustomerTaxLocationInvalid {
			err = &taxLocationErr{tenant: inv.Tenant, err: err}
		}
	}()

	customer := firstNonEmpty(inv.StripeCustomerID, cust.StripeCustomerID)
	if customer == "" {
		var err error
		who := customerFor{TenantID: inv.TenantID, Slug: inv.Tenant, Name: inv.TenantName}
		if customer, err = s.ensureCustomer(ctx, who, cust.AttemptedAt); err != nil {
			return err
		}
	}

	if s.cfg.AutomaticTax {
		if err := s.syncAddress(ctx, inv.TenantID, customer); err != nil {
			return err
		}
	}

	invoiceID := inv.StripeInvoiceID
	if inv.State == InvoiceComputed {
		if stale {
			found, err := s.findInvoice(ctx, customer, inv.ID)
			if err != nil {
				return err
			}
			invoiceID = found
		}
		if invoiceID == "" {
			params := &stripe.InvoiceParams{
				Customer:                    stripe.String(customer),
				AutoAdvance:                 stripe.Bool(false),
				PendingInvoiceItemsBehavior: stripe.String("exclude"),
				Currency:                    stripe.String(inv.Currency),
				Description:                 stripe.String(fmt.Sprintf("%s plan, %s", titleCase(inv.Plan), monthName(inv.Period))),
				Metadata:                    map[string]string{metaInvoiceID: inv.ID, metaTenantID: inv.TenantID, metaPeriod: inv.Period},
			}
			if s.cfg.AutomaticTax {
				params.AutomaticTax = &stripe.InvoiceAutomaticTaxParams{Enabled: stripe.Bool(true)}
			}
			params.Context = ctx
			params.SetIdempotencyKey(InvoiceKey(inv.TenantID, inv.Period))
			err := s.call("invoice.create", func() error {
				si, err := s.stripe.Invoices.New(params)
				if err == nil {
					invoiceID = si.ID
				}
				return err
			})
			if err != nil {
				return err
			}
		}
		if err := s.store.SetInvoiceCreated(ctx, inv.ID, customer, invoiceID); err != nil {
			return err
		}
		inv.State = InvoiceCreated
	}

	if inv.State == InvoiceCreated {
		var existing map[int]string
		if stale {
			var err error
			if existing, err = s.findItems(ctx, invoiceID, inv.ID); err != nil {
				return err
			}
		}
		var todo []InvoiceLine
		for _, l := range inv.Lines {
			if l.StripeItemID == "" && l.Amount != 0 { // else: made before; or nothing to charge (on record in the catalog only)
				todo = append(todo, l)
			}
		}
		for i, l := range todo {
			itemID := existing[l.No]
			if itemID == "" {
				params := &stripe.InvoiceItemParams{
					Customer:    stripe.String(customer),
					Invoice:     stripe.String(invoiceID),
					Amount:      stripe.Int64(l.Amount),
					Currency:    stripe.String(inv.Currency),
					Description: stripe.String(l.Description),
					Metadata:    map[string]string{metaInvoiceID: inv.ID, metaLine: strconv.Itoa(l.No), metaTenantID: inv.TenantID, metaPeriod: inv.Period},
				}
				if s.cfg.AutomaticTax {
					params.TaxBehavior = stripe.String(TaxBehavior)
				}
				if l.UsagePeriod != "" {
					if p, err := catalog.ParsePeriod(l.UsagePeriod); err == nil {
						params.Period = &stripe.InvoiceItemPeriodParams{Start: stripe.Int64(p.Unix()), End: stripe.Int64(catalog.PeriodEnd(p).Unix() - 1)}
					}
				}
				params.Context = ctx
				params.SetIdempotencyKey(ItemKey(inv.TenantID, inv.Period, l.No))
				err := s.call("invoiceitem.create", func() error {
					item, err := s.stripe.InvoiceItems.New(params)
					if err == nil {
						itemID = item.ID
					}
					return err
				})
				if err != nil {
					return err
				}
			}
			if err := s.store.SetLineItem(ctx, inv.ID, l.No, itemID, i == len(todo)-1); err != nil {
				return err
			}
		}
		if len(todo) == 0 {
			if err := s.store.SetInvoiceItemsAdded(ctx, inv.ID); err != nil {
				return err
			}
		}
		inv.State = InvoiceItemsAdded
	}

	// Finalize. Stripe then collects (auto_advance true): it charges the
	// customer and reports the outcome through webhooks.
	params := &stripe.InvoiceFinalizeInvoiceParams{AutoAdvance: stripe.Bool(true)}
	params.Context = ctx
	params.SetIdempotencyKey(FinalizeKey(inv.TenantID, inv.Period))
	var status stripe.InvoiceStatus
	var tax *int64
	err = s.call("invoice.finalize", func() error {
		si, err := s.stripe.Invoices.FinalizeInvoice(invoiceID, params)
		if err == nil {
			status = si.Status
			if s.cfg.AutomaticTax {
				tax = &si.Tax
			}
		}
		return err
	})
	var se *stripe.Error
	if err != nil && errors.As(err, &se) && se.HTTPStatusCode >= 400 && se.HTTPStatusCode < 500 && se.HTTPStatusCode != 429 {
		// Finalized by an attempt older than its idempotency key, say: ask.
		if got, gerr := s.invoiceStatus(ctx, invoiceID); gerr == nil && got != "" && got != stripe.InvoiceStatusDraft {
			status, err = got, nil
		}
	}
	if err != nil {
		return err
	}
	if tax != nil {
		if err := s.store.SetInvoiceTax(ctx, inv.ID, *tax); err != nil {
			return err
		}
	}
	return s.store.SetInvoiceFinalized(ctx, inv.ID, paymentOf(status))
}

// taxLocationErr is Stripe refusing a customer's location for automatic tax.
type taxLocationErr struct {
	tenant string
	err    error
}

func (e *taxLocationErr) Error() string { return taxLocationMessage(e.tenant) }
func (e *taxLocationErr) Unwrap() error { return e.err }

func paymentOf(st stripe.InvoiceStatus) PaymentStatus {
	switch st {
	case stripe.InvoiceStatusPaid:
		return PaymentPaid
	case stripe.InvoiceStatusUncollectible:
		return PaymentUncollectible
	case stripe.InvoiceStatusVoid:
		return PaymentVoid
	}
	return PaymentOpen
}

// ErrNoStripe is returned by EnsureCustomer when no Stripe key is set.
var ErrNoStripe = errors.New("billing: no Stripe key is set (STRIPE_API_KEY); there is no Stripe customer to create")

// EnsureCustomer gives tenant t its Stripe customer; provisioning calls it
// before activating a tenant. A customer stored in the catalog is kept; else
// one is made the way a billing run makes it (ensureCustomer: the tenant's
// idempotency key, CustomerKey, so no retry here or in a run makes a second)
// and stored. Without Stripe it returns ErrNoStripe.
func (s *Service) EnsureCustomer(ctx context.Context, t catalog.Tenant) error {
	if s.stripe == nil {
		return ErrNoStripe
	}
	// Records the first attempt's time, as a run does: a retry a day later
	// looks in Stripe before creating.
	custs, err := s.store.BillingCustomers(ctx, []string{t.ID})
	if err != nil {
		return err
	}
	if custs[t.ID].StripeCustomerID != "" {
		return nil // made before: by an earlier attempt, or by a billing run
	}
	_, err = s.ensureCustomer(ctx, customerFor{TenantID: t.ID, Slug: t.Slug, Name: t.Name}, custs[t.ID].AttemptedAt)
	return err
}

// customerFor names the tenant a Stripe customer is made for.
type customerFor struct {
	TenantID, Slug, Name string
}

// ensureCustomer creates the tenant's Stripe customer and stores its id
// (once: the key is the tenant's). firstAttempt is when creating it was
// first attempted: longer ago than Stripe keeps idempotency keys, it looks in
// Stripe first for the customer that attempt made. Billing runs and
// EnsureCustomer (provisioning) both create customers here.
func (s *Service) ensureCustomer(ctx context.Context, who customerFor, firstAttempt time.Time) (string, error) {
	id := ""
	if s.now().Sub(firstAttempt) > recoverAfter {
		params := &stripe.CustomerSearchParams{SearchParams: stripe.SearchParams{
			Query: fmt.Sprintf("metadata['%s']:'%s'", metaTenantID, who.TenantID), Context: ctx}}
		err := s.call("customer.search", func() error {
			it := s.stripe.Customers.Search(params)
			for it.Next() {
				if cu := it.Customer(); cu.Metadata[metaTenantID] == who.TenantID {
					id = cu.ID
					break
				}
			}
			return it.Err()
		})
		if err != nil {
			return "", err
		}
	}
	addr, _, hasAddr, err := s.addressOf(ctx, who.TenantID)
	created := false // with the address
	if err != nil {
		return "", err
	}
	if id == "" {
		params := &stripe.CustomerParams{
			Name:     stripe.String(who.Name),
			Metadata: map[string]string{metaTenantID: who.TenantID, metaTenant: who.Slug},
		}
		if hasAddr {
			params.Address = addr.params()
			created = true
		}
		params.Context = ctx
		params.SetIdempotencyKey(CustomerKey(who.TenantID))
		err := s.call("customer.create", func() error {
			cu, err := s.stripe.Customers.New(params)
			if err == nil {
				id = cu.ID
			}
			return err
		})
		if err != nil {
			return "", err
		}
	}
	stored, err := s.store.SetStripeCustomer(ctx, who.TenantID, id)
	if err == nil && created && stored == id {
		err = s.markAddressSynced(ctx, who.TenantID, addr.UpdatedAt)
	}
	return stored, err
}

// findInvoice looks among a customer's invoices for the one an earlier
// attempt made for our invoice.
func (s *Service) findInvoice(ctx context.Context, customer, invoiceID string) (string, error) {
	params := &stripe.InvoiceListParams{Customer: stripe.String(customer)}
	params.Context = ctx
	found := ""
	err := s.call("invoice.list", func() error {
		it := s.stripe.Invoices.List(params)
		for it.Next() {
			if si := it.Invoice(); si.Metadata[metaInvoiceID] == invoiceID {
				found = si.ID
				break
			}
		}
		return it.Err()
	})
	return found, err
}

// findItems maps the lines of our invoice to the items an earlier attempt
// made on the Stripe invoice.
func (s *Service) findItems(ctx context.Context, stripeInvoiceID, invoiceID string) (map[int]string, error) {
	params := &stripe.InvoiceItemListParams{Invoice: stripe.String(stripeInvoiceID)}
	params.Context = ctx
	found := map[int]string{}
	err := s.call("invoiceitem.list", func() error {
		it := s.stripe.InvoiceItems.List(params)
		for it.Next() {
			item := it.InvoiceItem()
			if item.Metadata[metaInvoiceID] != invoiceID {
				continue
			}
			if n, err := strconv.Atoi(item.Metadata[metaLine]); err == nil {
				found[n] = item.ID
			}
		}
		return it.Err()
	})
	return found, err
}

func (s *Service) invoiceStatus(ctx context.Context, stripeInvoiceID string) (stripe.InvoiceStatus, error) {
	params := &stripe.InvoiceParams{}
	params.Context = ctx
	var st stripe.InvoiceStatus
	err := s.call("invoice.get", func() error {
		si, err := s.stripe.Invoices.Get(stripeInvoiceID, params)
		if err == nil {
			st = si.Status
		}
		return err
	})
	return st, err
}
