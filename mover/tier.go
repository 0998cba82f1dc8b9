package mover

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantplane/tenantplane/catalog"
)

// Kinds of a move (moves.kind, Move.Kind).
const (
	// KindMove carries a tenant's database to another server.
	KindMove = "move"
	// KindPromote carries a pooled tenant's rows out of its pool database
	// into a database of its own (on the pool's server, or another).
	KindPromote = "promote"
	// KindDemote carries a dedicated tenant's rows into a pool database.
	KindDemote = "demote"
)

// tierMode picks a promotion's or demotion's mode: online (the copy under
// the slot's snapshot, then the stream of the tenant's changes, filtered by
// a publication row filter) when the servers allow it (CheckOnline) and the
// source is PostgreSQL 15 or later (row filters); else the copy mode, with
// the reason: a pooled tenant is small, so the copy holds its writes briefly.
func (s *Service) tierMode(ctx context.Context, srcDB string, from, to catalog.Server) (string, string, error) {
	src, err := s.connect(ctx, from.Name, srcDB)
	if err != nil {
		return "", "", catalog.WrapError(catalog.CodeUnavailable, err, "server %s: cannot reach database %s", from.Name, srcDB)
	}
	defer src.Close(context.WithoutCancel(ctx))
	var version int
	if err := src.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		return "", "", catalog.WrapError(catalog.CodeUnavailable, err, "server %s", from.Name)
	}
	check, err := s.checkOnline(ctx, src, to)
	if err != nil {
		return "", "", err
	}
	refusals := check.Refusals
	if version < 150000 {
		refusals = append(refusals, "the source runs PostgreSQL "+strconv.Itoa(version/10000)+", and row filters (one tenant's changes) need 15")
	}
	if check.Possible && len(refusals) == 0 {
		return ModeOnline, "logical replication from " + from.Name + " of the tenant's rows (a publication row filter on tenant_id)", nil
	}
	return ModeCopy, "online impossible (" + strings.Join(refusals, "; ") + "): the tenant's writes held for the copy of its rows", nil
}

// PromoteSpec is what promoting a pooled tenant takes.
type PromoteSpec struct {
	// To is the server of the tenant's new database. Default: its pool
	// database's server.
	To string `json:"to,omitempty"`
	// Plan, if set, is a dedicated plan the tenant takes at the switch
	// (a change of plan across tiers); else it keeps its plan.
	Plan string `json:"plan,omitempty"`
}

// DemoteSpec is what demoting a dedicated tenant takes.
type DemoteSpec struct {
	// Pool is the pool database to move its rows into (its id). Default:
	// the active pool database with the most room, on the tenant's server
	// first.
	Pool int64 `json:"pool,omitempty"`
	// Plan, if set, is a pooled plan the tenant takes at the switch (a
	// change of plan across tiers); else it keeps its plan.
	Plan string `json:"plan,omitempty"`
}

// tierPlan checks the plan a promotion (want dedicated) or demotion (want
// pooled) carries: "" (none) or a plan of that isolation; else CodeInvalid.
func (s *Service) tierPlan(ctx context.Context, kind, name string, want catalog.Isolation) error {
	if name == "" {
		return nil
	}
	p, err := s.store.GetPlan(ctx, name)
	if err != nil {
		return err
	}
	if p.Isolation != want {
		return catalog.Errorf(catalog.CodeInvalid, "plan %q is %s: a %s needs a %s plan", name, p.Isolation, kind, want)
	}
	return nil
}

