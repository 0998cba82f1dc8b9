package billing

import "context"

// ListPlanVersions returns the price versions of a plan ("" for every plan),
// by plan and version.
func (s *Service) ListPlanVersions(ctx context.Context, plan string) ([]PlanVersion, error) {
	return s.store.ListPlanVersions(ctx, plan)
}

// CreatePlanVersion adds a version of a plan's prices, numbered after the
// newest, effective from the current period at the earliest: a period
// already begun is never repriced.
func (s *Service) CreatePlanVersion(ctx context.Context, nv NewPlanVersion) (PlanVersion, error) {
	return s.store.CreatePlanVersion(ctx, nv, s.now())
}
