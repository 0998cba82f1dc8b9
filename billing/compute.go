package billing

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/catalog"
)

// computeInvoices computes and stores the invoice of a period for each of
// tenantIDs that has none yet, priced by Price, in one catalog transaction
// under the compute lock. It returns how many it made. An invoice, once
// computed, never changes: usage arriving later goes on a later invoice as
// an adjustment.
func (s *Service) computeInvoices(ctx context.Context, runID int64, period time.Time, tenantIDs []string) (int, error) {
	p := catalog.FormatPeriod(period)
	created := 0
	err := s.catalog.InTx(ctx, func(tx pgx.Tx) error {
		if err := s.store.LockCompute(ctx, tx); err != nil {
			return err
		}
		todo, err := s.store.Uninvoiced(ctx, tx, period, tenantIDs)
		if err != nil || len(todo) == 0 {
			return err
		}
		inputs, err := s.store.InvoiceInputs(ctx, tx, period, todo)
		if err != nil {
			return err
		}
		invoices := make([]NewInvoice, 0, len(todo))
		for _, id := range todo {
			in, ok := inputs[id]
			if !ok {
				continue // gone since it was listed
			}
			lines, err := Price(*in)
			if err != nil {
				return fmt.Errorf("pricing tenant %s for %s: %w", in.Tenant, p, err)
			}
			inv := NewInvoice{TenantID: id, Version: in.Version, Lines: lines}
			for i := range lines {
				lines[i].No = i + 1
				inv.Total += lines[i].Amount
			}
			invoices = append(invoices, inv)
		}
		created, err = s.store.InsertInvoices(ctx, tx, runID, period, invoices)
		return err
	})
	if err != nil {
		return 0, err
	}
	return created, nil
}
