package billing

import (
	"context"
	"errors"

	stripe "github.com/stripe/stripe-go/v76"

	"github.com/tenantplane/tenantplane/catalog"
)

// CustomerErasure is what EraseCustomer did with a tenant's billing data.
type CustomerErasure struct {
	// StripeCustomerID is the Stripe customer deleted ("" when the tenant
	// had none, or billing does not send to Stripe).
	StripeCustomerID string
	// AddressRemoved says a billing address was deleted.
	AddressRemoved bool
	// Invoices is how many invoices of the tenant are kept.
	Invoices int64
}

// EraseCustomer, for an erasure, deletes the tenant's Stripe customer
// (Stripe keeps the invoices it finalized, as it must) and its billing
// address, and counts the invoices kept. A customer Stripe no longer has
// counts as deleted, so an erasure that stopped halfway can run again.
func (s *Service) EraseCustomer(ctx context.Context, tenantID string) (CustomerErasure, error) {
	var out CustomerErasure
	err := s.catalog.Pool().QueryRow(ctx, `SELECT coalesce((SELECT stripe_customer_id FROM billing_customers WHERE tenant_id = $1), ''),
		(SELECT count(*) FROM invoices WHERE tenant_id = $1)`, tenantID).Scan(&out.StripeCustomerID, &out.Invoices)
	if err != nil {
		return out, catalog.Classify(err, "billing customer")
	}
	if out.StripeCustomerID != "" && s.stripe != nil {
		params := &stripe.CustomerParams{}
		params.Context = ctx
		err := s.call("customer.delete", func() error {
			_, err := s.stripe.Customers.Del(out.StripeCustomerID, params)
			var se *stripe.Error
			if errors.As(err, &se) && se.Code == stripe.ErrorCodeResourceMissing {
				return nil
			}
			return err
		})
		if err != nil {
			return out, err
		}
	} else if s.stripe == nil {
		out.StripeCustomerID = "" // nothing was sent to Stripe from here
	}
	tag, err := s.catalog.Pool().Exec(ctx, `DELETE FROM billing_addresses WHERE tenant_id = $1`, tenantID)
	if err != nil {
		return out, catalog.Classify(err, "billing address")
	}
	out.AddressRemoved = tag.RowsAffected() > 0
	return out, nil
}