// ChangePlan gives a tenant another plan. A plan of its tier (isolation)
// applies at once (catalog.Store.SetTenantPlan: audited, announced to the
// routers); the returned move is nil. A plan of the other tier starts a
// promotion (a pooled tenant to a dedicated plan) or a demotion (the
// other way) that carries it, with the defaults of StartPromotion and
// StartDemotion: the tenant takes the plan at the move's switch, keeps its
// old one if the move aborts or is cancelled, and gets it back from a
// revert of the move. An unknown plan is CodeInvalid listing the plans; a
// tenant that is not active or suspended, or is moving, is CodeConflict.
func (s *Service) ChangePlan(ctx context.Context, slug, plan, actor string) (catalog.Tenant, *Move, error) {
	p, err := s.store.GetPlan(ctx, plan)
	if err != nil {
		return catalog.Tenant{}, nil, err
	}
	t, err := s.store.GetTenant(ctx, slug)
	if err != nil {
		return catalog.Tenant{}, nil, err
	}
	// Checked again under the tenant's lock by the change itself; here for
	// a message about the plan rather than about a move.
	switch {
	case t.MoveID != nil:
		return catalog.Tenant{}, nil, catalog.MovingError(t.Slug, *t.MoveID)
	case t.State != catalog.TenantActive && t.State != catalog.TenantSuspended:
		return catalog.Tenant{}, nil, catalog.Errorf(catalog.CodeConflict, "tenant %s is %s; changing its plan needs it to be active or suspended", t.Slug, t.State)
	}
	pooled := t.PoolID != 0
	if pooled == (p.Isolation == catalog.IsolationPooled) {
		t, err := s.store.SetTenantPlan(ctx, slug, plan, actor)
		return t, nil, err
	}
	var m Move
	if pooled {
		m, err = s.StartPromotion(ctx, slug, PromoteSpec{Plan: plan}, actor)
	} else {
		m, err = s.StartDemotion(ctx, slug, DemoteSpec{Plan: plan}, actor)
	}
	if err != nil {
		return catalog.Tenant{}, nil, err
	}
	if t, err = s.store.GetTenant(ctx, slug); err != nil {
		return catalog.Tenant{}, nil, err
	}
	return t, &m, nil
}

// tierMove is a promotion or demotion to record (startTierMove).
type tierMove struct {
	kind                 string
	fromID, toID, poolID int64
	mode, reason         string
	plan                 string // the plan the switch gives the tenant ("" keeps it)
	reverts              *int64 // the move it takes back
}

// StartPromotion starts moving a pooled tenant's rows from its pool database
// into a new database of its own, with a role of its own, through the
// phases of a move, online when the servers allow it, else in the copy mode
// (tierMode): the target made (at the pool's schema version), the copy of
// its rows, the routers' hold and a fence of the tenant's rows in the pool
// (FenceTenantRows), their verification (counts and hashes of its rows on
// both sides), the switch, and the pool's copy of its
// rows deleted once the keep is over. A tenant that is not pooled, not
// active or suspended, or moving already is a CodeConflict.
func (s *Service) StartPromotion(ctx context.Context, slug string, spec PromoteSpec, actor string) (Move, error) {
	return s.startPromotion(ctx, slug, spec, actor, nil)
}

func (s *Service) startPromotion(ctx context.Context, slug string, spec PromoteSpec, actor string, reverts *int64) (Move, error) {
	if err := s.tierPlan(ctx, KindPromote, spec.Plan, catalog.IsolationDedicated); err != nil {
		return Move{}, err
	}
	t, err := s.store.GetTenant(ctx, slug)
	if err != nil {
		return Move{}, err
	}
	if t.PoolID == 0 {
		return Move{}, catalog.Errorf(catalog.CodeConflict, "tenant %s has a database of its own already (server %s)", t.Slug, t.Server)
	}
	if err := checkTenantMovable(t); err != nil {
		return Move{}, err
	}
	to := t.Server
	if spec.To != "" {
		to = spec.To
	}
	target, err := s.store.GetServer(ctx, to)
	if err != nil {
		return Move{}, err
	}
	switch {
	case target.State != catalog.ServerActive:
		return Move{}, catalog.Errorf(catalog.CodeConflict, "server %s is %s: it takes no tenants", target.Name, target.State)
	case target.Capacity > 0 && target.Tenants >= target.Capacity:
		return Move{}, catalog.Errorf(catalog.CodeConflict, "server %s is full: %d tenants of a capacity of %d", target.Name, target.Tenants, target.Capacity)
	}
	from, err := s.store.GetServer(ctx, t.Server)
	if err != nil {
		return Move{}, err
	}
	mode, reason, err := s.tierMode(ctx, t.Pool, from, target)
	if err != nil {
		return Move{}, err
	}
	return s.startTierMove(ctx, t, tierMove{kind: KindPromote, fromID: t.ServerID, toID: target.ID, poolID: t.PoolID,
		mode: mode, reason: reason, plan: spec.Plan, reverts: reverts}, actor)
}

// StartDemotion starts moving a dedicated tenant's rows into a pool
// database, through the phases of a move (online or copy, as tierMode
// picks; the fence is its own database's), after which its database and role are dropped once the keep
// is over.
func (s *Service) StartDemotion(ctx context.Context, slug string, spec DemoteSpec, actor string) (Move, error) {
	return s.startDemotion(ctx, slug, spec, actor, nil)
}

