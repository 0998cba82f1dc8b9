package billing

import (
	"context"
	"time"

	"github.com/tenantplane/tenantplane/catalog"
)

// Store is billing's store, for the tests of package billing_test that
// check its methods directly.
type Store = store

// NewStore returns billing's store over a catalog.
func NewStore(cat *catalog.Store) *Store { return newStore(cat) }

// ComputeInvoices is what a run does first: compute and store the period's
// invoices of those of tenantIDs that have none yet.
func (s *Service) ComputeInvoices(ctx context.Context, runID int64, period time.Time, tenantIDs []string) (int, error) {
	return s.computeInvoices(ctx, runID, period, tenantIDs)
}
