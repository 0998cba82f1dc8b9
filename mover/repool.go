package mover

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"

	"github.com/tenantplane/tenantplane/catalog"
)

// KindRepool carries a pooled tenant's rows into another pool database
// (on another server, or the same one): a tier move from pool to pool.
const KindRepool = "repool"

// fromPool is the pool database a move takes the tenant's rows out of (a
// promotion's or a repool's), 0 when its source is a database of its own.
func (m *move) fromPool() int64 {
	if m.Kind == KindPromote || m.Kind == KindRepool {
		return m.poolID
	}
	return 0
}

// toPool is the pool database a move puts the tenant's rows into (a
// demotion's or a repool's), 0 when its target is a database of its own.
func (m *move) toPool() int64 {
	switch m.Kind {
	case KindDemote:
		return m.poolID
	case KindRepool:
		return m.toPoolID
	}
	return 0
}

// poolRoom is, per pool database, its server and both states and its room:
// its capacity less its tenants and the moves under way into it (a
// demotion's or a repool's), which take a place from their start.
const poolRoom = `SELECT p.id, p.server_id, s.name, s.state, p.state, p.schema_version,
	p.capacity - (SELECT count(*) FROM tenants t WHERE t.pool_id = p.id AND t.state <> 'deleted')
	- (SELECT count(*) FROM moves m WHERE m.phase NOT IN ('done', 'aborted', 'reverted')
		AND (m.kind = 'demote' AND m.pool_id = p.id OR m.kind = 'repool' AND m.to_pool_id = p.id))
	FROM pool_databases p JOIN servers s ON s.id = p.server_id`

// poolPlace is a pool database as a repool's target: poolRoom's row.
type poolPlace struct {
	id, serverID       int64
	server             string
	serverState, state string
	version            int64
	room               int
}

func (p poolPlace) name() string { return catalog.PoolName(p.id) }

// open says whether the pool database takes tenants: it and its server are active.
func (p poolPlace) open() bool {
	return p.state == string(catalog.PoolActive) && p.serverState == string(catalog.ServerActive)
}

func poolPlaces(ctx context.Context, q catalog.Querier, where string, args ...any) ([]poolPlace, error) {
	rows, err := q.Query(ctx, poolRoom+" "+where+" ORDER BY p.id", args...)
	if err != nil {
		return nil, catalog.Classify(err, "pool databases")
	}
	places, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (poolPlace, error) {
		var p poolPlace
		err := row.Scan(&p.id, &p.serverID, &p.server, &p.serverState, &p.state, &p.version, &p.room)
		return p, err
	})
	return places, catalog.Classify(err, "pool databases")
}

// checkPoolRoom locks pool database id and refuses it (CodeConflict) when
// it or its server takes no tenant, or it has no room left: called in the
// transaction that records a move into it, so that moves started at once
// never fill it past its capacity.
func checkPoolRoom(ctx context.Context, tx pgx.Tx, id int64) error {
	if _, err := tx.Exec(ctx, `SELECT FROM pool_databases WHERE id = $1 FOR UPDATE`, id); err != nil {
		return catalog.Classify(err, "pool database")
	}
	places, err := poolPlaces(ctx, tx, "WHERE p.id = $1", id)
	if err != nil {
		return err
	}
	if len(places) == 0 {
		return catalog.Errorf(catalog.CodeNotFound, "pool database %d not found", id)
	}
	return places[0].refuse()
}

// refuse says why the pool database takes no tenant now, or nil.
func (p poolPlace) refuse() error {
	switch {
	case p.serverState != string(catalog.ServerActive):
		return catalog.Errorf(catalog.CodeConflict, "pool database %s is on server %s, which is %s: it takes no tenants", p.name(), p.server, p.serverState)
	case p.state != string(catalog.PoolActive):
		return catalog.Errorf(catalog.CodeConflict, "pool database %s is %s: it takes no tenants", p.name(), p.state)
	case p.room <= 0:
		return catalog.Errorf(catalog.CodeConflict, "pool database %s is full (its capacity counts its tenants and the moves under way into it)", p.name())
	}
	return nil
}