func (s *Service) startDemotion(ctx context.Context, slug string, spec DemoteSpec, actor string, reverts *int64) (Move, error) {
	if err := s.tierPlan(ctx, KindDemote, spec.Plan, catalog.IsolationPooled); err != nil {
		return Move{}, err
	}
	t, err := s.store.GetTenant(ctx, slug)
	if err != nil {
		return Move{}, err
	}
	if t.PoolID != 0 {
		return Move{}, catalog.Errorf(catalog.CodeConflict, "tenant %s is pooled already (pool database %s)", t.Slug, t.Pool)
	}
	if err := checkTenantMovable(t); err != nil {
		return Move{}, err
	}
	pools, err := s.store.ListPoolDatabases(ctx)
	if err != nil {
		return Move{}, err
	}
	// The one asked for; else an active one with room, on the tenant's
	// server first, then the one with the most room.
	better := func(p, than catalog.PoolDatabase) bool {
		if here, thanHere := p.ServerID == t.ServerID, than.ServerID == t.ServerID; here != thanHere {
			return here
		}
		return p.Capacity-p.Tenants > than.Capacity-than.Tenants
	}
	var pick *catalog.PoolDatabase
	for i, p := range pools {
		switch {
		case spec.Pool != 0:
			if p.ID == spec.Pool {
				pick = &pools[i]
			}
		case p.State == catalog.PoolActive && p.Tenants < p.Capacity && (pick == nil || better(p, *pick)):
			pick = &pools[i]
		}
	}
	switch {
	case pick == nil && spec.Pool != 0:
		return Move{}, catalog.Errorf(catalog.CodeNotFound, "pool database %d not found", spec.Pool)
	case pick == nil:
		return Move{}, catalog.Errorf(catalog.CodeConflict, "no pool database has room for tenant %s: add one (POST /admin/v1/pools)", t.Slug)
	case pick.State != catalog.PoolActive:
		return Move{}, catalog.Errorf(catalog.CodeConflict, "pool database %s is %s", pick.Name, pick.State)
	case pick.Tenants >= pick.Capacity:
		return Move{}, catalog.Errorf(catalog.CodeConflict, "pool database %s is full: %d tenants of a capacity of %d", pick.Name, pick.Tenants, pick.Capacity)
	}
	from, err := s.store.GetServer(ctx, t.Server)
	if err != nil {
		return Move{}, err
	}
	to, err := s.store.GetServer(ctx, pick.Server)
	if err != nil {
		return Move{}, err
	}
	mode, reason, err := s.tierMode(ctx, t.Database, from, to)
	if err != nil {
		return Move{}, err
	}
	return s.startTierMove(ctx, t, tierMove{kind: KindDemote, fromID: t.ServerID, toID: pick.ServerID, poolID: pick.ID,
		mode: mode, reason: reason, plan: spec.Plan, reverts: reverts}, actor)
}

// startTierMove records a promotion or demotion and queues its job, as
// startMove does a move. The tenant's plan at this point is the move's
// from_plan.
func (s *Service) startTierMove(ctx context.Context, t catalog.Tenant, tm tierMove, actor string) (Move, error) {
	kind := tm.kind
	var id int64
	err := s.store.InTx(ctx, func(tx pgx.Tx) error {
		cur, err := lockTenant(ctx, tx, t.ID)
		if err != nil {
			return err
		}
		if err := checkTenantMovable(cur); err != nil {
			return err
		}
		var pool *int64
		var plan string
		if err := tx.QueryRow(ctx, `SELECT pool_id, plan FROM tenants WHERE id = $1`, t.ID).Scan(&pool, &plan); err != nil {
			return catalog.Classify(err, "tenant")
		}
		if (kind == KindPromote) != (pool != nil) || (kind == KindPromote && *pool != tm.poolID) {
			return catalog.Errorf(catalog.CodeConflict, "tenant %s changed tier meanwhile: try again", t.Slug)
		}
		if err := checkNoFanout(ctx, tx, t); err != nil {
			return err
		}
		if tm.reverts != nil {
			if err := lockKept(ctx, tx, *tm.reverts); err != nil {
				return err
			}
		}
		if kind == KindPromote {
			// Its own role's password, sealed before the target is made.
			if err := s.store.EnsureTenantCredentials(ctx, tx, t.ID); err != nil {
				return err
			}
		}
		err = tx.QueryRow(ctx, `INSERT INTO moves (tenant_id, from_server_id, to_server_id, mode, mode_reason, actor, kind, pool_id, plan, from_plan, reverts)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id`,
			t.ID, tm.fromID, tm.toID, tm.mode, tm.reason, actor, kind, tm.poolID, tm.plan, plan, tm.reverts).Scan(&id)
		if err != nil {
			return catalog.Classify(err, kind+" of tenant "+strconv.Quote(t.Slug))
		}
		details := map[string]any{"move_id": id, "pool": catalog.PoolName(tm.poolID), "mode": tm.mode, "mode_reason": tm.reason}
		if tm.plan != "" {
			details["plan"], details["from_plan"] = tm.plan, plan
		}
		if tm.reverts != nil {
			details["reverts"] = *tm.reverts
		}
		return s.openMove(ctx, tx, t, id, "tenant."+kind+"_started", actor, details)
	})
	if err != nil {
		return Move{}, err
	}
	s.logger.InfoContext(ctx, kind+" started", "tenant", t.Slug, "move_id", id, "pool", catalog.PoolName(tm.poolID), "plan", tm.plan)
	return s.Get(ctx, id)
}

