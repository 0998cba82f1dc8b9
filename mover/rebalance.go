package mover

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/catalog"
)

// RebalanceMeasure says how a rebalance weighs tenants and servers.
const RebalanceMeasure = "load score: each tenant's share of the fleet's database bytes (pg_database_size) and of its api_calls " +
	"in the current and previous hour, half each (all of one when the other is zero), in points of 100 for the fleet; " +
	"a server's score is its tenants'; the spread is the highest active server's score less the lowest's"

// minGain is the least a proposed move must lower the spread by, in
// points: less is churn, not balance.
const minGain = 0.5

// RebalanceSpec is what a rebalance takes: a dry run only plans; otherwise
// the plan's moves are carried out like an evacuation's, within its bounds.
type RebalanceSpec struct {
	DryRun bool `json:"dry_run"`
	EvacuationSpec
}

// PlannedMove is one move of a rebalance plan.
type PlannedMove struct {
	Tenant string  `json:"tenant"`
	From   string  `json:"from"`
	To     string  `json:"to"`
	Score  float64 `json:"score"` // the tenant's load score
	Bytes  int64   `json:"bytes"`
	Calls  int64   `json:"calls"`
	Why    string  `json:"why"`
}

// ServerBalance is a server's load before and after a plan.
type ServerBalance struct {
	Server        string  `json:"server"`
	State         string  `json:"state"`
	Capacity      int     `json:"capacity"`
	TenantsBefore int     `json:"tenants_before"`
	TenantsAfter  int     `json:"tenants_after"`
	ScoreBefore   float64 `json:"score_before"`
	ScoreAfter    float64 `json:"score_after"`
}

// RebalancePlan is a rebalance's proposed moves and their expected effect.
type RebalancePlan struct {
	Measure      string          `json:"measure"`
	Moves        []PlannedMove   `json:"moves"`
	Servers      []ServerBalance `json:"servers"`
	SpreadBefore float64         `json:"spread_before"`
	SpreadAfter  float64         `json:"spread_after"`
}

// Rebalance is a plan and, unless it was a dry run, the evacuation
// (kind rebalance) that carries it out.
type Rebalance struct {
	Plan       RebalancePlan `json:"plan"`
	Evacuation *Evacuation   `json:"evacuation,omitempty"`
}

type balTenant struct {
	id, slug, state string
	server          int64
	movable         bool
	bytes, calls    int64
	score           float64
}

type balServer struct {
	id                   int64
	name, state          string
	capacity, used       int // used: tenants placed and open moves into it
	tenants, tenantsNow  int
	scoreBefore, current float64
}

// PlanRebalance proposes moves between active servers that lower the
// spread of their load scores (RebalanceMeasure), greedily: the move of one
// tenant to a server with room that lowers the spread most, again, while
// one lowers it by minGain or more; each tenant moves at most once. It never plans a server
// past its capacity (counting tenants placed and moves under way into it),
// nor a tenant that cannot move now (not active or suspended, or moving).
func (s *Service) PlanRebalance(ctx context.Context) (RebalancePlan, error) {
	servers, tenants, err := s.fleetLoad(ctx)
	if err != nil {
		return RebalancePlan{}, err
	}
	var active []*balServer
	for _, sv := range servers {
		if sv.state == string(catalog.ServerActive) {
			active = append(active, sv)
		}
	}
	spread := func() float64 {
		if len(active) == 0 {
			return 0
		}
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, sv := range active {
			lo, hi = min(lo, sv.current), max(hi, sv.current)
		}
		return hi - lo
	}
	plan := RebalancePlan{Measure: RebalanceMeasure, Moves: []PlannedMove{}, SpreadBefore: round(spread())}
	planned := map[string]bool{}
	byID := map[int64]*balServer{}
	for _, sv := range active {
		byID[sv.id] = sv
	}
	for range tenants {
		before := spread()
		var bestT *balTenant
		var bestFrom, bestTo *balServer
		best := before - minGain
		for _, t := range tenants {
			from := byID[t.server]
			if from == nil || !t.movable || planned[t.id] {
				continue
			}
			for _, to := range active {
				if to == from || to.used >= to.capacity {
					continue
				}
				from.current, to.current = from.current-t.score, to.current+t.score
				if sp := spread(); sp < best {
					best, bestT, bestFrom, bestTo = sp, t, from, to
				}
				from.current, to.current = from.current+t.score, to.current-t.score
			}
		}
		if bestT == nil {
			break
		}
		why := fmt.Sprintf("%s's %.1f points (%d MB, %d calls) from %s (%.1f points) to %s (%.1f) lower the spread from %.1f to %.1f",
			bestT.slug, bestT.score, (bestT.bytes+(1<<20)-1)>>20, bestT.calls, bestFrom.name, bestFrom.current, bestTo.name, bestTo.current, before, best)
		bestFrom.current, bestTo.current = bestFrom.current-bestT.score, bestTo.current+bestT.score
		bestFrom.tenantsNow--
		bestTo.tenantsNow++
		bestTo.used++
		planned[bestT.id] = true
		plan.Moves = append(plan.Moves, PlannedMove{Tenant: bestT.slug, From: bestFrom.name, To: bestTo.name, Score: round(bestT.score),
			Bytes: bestT.bytes, Calls: bestT.calls, Why: why})
	}
	plan.SpreadAfter = round(spread())
	for _, sv := range servers {
		plan.Servers = append(plan.Servers, ServerBalance{Server: sv.name, State: sv.state, Capacity: sv.capacity,
			TenantsBefore: sv.tenants, TenantsAfter: sv.tenantsNow, ScoreBefore: round(sv.scoreBefore), ScoreAfter: round(sv.current)})
	}
	return plan, nil
}