// StartRepool starts moving a pooled tenant's rows into another pool
// database: spec.Pool, or the active one with the most room on server
// spec.To. It is a tier move (tier.go) from pool to pool: online when the
// servers allow it (tierMode; spec.Mode "copy" forces the copy mode, and
// "online" is refused with the reason when it cannot run), the target's
// place taken at once, the routers' hold and the fence of the tenant's rows
// in the source pool (FenceTenantRows), the copy into the target pool
// (beside its other tenants' rows), the verification of the tenant's rows
// on both sides, the switch of tenants.pool_id (and so its server), and the
// source pool's copy of its rows deleted once the keep is over (Revert,
// within the keep, is a repool back into it). Both pool databases must be
// at one schema version. StartMove calls it for a pooled
// tenant; an evacuation, for each pooled tenant of the server it empties.
func (s *Service) StartRepool(ctx context.Context, slug string, spec MoveSpec, actor string) (Move, error) {
	return s.startRepool(ctx, slug, spec, actor, nil)
}

// startRepool is StartRepool, for a revert (revertTier) the move it takes
// back: a repool into the pool database that move kept the rows in.
func (s *Service) startRepool(ctx context.Context, slug string, spec MoveSpec, actor string, reverts *int64) (Move, error) {
	if spec.Mode != "" && spec.Mode != ModeOnline && spec.Mode != ModeCopy {
		return Move{}, catalog.Errorf(catalog.CodeInvalid, "mode %q: use online, copy, or leave it out (online when possible)", spec.Mode)
	}
	if spec.To == "" && spec.Pool == 0 {
		return Move{}, catalog.Errorf(catalog.CodeInvalid, "name the pool database to move the tenant's rows to (pool: its id), or a server with one (to)")
	}
	if spec.Pool < 0 {
		return Move{}, catalog.Errorf(catalog.CodeInvalid, "pool: a pool database's id is a positive number")
	}
	t, err := s.store.GetTenant(ctx, slug)
	if err != nil {
		return Move{}, err
	}
	if t.PoolID == 0 {
		return Move{}, catalog.Errorf(catalog.CodeConflict, "tenant %s has a database of its own: move it with to alone, or demote it into a pool database", t.Slug)
	}
	if err := checkTenantMovable(t); err != nil {
		return Move{}, err
	}
	var to catalog.Server
	if spec.To != "" {
		if to, err = s.store.GetServer(ctx, spec.To); err != nil {
			return Move{}, err
		}
	}
	places, err := poolPlaces(ctx, s.store.Pool(), "")
	if err != nil {
		return Move{}, err
	}
	var from, pick *poolPlace
	for i, p := range places {
		switch {
		case p.id == t.PoolID:
			from = &places[i]
		case spec.Pool != 0:
			if p.id == spec.Pool {
				pick = &places[i]
			}
		case p.serverID == to.ID && p.open() && p.room > 0 && (pick == nil || p.room > pick.room):
			pick = &places[i]
		}
	}
	switch {
	case from == nil:
		return Move{}, catalog.Errorf(catalog.CodeNotFound, "pool database %s not found", t.Pool)
	case spec.Pool == t.PoolID:
		return Move{}, catalog.Errorf(catalog.CodeInvalid, "tenant %s is in pool database %s already", t.Slug, t.Pool)
	case pick == nil && spec.Pool != 0:
		return Move{}, catalog.Errorf(catalog.CodeNotFound, "pool database %d not found", spec.Pool)
	case pick == nil && to.State != catalog.ServerActive:
		return Move{}, catalog.Errorf(catalog.CodeConflict, "server %s is %s: it takes no tenants", to.Name, to.State)
	case pick == nil:
		return Move{}, catalog.Errorf(catalog.CodeConflict, "no active pool database on server %s has room for tenant %s: add one (POST /admin/v1/pools {\"server\": %q})",
			to.Name, t.Slug, to.Name)
	case spec.To != "" && pick.serverID != to.ID:
		return Move{}, catalog.Errorf(catalog.CodeInvalid, "pool database %s is on server %s, not %s", pick.name(), pick.server, to.Name)
	case pick.version != from.version:
		return Move{}, catalog.Errorf(catalog.CodeConflict, "pool database %s is at schema version %d and %s at %d: migrate them to one version first (POST /admin/v1/migrations/runs)",
			from.name(), from.version, pick.name(), pick.version)
	}
	if err := pick.refuse(); err != nil {
		return Move{}, err
	}
	mode, reason, err := s.tierModeBetween(ctx, t.Pool, from.server, pick.server)
	if err != nil {
		return Move{}, err
	}
	switch {
	case spec.Mode == ModeCopy && mode == ModeOnline:
		mode, reason = ModeCopy, "copy asked for: the tenant's writes held for the copy of its rows"
	case spec.Mode == ModeOnline && mode == ModeCopy:
		return Move{}, catalog.Errorf(catalog.CodeConflict, "the online mode cannot run: %s; leave mode out, or pass copy, to move the tenant's rows with its writes held for their copy", reason)
	}
	return s.startTierMove(ctx, t, tierMove{kind: KindRepool, fromID: from.serverID, toID: pick.serverID, poolID: from.id, toPoolID: pick.id,
		mode: mode, reason: reason, reverts: reverts}, actor)
}