// sides sets the databases a run works on, from the move's kind.
func (w *work) sides() {
	w.own = w.t
	w.srcDB, w.dstDB = w.t.Database, w.t.Database
	if w.m.Kind == KindMove {
		return
	}
	w.own.Database = catalog.DatabaseName(w.t.ID)
	w.own.Role = w.own.Database
	if w.m.Kind == KindPromote {
		w.srcDB, w.dstDB = catalog.PoolName(w.m.poolID), w.own.Database
	} else {
		w.srcDB, w.dstDB = w.own.Database, catalog.PoolName(w.m.poolID)
	}
}

// tenantFilter is the tenant whose rows alone a promotion or demotion copies
// and verifies ("" for a move: every row).
func (w *work) tenantFilter() string {
	if w.m.Kind == KindMove {
		return ""
	}
	return w.t.ID
}

// unfenceSource lifts the source's fence: the tenant's rows in the pool
// database (promotion), or its database (move, demotion).
func (s *Service) unfenceSource(ctx context.Context, w *work, conn *pgx.Conn) error {
	if w.m.Kind == KindPromote {
		return UnfenceTenantRows(ctx, conn, w.t.ID)
	}
	return Unfence(ctx, conn, w.srcDB, w.own.Role)
}

// dropTarget removes an aborted move's target: the database made for it,
// or, for a demotion, the tenant's rows copied into the pool database.
func (s *Service) dropTarget(ctx context.Context, w *work) error {
	if w.m.Kind != KindDemote {
		return s.cfg.Targets.DropDatabase(ctx, w.own, w.to)
	}
	return s.deletePoolRows(ctx, w.to.Name, w.dstDB, w.t.ID)
}

// deletePoolRows deletes a tenant's rows from a pool database, in one
// transaction, as its owner.
func (s *Service) deletePoolRows(ctx context.Context, server, pool, tenantID string) error {
	conn, err := s.connect(ctx, server, pool)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		tables, err := Tables(ctx, tx)
		if err != nil {
			return err
		}
		return clearTenant(ctx, tx, tables, tenantID)
	})
}

// switchTenant flips the tenant in the catalog at a move's switch: to its
// new server (a move), out of its pool into its own database (promotion),
// or into the pool (demotion).
func (s *Service) switchTenant(ctx context.Context, tx pgx.Tx, w *work) (pgconn.CommandTag, error) {
	switch w.m.Kind {
	// The plan a change of plan across tiers carries is taken here, with
	// the tier: never before the switch, and never by a move that aborts.
	case KindPromote:
		return tx.Exec(ctx, `UPDATE tenants SET pool_id = NULL, server_id = $3, db_name = $5, db_role = $5,
			plan = coalesce(nullif($6, ''), plan),
			held = false, move_id = NULL, schema_version = $4, schema_dirty = false, updated_at = now()
			WHERE id = $1 AND move_id = $2`, w.t.ID, w.m.ID, w.to.ID, w.version, w.own.Database, w.m.Plan)
	case KindDemote:
		return tx.Exec(ctx, `UPDATE tenants SET pool_id = $3, server_id = NULL, db_name = NULL, db_role = NULL,
			plan = coalesce(nullif($5, ''), plan),
			held = false, move_id = NULL, schema_version = $4, schema_dirty = false, updated_at = now()
			WHERE id = $1 AND move_id = $2`, w.t.ID, w.m.ID, w.m.poolID, w.version, w.m.Plan)
	}
	return tx.Exec(ctx, `UPDATE tenants SET server_id = $3, held = false, move_id = NULL, schema_version = $4, schema_dirty = false,
		updated_at = now() WHERE id = $1 AND move_id = $2`, w.t.ID, w.m.ID, w.to.ID, w.version)
}