func round(f float64) float64 { return math.Round(f*100) / 100 }

// fleetLoad reads every server and every tenant placed on one, with the
// tenant's database size (from its server) and recent api_calls, and
// scores them.
func (s *Service) fleetLoad(ctx context.Context) ([]*balServer, []*balTenant, error) {
	pool := s.store.Pool()
	rows, err := pool.Query(ctx, `SELECT s.id, s.name, s.state, s.capacity,
		(SELECT count(*) FROM tenants t WHERE t.server_id = s.id AND t.state <> 'deleted'),
		(SELECT count(*) FROM moves m WHERE m.to_server_id = s.id AND m.phase NOT IN ('done', 'aborted', 'reverted'))
		FROM servers s ORDER BY s.name`)
	if err != nil {
		return nil, nil, catalog.Classify(err, "servers")
	}
	servers, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*balServer, error) {
		var sv balServer
		var incoming int
		err := row.Scan(&sv.id, &sv.name, &sv.state, &sv.capacity, &sv.tenants, &incoming)
		sv.tenantsNow, sv.used = sv.tenants, sv.tenants+incoming
		return &sv, err
	})
	if err != nil {
		return nil, nil, catalog.Classify(err, "servers")
	}
	rows, err = pool.Query(ctx, `SELECT t.id, t.slug, t.state, t.server_id, coalesce(t.db_name, t.slug), t.move_id IS NULL,
		coalesce((SELECT sum(u.quantity) FROM usage u WHERE u.tenant_id = t.id AND u.meter = 'api_calls'
			AND u.bucket >= date_trunc('hour', now()) - interval '1 hour'), 0)::bigint
		FROM tenants t WHERE t.server_id IS NOT NULL AND t.state <> 'deleted' ORDER BY t.slug`)
	if err != nil {
		return nil, nil, catalog.Classify(err, "tenants")
	}
	dbs := map[int64][]string{}
	byDB := map[string]*balTenant{}
	tenants, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*balTenant, error) {
		var t balTenant
		var db string
		var notMoving bool
		err := row.Scan(&t.id, &t.slug, &t.state, &t.server, &db, &notMoving, &t.calls)
		t.movable = notMoving && (t.state == string(catalog.TenantActive) || t.state == string(catalog.TenantSuspended))
		dbs[t.server] = append(dbs[t.server], db)
		byDB[strconv.FormatInt(t.server, 10)+"/"+db] = &t
		return &t, err
	})
	if err != nil {
		return nil, nil, catalog.Classify(err, "tenants")
	}
	for _, sv := range servers {
		if len(dbs[sv.id]) == 0 {
			continue
		}
		if err := s.databaseSizes(ctx, sv, dbs[sv.id], byDB); err != nil {
			return nil, nil, err
		}
	}
	var bytes, calls int64
	for _, t := range tenants {
		bytes += t.bytes
		calls += t.calls
	}
	wb, wc := 0.5, 0.5
	switch {
	case bytes == 0 && calls == 0:
		wb, wc = 0, 0
	case calls == 0:
		wb, wc = 1, 0
	case bytes == 0:
		wb, wc = 0, 1
	}
	byID := map[int64]*balServer{}
	for _, sv := range servers {
		byID[sv.id] = sv
	}
	for _, t := range tenants {
		if bytes > 0 {
			t.score += 100 * wb * float64(t.bytes) / float64(bytes)
		}
		if calls > 0 {
			t.score += 100 * wc * float64(t.calls) / float64(calls)
		}
		if sv := byID[t.server]; sv != nil {
			sv.scoreBefore += t.score
			sv.current += t.score
		}
	}
	slices.SortFunc(tenants, func(a, b *balTenant) int { return strings.Compare(a.slug, b.slug) })
	return servers, tenants, nil
}