// repoolSwitch is a repool's switch: the tenant into its new pool database.
func repoolSwitch(ctx context.Context, tx pgx.Tx, w *work) (pgconn.CommandTag, error) {
	return tx.Exec(ctx, `UPDATE tenants SET pool_id = $3, held = false, move_id = NULL, schema_version = $4, schema_dirty = false,
		updated_at = now() WHERE id = $1 AND move_id = $2 AND pool_id = $5`, w.t.ID, w.m.ID, w.m.toPoolID, w.version, w.m.poolID)
}

// deleteKeptPoolRows deletes, once a promotion's or a repool's keep is
// over, the tenant's rows it kept in its source pool database, and lifts
// their fence. Under the tenant's catalog lock, and only while no move of
// the tenant is under way and the tenant is not in that pool again: a move
// back into the pool that started meanwhile copies its rows there, which
// must not be deleted. A tenant moving is tried again later (errBusy).
func (s *Service) deleteKeptPoolRows(ctx context.Context, m *move, server string) error {
	pool := catalog.PoolName(m.poolID)
	err := s.store.InTx(ctx, func(tx pgx.Tx) error {
		var poolID, moveID *int64
		if err := tx.QueryRow(ctx, `SELECT pool_id, move_id FROM tenants WHERE id = $1 FOR UPDATE`, m.TenantID).Scan(&poolID, &moveID); err != nil {
			return catalog.Classify(err, "tenant")
		}
		switch {
		case poolID != nil && *poolID == m.poolID:
			s.logger.WarnContext(ctx, "kept rows not deleted: the tenant is in that pool again", "move_id", m.ID, "tenant", m.Tenant)
			return nil
		case moveID != nil:
			return fmt.Errorf("%w: tenant %s is being moved (move %d)", errBusy, m.Tenant, *moveID)
		}
		if err := s.deletePoolRows(ctx, server, pool, m.TenantID); err != nil {
			return fmt.Errorf("deleting the kept rows in %s on %s: %w", pool, server, err)
		}
		conn, err := s.connect(ctx, server, pool)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		if err := UnfenceTenantRows(ctx, conn, m.TenantID); err != nil {
			return err
		}
		s.logger.InfoContext(ctx, "kept rows deleted from the pool the tenant left", "move_id", m.ID, "tenant", m.Tenant, "pool", pool,
			"kind", m.Kind)
		return nil
	})
	if errors.Is(err, errBusy) {
		s.logger.InfoContext(ctx, "kept rows wait for the tenant's move under way", "move_id", m.ID, "tenant", m.Tenant, "reason", err)
		return river.JobSnooze(30 * time.Second)
	}
	return err
}

// errBusy: a step that waits for the tenant's move under way (its job is
// tried again).
var errBusy = errors.New("the tenant is busy")
