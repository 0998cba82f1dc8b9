package catalog

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Plan is what a tenant buys, as far as serving it goes: its pool size and
// its rate limit on the tenant API.
type Plan struct {
	Name       string `json:"name"`
	MaxConns   int    `json:"max_conns"`
	RatePerSec int    `json:"rate_per_sec"`
	RateBurst  int    `json:"rate_burst"`
	// Isolation is the tier of the plan's tenants: a database of their own,
	// or rows in a shared pool database under row-level security.
	Isolation Isolation `json:"isolation"`
}

// Isolation is a plan's tier.
type Isolation string

const (
	// IsolationDedicated gives each tenant a database and a role of its own.
	IsolationDedicated Isolation = "dedicated"
	// IsolationPooled keeps a tenant's rows in a pool database shared with
	// other tenants, under row-level security; MaxConns is then the most
	// connections of the pool database's pool one tenant may hold at once.
	IsolationPooled Isolation = "pooled"
)

// ListPlans returns every plan, by name.
func (s *Store) ListPlans(ctx context.Context) ([]Plan, error) {
	rows, err := s.pool.Query(ctx, `SELECT name, max_conns, rate_per_sec, rate_burst, isolation FROM plans ORDER BY name`)
	if err != nil {
		return nil, Classify(err, "plans")
	}
	plans, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Plan])
	return plans, Classify(err, "plans")
}

// GetPlan returns the named plan; an unknown one is a CodeInvalid error that
// lists the known plans.
func (s *Store) GetPlan(ctx context.Context, name string) (Plan, error) {
	plans, err := s.ListPlans(ctx)
	if err != nil {
		return Plan{}, err
	}
	names := make([]string, len(plans))
	for i, p := range plans {
		if p.Name == name {
			return p, nil
		}
		names[i] = p.Name
	}
	return Plan{}, Errorf(CodeInvalid, "unknown plan %q (plans: %s)", name, strings.Join(names, ", "))
}