// databaseSizes reads the sizes of a server's tenant databases as its
// admin role (which owns them, so may).
func (s *Service) databaseSizes(ctx context.Context, sv *balServer, dbs []string, byDB map[string]*balTenant) error {
	conn, err := s.connect(ctx, sv.name, "")
	if err != nil {
		return catalog.WrapError(catalog.CodeUnavailable, err, "server %s: cannot connect to read its databases' sizes", sv.name)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT datname, pg_database_size(datname) FROM pg_database WHERE datname = ANY($1)`, dbs)
	if err != nil {
		return catalog.WrapError(catalog.CodeUnavailable, err, "server %s: reading database sizes", sv.name)
	}
	defer rows.Close()
	for rows.Next() {
		var db string
		var size int64
		if err := rows.Scan(&db, &size); err != nil {
			return catalog.WrapError(catalog.CodeUnavailable, err, "server %s: reading database sizes", sv.name)
		}
		if t := byDB[strconv.FormatInt(sv.id, 10)+"/"+db]; t != nil {
			t.bytes = size
		}
	}
	if err := rows.Err(); err != nil {
		return catalog.WrapError(catalog.CodeUnavailable, err, "server %s: reading database sizes", sv.name)
	}
	return nil
}

// StartRebalance plans a rebalance and, unless spec.DryRun, carries the
// plan out: an evacuation of kind rebalance whose tenants have their
// planned targets, bounded like an evacuation. A plan with no move starts
// nothing. A rebalance under way already is a CodeConflict naming it.
func (s *Service) StartRebalance(ctx context.Context, spec RebalanceSpec, actor string) (Rebalance, error) {
	if err := spec.check(); err != nil {
		return Rebalance{}, err
	}
	plan, err := s.PlanRebalance(ctx)
	if err != nil {
		return Rebalance{}, err
	}
	out := Rebalance{Plan: plan}
	if spec.DryRun || len(plan.Moves) == 0 {
		return out, nil
	}
	var id int64
	err = s.store.InTx(ctx, func(tx pgx.Tx) error {
		var open int64
		err := tx.QueryRow(ctx, `SELECT id FROM evacuations WHERE kind = 'rebalance' AND state IN ('running', 'paused')`).Scan(&open)
		if err == nil {
			return catalog.Errorf(catalog.CodeConflict, "rebalance %d is under way: follow, pause or cancel it (GET /evacuations/%d)", open, open)
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return catalog.Classify(err, "evacuation")
		}
		err = tx.QueryRow(ctx, `INSERT INTO evacuations (kind, concurrency, per_server, mode, actor, max_attempts)
			VALUES ('rebalance', $1, $2, $3, $4, $5) RETURNING id`, spec.Concurrency, spec.PerServer, spec.Mode, actor, spec.MaxAttempts).Scan(&id)
		if err != nil {
			return catalog.Classify(err, "rebalance")
		}
		for i, m := range plan.Moves {
			_, err := tx.Exec(ctx, `INSERT INTO evacuation_tenants (evacuation_id, tenant_id, position, from_server_id, to_server_id, reason)
				SELECT $1, t.id, $3, fs.id, ts.id, $6 FROM tenants t, servers fs, servers ts WHERE t.slug = $2 AND fs.name = $4 AND ts.name = $5`,
				id, m.Tenant, i+1, m.From, m.To, m.Why)
			if err != nil {
				return catalog.Classify(err, "rebalance tenants")
			}
		}
		if err := catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: actor, Action: "rebalance.started", Subject: strconv.FormatInt(id, 10),
			Details: map[string]any{"evacuation_id": id, "moves": len(plan.Moves), "spread_before": plan.SpreadBefore, "spread_after": plan.SpreadAfter}}); err != nil {
			return err
		}
		_, err = s.jobs.Client().InsertTx(ctx, tx, evacuateArgs{EvacuationID: id}, nil)
		return err
	})
	if err != nil {
		return Rebalance{}, err
	}
	s.logger.InfoContext(ctx, "rebalance started", "evacuation_id", id, "moves", len(plan.Moves))
	ev, err := s.GetEvacuation(ctx, id)
	if err != nil {
		return Rebalance{}, err
	}
	out.Evacuation = &ev
	return out, nil
}
