package catalog

import (
	"context"
	"errors"
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

// ErrOtherTier is in the chain of SetTenantPlan's refusal of a plan of the
// other isolation: that change is a promotion or demotion (package mover).
var ErrOtherTier = errors.New("the plan is of the other tier")

// SetTenantPlan gives an active or suspended tenant another plan of its own
// tier (isolation), with the audit event tenant.plan_changed, and announces
// the change on TenantChannel: every router replica applies the new plan's
// rate limit and connections within a second. An unknown plan is
// CodeInvalid listing the plans; a tenant in another state, or with an open
// move (MovingError), is CodeConflict, as is a plan of the other tier
// (ErrOtherTier: that change moves the tenant's rows). The tenant's own
// plan again changes nothing and records nothing.
func (s *Store) SetTenantPlan(ctx context.Context, slug, plan, actor string) (t Tenant, err error) {
	p, err := s.GetPlan(ctx, plan)
	if err != nil {
		return Tenant{}, err
	}
	err = s.InTx(ctx, func(tx pgx.Tx) error {
		var (
			id, from string
			state    TenantState
			moveID   *int64
			pooled   bool
		)
		err := tx.QueryRow(ctx, `SELECT id, plan, state, move_id, pool_id IS NOT NULL FROM tenants WHERE slug = $1 FOR UPDATE`, slug).
			Scan(&id, &from, &state, &moveID, &pooled)
		if err != nil {
			return Classify(err, "tenant "+quote(slug))
		}
		switch {
		case moveID != nil:
			return MovingError(slug, *moveID)
		case state != TenantActive && state != TenantSuspended:
			return Errorf(CodeConflict, "tenant %s is %s; changing its plan needs it to be active or suspended", slug, state)
		case pooled != (p.Isolation == IsolationPooled):
			return WrapError(CodeConflict, ErrOtherTier, "plan %q is %s and tenant %s is not: the change moves its rows (a promotion or demotion)", plan, p.Isolation, slug)
		}
		if from != plan {
			if _, err := tx.Exec(ctx, `UPDATE tenants SET plan = $2, updated_at = now() WHERE id = $1`, id, plan); err != nil {
				return Classify(err, "tenant")
			}
			if err := InsertAudit(ctx, tx, AuditEvent{Actor: actor, Action: "tenant.plan_changed", TenantID: id, Subject: slug,
				FromState: string(state), ToState: string(state), Details: map[string]any{"from": from, "to": plan}}); err != nil {
				return err
			}
			if err := notifyTenant(ctx, tx, id); err != nil {
				return err
			}
		}
		t, err = scanTenant(tx.QueryRow(ctx, `SELECT `+tenantColumns+tenantFrom+`WHERE t.id = $1`, id))
		return Classify(err, "tenant")
	})
	return t, err
}
