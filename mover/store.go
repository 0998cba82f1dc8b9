package mover

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/catalog"
)

// move is a ledger row with what the workflow needs beyond Move.
type move struct {
	Move
	fromID, toID  int64
	fencedAt      *time.Time
	sourceDropped bool
	inStep        bool  // a revert over the kept stream (keep.go)
	poolID        int64 // a promotion's source, a demotion's target
}

const moveSelect = `SELECT m.id, t.slug, m.tenant_id, fs.name, ts.name, m.mode, m.mode_reason, m.phase,
	m.rows_copied, m.bytes_copied, m.lag_bytes, m.write_pause_ms, m.keep_until, m.reverts, m.cancel_requested,
	m.last_error, m.actor, m.created_at, m.updated_at, m.finished_at,
	m.from_server_id, m.to_server_id, m.fenced_at, m.source_dropped,
	m.keep_in_step, m.keep_reason, m.keep_lag_bytes, m.in_step, m.kind, coalesce(m.pool_id, 0), m.plan, m.from_plan
	FROM moves m JOIN tenants t ON t.id = m.tenant_id
	JOIN servers fs ON fs.id = m.from_server_id JOIN servers ts ON ts.id = m.to_server_id`

func scanMove(row pgx.Row) (m move, err error) {
	err = row.Scan(&m.ID, &m.Tenant, &m.TenantID, &m.From, &m.To, &m.Mode, &m.ModeReason, &m.Phase,
		&m.RowsCopied, &m.BytesCopied, &m.LagBytes, &m.WritePauseMS, &m.KeepUntil, &m.Reverts, &m.CancelRequested,
		&m.LastError, &m.Actor, &m.CreatedAt, &m.UpdatedAt, &m.FinishedAt,
		&m.fromID, &m.toID, &m.fencedAt, &m.sourceDropped,
		&m.KeepInStep, &m.KeepReason, &m.KeepLagBytes, &m.inStep, &m.Kind, &m.poolID, &m.Plan, &m.FromPlan)
	if m.poolID != 0 {
		m.Pool = catalog.PoolName(m.poolID)
	}
	return m, err
}

func getMove(ctx context.Context, q catalog.Querier, id int64) (move, error) {
	m, err := scanMove(q.QueryRow(ctx, moveSelect+` WHERE m.id = $1`, id))
	return m, catalog.Classify(err, fmt.Sprintf("move %d", id))
}

// lockTenant reads a tenant FOR UPDATE.
func lockTenant(ctx context.Context, tx pgx.Tx, id string) (catalog.Tenant, error) {
	var t catalog.Tenant
	err := tx.QueryRow(ctx, `SELECT t.id, t.slug, t.state, coalesce(t.server_id, 0), t.move_id FROM tenants t WHERE t.id = $1 FOR UPDATE`, id).
		Scan(&t.ID, &t.Slug, &t.State, &t.ServerID, &t.MoveID)
	return t, catalog.Classify(err, "tenant")
}

// notify announces a change of the tenant on catalog.TenantChannel: every
// router replica reads it again (held, server) within a second.
func notify(ctx context.Context, q catalog.Querier, tenantID string) error {
	_, err := q.Exec(ctx, `SELECT pg_notify($1, $2)`, catalog.TenantChannel, tenantID)
	return catalog.Classify(err, "notify")
}

// setPhase records a phase (and clears the last error: it moved on).
func (s *Service) setPhase(ctx context.Context, m *move, phase string) error {
	_, err := s.store.Pool().Exec(ctx, `UPDATE moves SET phase = $2, last_error = '', updated_at = now() WHERE id = $1`, m.ID, phase)
	if err != nil {
		return catalog.Classify(err, "move")
	}
	m.Phase = phase
	s.logger.InfoContext(ctx, "move phase", "move_id", m.ID, "tenant", m.Tenant, "phase", phase)
	return s.hook(ctx, m.ID, phase)
}

// stepCopied is the test hook's point within the online copying phase
// where the copy is done and the stream's slot and publication exist.
const stepCopied = PhaseCopying + ": copied, stream open"

// hook runs the tests' afterPhase hook, if any, at a phase or step.
func (s *Service) hook(ctx context.Context, id int64, phase string) error {
	if s.cfg.afterPhase == nil {
		return nil
	}
	if err := s.cfg.afterPhase(ctx, id, phase); err != nil {
		return fmt.Errorf("%w after phase %s: %v", errInterrupted, phase, err)
	}
	return nil
}

// refresh reads the move's cancel flag again.
func (s *Service) cancelRequested(ctx context.Context, m *move) (bool, error) {
	err := s.store.Pool().QueryRow(ctx, `SELECT cancel_requested FROM moves WHERE id = $1`, m.ID).Scan(&m.CancelRequested)
	return m.CancelRequested, catalog.Classify(err, "move")
}

// serverConfig is a connection configuration of database on a server as its
// admin role ("" keeps the DSN's database).
func (s *Service) serverConfig(ctx context.Context, server, database string) (*pgx.ConnConfig, error) {
	dsn, err := s.store.ServerDSN(ctx, server)
	if err != nil {
		return nil, err
	}
	pcfg, err := catalog.ServerConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("server %q: %w", server, err)
	}
	cfg := pcfg.ConnConfig
	if database != "" {
		cfg.Database = database
	}
	cfg.ConnectTimeout = s.cfg.ConnectTimeout
	cfg.RuntimeParams["application_name"] = "tenantplane-mover"
	return cfg, nil
}

func (s *Service) connect(ctx context.Context, server, database string) (*pgx.Conn, error) {
	cfg, err := s.serverConfig(ctx, server, database)
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cfg)
}
