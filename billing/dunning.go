package billing

import (
	"context"
	"errors"
	"fmt"

	"github.com/tenantplane/tenantplane/catalog"
)

// SweepDunning suspends the tenant of each sent invoice unpaid for longer
// than DunningGrace since it was finalized, once per invoice (an operator who
// resumes the tenant is not overruled until another invoice is overdue), and
// resumes tenants billing suspended that have paid up since (in case the
// webhook's resume did not happen). Each suspension is the provisioner's,
// with an audit event naming the invoice.
func (s *Service) SweepDunning(ctx context.Context) error {
	if !s.dunning() {
		return nil
	}
	cutoff := s.now().Add(-s.cfg.DunningGrace)
	var errs []error
	for {
		overdue, err := s.store.OverdueInvoices(ctx, cutoff, 100)
		if err != nil {
			return err
		}
		claimed := 0
		for _, inv := range overdue {
			ok, err := s.store.ClaimDunning(ctx, inv.ID)
			if err != nil {
				return err
			}
			if !ok {
				continue // another process has it
			}
			claimed++
			reason := fmt.Sprintf("invoice %s for %s (%s) unpaid since %s, past the dunning grace of %s",
				inv.ID, inv.Period, FormatAmount(inv.Total, inv.Currency), inv.FinalizedAt.UTC().Format("2006-01-02"), s.cfg.DunningGrace)
			_, err = s.cfg.Suspender.Suspend(ctx, inv.Tenant, Actor, reason)
			switch {
			case err == nil:
				s.logger.InfoContext(ctx, "tenant suspended for an unpaid invoice", "op", "dunning", "tenant", inv.Tenant, "invoice_id", inv.ID, "period", inv.Period)
			case errors.Is(err, catalog.ErrMoving):
				// Not now: the claim is let go, and a later sweep suspends it once the move is over.
				claimed-- // not progress: this loop must not fetch it again and again
				s.logger.InfoContext(ctx, "tenant to suspend is being moved; trying again later", "op", "dunning", "tenant", inv.Tenant, "invoice_id", inv.ID)
				if err := s.store.ReleaseDunning(ctx, inv.ID); err != nil {
					return errors.Join(append(errs, err)...)
				}
			case errors.Is(err, catalog.ErrConflict):
				// Not active (suspended already, or deleting): nothing to do.
			default:
				errs = append(errs, fmt.Errorf("suspending %s: %w", inv.Tenant, err))
				if rerr := s.store.ReleaseDunning(ctx, inv.ID); rerr != nil {
					return errors.Join(append(errs, rerr)...)
				}
			}
		}
		if len(overdue) < 100 || claimed == 0 || len(errs) > 0 {
			break
		}
	}
	paid, err := s.store.PaidDunningTenants(ctx)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, id := range paid {
		if err := s.resumeIfPaidUp(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// dunning reports whether dunning is on: a Suspender, and DunningGrace not off.
func (s *Service) dunning() bool {
	return s.cfg.Suspender != nil && s.cfg.DunningGrace >= 0
}

// resumeIfPaidUp resumes a tenant that billing suspended (the latest
// suspension is billing's) when none of its sent invoices is overdue.
func (s *Service) resumeIfPaidUp(ctx context.Context, tenantID string) error {
	t, err := s.catalog.GetTenantByID(ctx, tenantID)
	if err != nil || t.State != catalog.TenantSuspended {
		return err
	}
	last, err := s.catalog.ListAudit(ctx, catalog.AuditFilter{TenantID: tenantID, Action: "tenant.suspended", Newest: true, Limit: 1})
	if err != nil {
		return err
	}
	if len(last) == 0 || last[0].Actor != Actor {
		return nil // an operator suspended it: theirs to resume
	}
	n, err := s.store.CountOverdue(ctx, tenantID, s.now().Add(-s.cfg.DunningGrace))
	if err != nil || n > 0 {
		return err
	}
	_, err = s.cfg.Suspender.Resume(ctx, t.Slug, Actor, "the overdue invoices are paid")
	if errors.Is(err, catalog.ErrConflict) {
		return nil // moved on meanwhile
	}
	if err == nil {
		s.logger.InfoContext(ctx, "tenant resumed after payment", "op", "dunning", "tenant", t.Slug)
	}
	return err
}
