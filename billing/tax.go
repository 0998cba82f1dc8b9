package billing

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	stripe "github.com/stripe/stripe-go/v76"

	"github.com/tenantplane/tenantplane/catalog"
)

// TaxCalculatedByStripe is what an invoice (or a preview) says of its tax
// when Stripe computes it (Config.AutomaticTax).
const TaxCalculatedByStripe = "calculated by Stripe"

// TaxBehavior is the tax behaviour of every invoice item under automatic
// tax: prices exclude tax, which Stripe adds on top.
const TaxBehavior = "exclusive"

// Address is a tenant's billing address: where Stripe Tax locates the
// customer. Country is an ISO 3166-1 alpha-2 code; the United States and
// Canada need the postal code and the state or province.
type Address struct {
	Country    string     `json:"country"`
	PostalCode string     `json:"postal_code"`
	State      string     `json:"state"`
	City       string     `json:"city"`
	Line1      string     `json:"line1"`
	UpdatedAt  time.Time  `json:"updated_at"`
	SyncedAt   *time.Time `json:"synced_at"` // when the Stripe customer last took it
	// SyncError says why Stripe did not take it yet (a billing run sends it again).
	SyncError string `json:"sync_error,omitempty"`
}

var (
	countryRE = regexp.MustCompile(`^[A-Z]{2}$`)
	postalRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9 -]{0,19}$`)
)

// validate normalizes a and checks it, naming every bad field.
func (a *Address) validate() error {
	a.Country = strings.ToUpper(strings.TrimSpace(a.Country))
	a.PostalCode, a.State = strings.TrimSpace(a.PostalCode), strings.TrimSpace(a.State)
	a.City, a.Line1 = strings.TrimSpace(a.City), strings.TrimSpace(a.Line1)
	var bad []string
	if !countryRE.MatchString(a.Country) {
		bad = append(bad, "country must be a two-letter ISO 3166-1 code such as US, DE or GB")
	}
	if a.PostalCode != "" && !postalRE.MatchString(a.PostalCode) {
		bad = append(bad, "postal_code must be at most 20 letters, digits, spaces or hyphens")
	}
	if a.Country == "US" || a.Country == "CA" {
		if a.PostalCode == "" {
			bad = append(bad, "postal_code is required in "+a.Country)
		}
		if a.State == "" {
			bad = append(bad, "state is required in "+a.Country+" (e.g. CA, NY, ON)")
		}
	}
	for _, f := range []struct {
		name, v string
		max     int
	}{{"state", a.State, 50}, {"city", a.City, 100}, {"line1", a.Line1, 200}} {
		if len(f.v) > f.max || !catalog.ValidText(f.v) {
			bad = append(bad, f.name+" must be at most "+strconv.Itoa(f.max)+" characters of valid UTF-8 text")
		}
	}
	if len(bad) > 0 {
		return catalog.Errorf(catalog.CodeInvalid, "billing address: %s", strings.Join(bad, "; "))
	}
	return nil
}

func (a Address) params() *stripe.AddressParams {
	p := &stripe.AddressParams{Country: stripe.String(a.Country)}
	for _, f := range []struct {
		v   string
		dst **string
	}{{a.PostalCode, &p.PostalCode}, {a.State, &p.State}, {a.City, &p.City}, {a.Line1, &p.Line1}} {
		if f.v != "" {
			*f.dst = stripe.String(f.v)
		}
	}
	return p
}

// SetBillingAddress stores tenant slug's billing address (audited) and sends
// it to the tenant's Stripe customer when there is one. Stripe not taking
// it is not an error: the answer says so in SyncError, and the next billing
// run sends it before invoicing.
func (s *Service) SetBillingAddress(ctx context.Context, slug string, a Address, actor string) (Address, error) {
	if err := a.validate(); err != nil {
		return Address{}, err
	}
	t, err := s.catalog.GetTenant(ctx, slug)
	if err != nil {
		return Address{}, err
	}
	if t.State == catalog.TenantDeleted {
		return Address{}, catalog.Errorf(catalog.CodeConflict, "tenant %s is deleted", slug)
	}
	err = s.catalog.InTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `
			INSERT INTO billing_addresses (tenant_id, country, postal_code, state, city, line1) VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (tenant_id) DO UPDATE SET country = $2, postal_code = $3, state = $4, city = $5, line1 = $6, updated_at = now()`,
			t.ID, a.Country, a.PostalCode, a.State, a.City, a.Line1)
		if err != nil {
			return catalog.Classify(err, "billing address")
		}
		return catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: actor, Action: "tenant.billing_address_set", TenantID: t.ID, Subject: t.Slug,
			Details: map[string]any{"country": a.Country}})
	})
	if err != nil {
		return Address{}, err
	}
	if s.stripe != nil {
		custs, err := s.store.BillingCustomers(ctx, []string{t.ID})
		if err != nil {
			return Address{}, err
		}
		if c := custs[t.ID].StripeCustomerID; c != "" {
			if err := s.syncAddress(ctx, t.ID, c); err != nil {
				s.logger.WarnContext(ctx, "sending a billing address to Stripe", "tenant", slug, "error", err)
				out, gerr := s.BillingAddress(ctx, slug)
				out.SyncError = err.Error()
				return out, gerr
			}
		}
	}
	return s.BillingAddress(ctx, slug)
}

// BillingAddress returns tenant slug's billing address (CodeNotFound when it has none).
func (s *Service) BillingAddress(ctx context.Context, slug string) (Address, error) {
	var a Address
	err := s.catalog.Pool().QueryRow(ctx, `SELECT a.country, a.postal_code, a.state, a.city, a.line1, a.updated_at, a.synced_at
		FROM billing_addresses a JOIN tenants t ON t.id = a.tenant_id WHERE t.slug = $1`, slug).
		Scan(&a.Country, &a.PostalCode, &a.State, &a.City, &a.Line1, &a.UpdatedAt, &a.SyncedAt)
	if err != nil {
		return Address{}, catalog.Classify(err, "billing address of tenant "+slug)
	}
	return a, nil
}

// addressOf returns a tenant's address by id and whether Stripe needs it
// (never taken, or changed since).
func (s *Service) addressOf(ctx context.Context, tenantID string) (a Address, stale, ok bool, err error) {
	err = s.catalog.Pool().QueryRow(ctx, `SELECT country, postal_code, state, city, line1, updated_at, synced_at
		FROM billing_addresses WHERE tenant_id = $1`, tenantID).
		Scan(&a.Country, &a.PostalCode, &a.State, &a.City, &a.Line1, &a.UpdatedAt, &a.SyncedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Address{}, false, false, nil
	}
	if err != nil {
		return Address{}, false, false, catalog.Classify(err, "billing address")
	}
	return a, a.SyncedAt == nil || a.SyncedAt.Before(a.UpdatedAt), true, nil
}

// syncAddress sends the tenant's address to its Stripe customer when Stripe
// does not have it yet.
func (s *Service) syncAddress(ctx context.Context, tenantID, customer string) error {
	a, stale, ok, err := s.addressOf(ctx, tenantID)
	if err != nil || !ok || !stale {
		return err
	}
	params := &stripe.CustomerParams{Address: a.params()}
	params.Context = ctx
	if err := s.call("customer.update", func() error {
		_, err := s.stripe.Customers.Update(customer, params)
		return err
	}); err != nil {
		return err
	}
	_, err = s.catalog.Pool().Exec(ctx, `UPDATE billing_addresses SET synced_at = now() WHERE tenant_id = $1 AND updated_at = $2`, tenantID, a.UpdatedAt)
	return catalog.Classify(err, "billing address")
}

// markAddressSynced records that a customer was created with the address
// of updatedAt.
func (s *Service) markAddressSynced(ctx context.Context, tenantID string, updatedAt time.Time) error {
	_, err := s.catalog.Pool().Exec(ctx, `UPDATE billing_addresses SET synced_at = now() WHERE tenant_id = $1 AND updated_at = $2`, tenantID, updatedAt)
	return catalog.Classify(err, "billing address")
}

// SetInvoiceTax stores the tax Stripe computed for an invoice.
func (s *store) SetInvoiceTax(ctx context.Context, invoiceID string, tax int64) error {
	_, err := s.pool.Exec(ctx, `UPDATE invoices SET tax = $2, automatic_tax = true WHERE id = $1`, invoiceID, tax)
	return catalog.Classify(err, "invoice")
}

// taxLocationMessage explains Stripe's refusal of a customer's location
// for automatic tax, and what to do.
func taxLocationMessage(tenant string) string {
	return "Stripe cannot compute tax for tenant " + tenant + ": its billing address is not a location Stripe Tax recognizes " +
		"(customer_tax_location_invalid). Fix it (tenantplane tenants billing-address " + tenant +
		" --country .. --postal-code .. --state ..), then run the period again: this invoice is retried, the others are not affected"
}
