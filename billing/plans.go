package billing

import (
	"context"
	"time"
)

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

// MeterPrice is what a plan charges for one meter: Included units come with
// the base fee; each unit over them costs UnitPriceMicros millionths of a
// minor unit per PerUnits units, so sub-cent prices are exact integers.
type MeterPrice struct {
	Meter           string `json:"meter"`
	Included        int64  `json:"included"`
	UnitPriceMicros int64  `json:"unit_price_micros"`
	PerUnits        int64  `json:"per_units"`
}

// PlanVersion is one version of a plan's prices. A period is billed on the
// version in effect at its start: the newest whose EffectiveFrom is not after it.
type PlanVersion struct {
	Plan          string       `json:"plan"`
	Version       int          `json:"version"`
	Currency      string       `json:"currency"` // ISO 4217, lowercase
	BaseFee       int64        `json:"base_fee"` // minor units per period
	EffectiveFrom string       `json:"effective_from"`
	Meters        []MeterPrice `json:"meters"`
	CreatedAt     time.Time    `json:"created_at"`
}

// Price returns the version's price for a meter.
func (v PlanVersion) Price(meter string) (MeterPrice, bool) {
	for _, m := range v.Meters {
		if m.Meter == meter {
			return m, true
		}
	}
	return MeterPrice{}, false
}

// NewPlanVersion is a change of a plan's prices.
type NewPlanVersion struct {
	Plan     string       `json:"-"`
	Currency string       `json:"currency"`
	BaseFee  int64        `json:"base_fee"`
	Meters   []MeterPrice `json:"meters"`
	// EffectiveFrom is the first period billed on it (YYYY-MM): the current
	// period or a later one, after the plan's newest version. Default: the next period.
	EffectiveFrom string `json:"effective_from"`
	Actor         string `json:"-"`
}