// auditAction is the audit action of a move's switch.
func (w *work) auditAction() string {
	switch w.m.Kind {
	case KindPromote:
		return "tenant.promoted"
	case KindDemote:
		return "tenant.demoted"
	}
	return "tenant.moved"
}

// dropTierSource removes what a done promotion or demotion kept at its
// source once the keep is over: the tenant's rows in the pool database
// (with their fence), or its old database and role.
func (s *Service) dropTierSource(ctx context.Context, m *move, t catalog.Tenant) error {
	from, err := s.store.GetServer(ctx, m.From)
	if err != nil {
		return err
	}
	if m.Kind == KindPromote {
		if t.PoolID == m.poolID {
			s.logger.WarnContext(ctx, "kept rows not deleted: the tenant is in that pool again", "move_id", m.ID, "tenant", t.Slug)
			return nil
		}
		pool := catalog.PoolName(m.poolID)
		if err := s.deletePoolRows(ctx, from.Name, pool, t.ID); err != nil {
			return fmt.Errorf("deleting the kept rows in %s on %s: %w", pool, from.Name, err)
		}
		conn, err := s.connect(ctx, from.Name, pool)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		if err := UnfenceTenantRows(ctx, conn, t.ID); err != nil {
			return err
		}
		s.logger.InfoContext(ctx, "promoted tenant's rows deleted from its pool", "move_id", m.ID, "tenant", t.Slug, "pool", pool)
		return nil
	}
	if t.PoolID == 0 && t.ServerID == m.fromID {
		s.logger.WarnContext(ctx, "kept database not dropped: the tenant has it again", "move_id", m.ID, "tenant", t.Slug)
		return nil
	}
	own := t
	own.Database, own.Role = catalog.DatabaseName(t.ID), catalog.DatabaseName(t.ID)
	if err := s.cfg.Targets.DropDatabase(ctx, own, from); err != nil {
		return fmt.Errorf("dropping the kept database on %s: %w", from.Name, err)
	}
	s.logger.InfoContext(ctx, "demoted tenant's database dropped", "move_id", m.ID, "tenant", t.Slug, "server", from.Name)
	return nil
}

// revertTier takes back a done promotion or demotion m, while its source is
// kept, by the opposite change into that source: a demotion into the pool
// database it came from, or a promotion onto the server it came from (the
// kept database made ready again), copying every row of the tenant (a move
// with Reverts set; the original becomes reverted at its switch). A change
// of plan across tiers gets its old plan (FromPlan) back at that switch.
func (s *Service) revertTier(ctx context.Context, m move, t catalog.Tenant, actor string) (Move, error) {
	plan := ""
	if m.Plan != "" {
		plan = m.FromPlan
	}
	if m.Kind == KindPromote {
		if t.PoolID != 0 || t.ServerID != m.toID {
			return Move{}, catalog.Errorf(catalog.CodeConflict, "tenant %s is no longer in the database move %d made on %s: it cannot be reverted", t.Slug, m.ID, m.To)
		}
		return s.startDemotion(ctx, t.Slug, DemoteSpec{Pool: m.poolID, Plan: plan}, actor, &m.ID)
	}
	if t.PoolID != m.poolID {
		return Move{}, catalog.Errorf(catalog.CodeConflict, "tenant %s is no longer in pool database %s: move %d cannot be reverted", t.Slug, m.Pool, m.ID)
	}
	return s.startPromotion(ctx, t.Slug, PromoteSpec{To: m.From, Plan: plan}, actor, &m.ID)
}

// unfenceTargetPool lifts a fence of the tenant's rows in a demotion's
// target pool database: one left there by a promotion out of it whose
// source is kept (the demotion takes the tenant back there, a revert or
// not). Its kept rows are replaced by the copy. Idempotent.
func (s *Service) unfenceTargetPool(ctx context.Context, w *work) error {
	conn, err := s.connect(ctx, w.to.Name, w.dstDB)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return UnfenceTenantRows(ctx, conn, w.t.ID)
}
