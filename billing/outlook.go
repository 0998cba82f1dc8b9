package billing

import (
	"context"
	"sort"
	"time"
)

// PlanOutlook is what a period is expected to invoice on one plan, priced
// as Preview prices one tenant: the usage recorded so far.
type PlanOutlook struct {
	Plan     string `json:"plan"`
	Currency string `json:"currency"`
	Tenants  int    `json:"tenants"` // billable tenants on the plan
	Total    int64  `json:"total"`   // minor units
}

// Outlook prices every billable tenant's period as it stands (no invoice is
// stored, Stripe is not called) and adds the totals up per plan and
// currency. Its cost grows with the fleet: one read of the inputs of every
// billable tenant.
func (s *Service) Outlook(ctx context.Context, period time.Time) ([]PlanOutlook, error) {
	ids, err := s.store.BillableTenants(ctx, period)
	if err != nil {
		return nil, err
	}
	inputs, err := s.store.InvoiceInputs(ctx, s.store.pool, period, ids)
	if err != nil {
		return nil, err
	}
	type key struct{ plan, currency string }
	sums := map[key]*PlanOutlook{}
	for _, in := range inputs {
		lines, err := Price(*in)
		if err != nil {
			return nil, err
		}
		k := key{in.Version.Plan, in.Version.Currency}
		if sums[k] == nil {
			sums[k] = &PlanOutlook{Plan: k.plan, Currency: k.currency}
		}
		sums[k].Tenants++
		for _, l := range lines {
			sums[k].Total += l.Amount
		}
	}
	out := make([]PlanOutlook, 0, len(sums))
	for _, o := range sums {
		out = append(out, *o)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Plan+out[i].Currency < out[j].Plan+out[j].Currency })
	return out, nil
}

// Unpaid returns finalized invoices not paid yet, the oldest first: at most
// limit of them.
func (s *Service) Unpaid(ctx context.Context, limit int) ([]Invoice, error) {
	return s.store.queryInvoices(ctx, `WHERE i.state = 'finalized' AND i.payment IN ('open', 'payment_failed')
		ORDER BY i.finalized_at LIMIT $1`, limit)
}
