package mover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/jobs"
)

// Phases of a move (moves.phase). A move runs pending → copying →
// catching_up (online only) → fenced → verifying → switched → done; in the
// copy mode the fence goes up before the copy: pending → fenced → copying →
// verifying → switched → done. It ends aborted when it fails or is
// cancelled before the switch (the source serves again), and a done move
// becomes reverted once a revert of it is done.
const (
	PhasePending    = "pending"
	PhaseCopying    = "copying"
	PhaseCatchingUp = "catching_up"
	PhaseFenced     = "fenced"
	PhaseVerifying  = "verifying"
	PhaseSwitched   = "switched"
	PhaseDone       = "done"
	PhaseAborted    = "aborted"
	PhaseReverted   = "reverted"
)

// Modes of a move (MoveSpec.Mode, moves.mode).
const (
	// ModeOnline copies under a snapshot and streams the changes since
	// (logical replication); writes are held only for the last catch-up.
	ModeOnline = "online"
	// ModeCopy holds the tenant's writes for the whole copy.
	ModeCopy = "copy"
)

// Targets makes and drops tenant databases on a server: the provisioner
// implements it, controlplane wires it.
type Targets interface {
	// PrepareTarget makes tenant t's role (same name, the password the
	// catalog holds, least privilege) and an empty database (same name) on
	// server, migrated to version with the tenant migrations, with the
	// role's grants on its rows. Idempotent.
	PrepareTarget(ctx context.Context, t catalog.Tenant, server catalog.Server, version int64) error
	// DropDatabase drops tenant t's database and role on server (IF EXISTS,
	// WITH FORCE). Idempotent.
	DropDatabase(ctx context.Context, t catalog.Tenant, server catalog.Server) error
}

// Config configures a Service. A zero field takes its documented default; a
// setting that can be turned off is off when negative.
type Config struct {
	// Logger receives structured logs. Default: slog.Default().
	Logger *slog.Logger
	// Jobs is the process's one River client, which the service registers
	// its workers and queue into. Default: nil, and the service makes a
	// registry of its own, opens it in New and runs it in Start and Stop
	// (standalone use, such as package tests).
	Jobs *jobs.Registry
	// Targets makes and drops the tenant databases. Required.
	Targets Targets
	// Keep is how long a moved tenant's fenced source is kept for a revert
	// (TENANTPLANE_MOVE_KEEP). Default 24h; negative: dropped at once.
	Keep time.Duration
	// CopyRateEstimate is the copy rate, in bytes per second, used to
	// estimate a copy-mode write pause. Default 50 MB/s.
	CopyRateEstimate int64
	// Workers is how many moves run at once in this process. Default 2.
	Workers int
	// ConnectTimeout bounds each connection to a tenant server. Default 5s.
	ConnectTimeout time.Duration
	// HoldWait bounds how long the fence waits, once the routers hold the
	// tenant's requests, for the tenant's transactions in flight to end
	// before it terminates them. Default 1s.
	HoldWait time.Duration
	// CatchUpLag is the lag, in bytes of WAL, under which the online mode
	// stops catching up and fences the source for the last catch-up.
	// Default 1 MiB.
	CatchUpLag int64

	// afterPhase, in tests, runs after each phase is recorded and at
	// stepCopied; an error stops the job there (it is retried, as after a
	// crash).
	afterPhase func(ctx context.Context, moveID int64, phase string) error
	// evacRetryDelay replaces the evacuations' evacRetryDelay (tests).
	evacRetryDelay time.Duration
}

// Move is a move of a tenant's database from one server to another, as the
// ledger records it.
type Move struct {
	ID int64 `json:"id"`
	// Kind is move (a tenant's database to another server), promote (a
	// pooled tenant's rows to a database of its own), demote (a
	// dedicated tenant's rows into a pool database) or repool (a pooled
	// tenant's rows into another pool database).
	Kind string `json:"kind"`
	// Pool is the pool database of a promotion (its source) or a demotion
	// (its target).
	Pool string `json:"pool,omitempty"`
	// ToPool is a repool's target (Pool its source).
	ToPool string `json:"to_pool,omitempty"`
	// Plan is the plan a promotion or demotion gives the tenant at its
	// switch (a change of plan across tiers), "" where it keeps its plan;
	// FromPlan is the tenant's plan when the move started, which a revert
	// of such a move puts back.
	Plan         string     `json:"plan,omitempty"`
	FromPlan     string     `json:"from_plan,omitempty"`
	Tenant       string     `json:"tenant"`
	TenantID     string     `json:"tenant_id"`
	From         string     `json:"from"`
	To           string     `json:"to"`
	Mode         string     `json:"mode"`
	ModeReason   string     `json:"mode_reason"`
	Phase        string     `json:"phase"`
	RowsCopied   int64      `json:"rows_copied"`
	BytesCopied  int64      `json:"bytes_copied"`
	LagBytes     int64      `json:"lag_bytes"`
	WritePauseMS *int64     `json:"write_pause_ms"`
	KeepUntil    *time.Time `json:"keep_until"`
	// KeepInStep: the kept source is kept in step with the tenant's writes
	// by a stream from the target (keep.go), so a revert only catches up
	// and switches back. KeepReason says why it is or is not (any more),
	// and KeepLagBytes how far the kept source is behind.
	KeepInStep      bool       `json:"keep_in_step"`
	KeepReason      string     `json:"keep_reason"`
	KeepLagBytes    int64      `json:"keep_lag_bytes"`
	Reverts         *int64     `json:"reverts,omitempty"`
	CancelRequested bool       `json:"cancel_requested"`
	LastError       string     `json:"last_error"`
	Actor           string     `json:"actor"`
	CreatedAt       time.Time  `json:"created_at"`
	UpdatedAt       time.Time  `json:"updated_at"`
	FinishedAt      *time.Time `json:"finished_at"`
}

// MoveSpec is what starting a move takes.
type MoveSpec struct {
	To string `json:"to"` // the target server's name
	// Pool is, for a pooled tenant, the pool database to move its rows
	// into (a repool, repool.go); To alone picks an active pool database
	// with room on that server.
	Pool int64 `json:"pool,omitempty"`
	// Mode is "online", "copy", or "" (online when possible, else refused
	// with the reason and the copy mode's estimated write pause).
	Mode string `json:"mode"`
}

// Open says whether the move is still under way (not done, aborted or reverted).
func (m Move) Open() bool {
	return m.Phase != PhaseDone && m.Phase != PhaseAborted && m.Phase != PhaseReverted
}

// Service moves tenants between servers. Each move is a ledger row in the
// catalog (moves) driven by one durable River job through its phases.
type Service struct {
	store   *catalog.Store
	cfg     Config
	logger  *slog.Logger
	jobs    *jobs.Registry
	ownJobs bool

	// stopping is closed by Stop: evacuation jobs hand their evacuation
	// over (snooze) at once rather than keep starting moves in a process
	// that is going away.
	stopping chan struct{}
	stopOnce sync.Once

	// verifies counts the fences' verifications: of every row, or of the
	// rows written during an online move (for the tests).
	verifies struct {
		full, changed atomic.Int64
		last          atomic.Int64 // the last one's duration, in ns
	}
}

// queue is the River queue of move jobs.
const queue = "tenantplane_moves"

// New returns a Service working through store. Start runs its workers when
// the job registry is its own.
func New(store *catalog.Store, cfg Config) (*Service, error) {
	if cfg.Targets == nil {
		return nil, errors.New("mover: Config.Targets is required (the provisioner)")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Keep == 0 {
		cfg.Keep = 24 * time.Hour
	}
	if cfg.CopyRateEstimate <= 0 {
		cfg.CopyRateEstimate = 50 << 20
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 2
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.HoldWait <= 0 {
		cfg.HoldWait = time.Second
	}
	if cfg.CatchUpLag <= 0 {
		cfg.CatchUpLag = 1 << 20
	}
	if cfg.evacRetryDelay <= 0 {
		cfg.evacRetryDelay = evacRetryDelay
	}
	s := &Service{store: store, cfg: cfg, logger: cfg.Logger.With("component", "mover"), jobs: cfg.Jobs, stopping: make(chan struct{})}
	if s.jobs == nil {
		s.jobs, s.ownJobs = jobs.NewRegistry(), true
	}
	river.AddWorker(s.jobs.Workers(), &moveWorker{s: s})
	river.AddWorker(s.jobs.Workers(), &dropSourceWorker{s: s})
	river.AddWorker(s.jobs.Workers(), &keepWorker{s: s})
	s.jobs.AddQueue(queue, cfg.Workers)
	s.registerEvacuations()
	if s.ownJobs {
		if err := s.jobs.Open(store.Pool(), jobs.Config{Logger: cfg.Logger}); err != nil {
			return nil, fmt.Errorf("mover: %w", err)
		}
	}
	return s, nil
}

// Start runs the move workers when the job registry is the service's own;
// a shared registry is started by its owner.
func (s *Service) Start(ctx context.Context) error {
	if s.ownJobs {
		if err := s.jobs.Start(ctx); err != nil {
			return fmt.Errorf("mover: %w", err)
		}
	}
	return nil
}

// Stop lets running moves reach their next step until ctx ends, then
// cancels them: they resume from the ledger at the next start, here or on
// another replica. A shared registry is stopped by its owner.
func (s *Service) Stop(ctx context.Context) error {
	s.stopOnce.Do(func() { close(s.stopping) })
	if s.ownJobs {
		return s.jobs.Stop(ctx)
	}
	return nil
}

// StartMove records a move of tenant slug to spec.To and queues its job, in
// one transaction: the answer is 202 with the move. Unknown tenant or
// server: CodeNotFound; the same server, a draining or full target, a bad
// mode: CodeInvalid; a tenant that is not active or suspended, already
// moving or in a running fan-out, or an online move that cannot run:
// CodeConflict, naming the move, the run or each refusal.
//
// A pooled tenant's move is a repool (StartRepool): its rows go to another
// pool database, spec.Pool or one with room on spec.To.
func (s *Service) StartMove(ctx context.Context, slug string, spec MoveSpec, actor string) (Move, error) {
	if spec.Pool != 0 || spec.To != "" {
		t, err := s.store.GetTenant(ctx, slug)
		switch {
		case err != nil && spec.Pool != 0:
			return Move{}, err
		case err == nil && t.PoolID != 0:
			return s.StartRepool(ctx, slug, spec, actor)
		case err == nil && spec.Pool != 0:
			return Move{}, catalog.Errorf(catalog.CodeInvalid, "pool goes with a pooled tenant, and %s has a database of its own: demote it into a pool database with POST /admin/v1/tenants/%s/demote {\"pool\": %d}", slug, slug, spec.Pool)
		}
	}
	return s.startMove(ctx, slug, spec, actor, nil)
}

func (s *Service) startMove(ctx context.Context, slug string, spec MoveSpec, actor string, reverts *Move) (Move, error) {
	if spec.Mode != "" && spec.Mode != ModeOnline && spec.Mode != ModeCopy {
		return Move{}, catalog.Errorf(catalog.CodeInvalid, "mode %q: use online, copy, or leave it out (online when possible)", spec.Mode)
	}
	if spec.To == "" {
		return Move{}, catalog.Errorf(catalog.CodeInvalid, "to: name the server to move the tenant to")
	}
	t, err := s.store.GetTenant(ctx, slug)
	if err != nil {
		return Move{}, err
	}
	to, err := s.store.GetServer(ctx, spec.To)
	if err != nil {
		return Move{}, err
	}
	if err := checkTenantMovable(t); err != nil {
		return Move{}, err
	}
	if reverts == nil {
		switch {
		case to.ID == t.ServerID:
			return Move{}, catalog.Errorf(catalog.CodeInvalid, "tenant %s is on server %s already", t.Slug, to.Name)
		case to.State != catalog.ServerActive:
			return Move{}, catalog.Errorf(catalog.CodeInvalid, "server %s is %s: it takes no tenants", to.Name, to.State)
		case to.Capacity > 0 && to.Tenants >= to.Capacity:
			return Move{}, catalog.Errorf(catalog.CodeInvalid, "server %s is full: %d tenants of a capacity of %d", to.Name, to.Tenants, to.Capacity)
		}
	}
	from, err := s.store.GetServer(ctx, t.Server)
	if err != nil {
		return Move{}, err
	}
	// A revert of a move whose source is kept in step copies nothing: it
	// catches up over the keep's slot and switches back (revert.go).
	inStep := reverts != nil && reverts.KeepInStep
	var mode, reason string
	if inStep {
		mode, reason = ModeOnline, fmt.Sprintf("move %d's source on %s is kept in step: the revert catches up the last writes and switches back, copying nothing", reverts.ID, to.Name)
	} else if mode, reason, err = s.pickMode(ctx, t, from, to, spec.Mode, reverts != nil); err != nil {
		return Move{}, err
	}

	var id int64
	err = s.store.InTx(ctx, func(tx pgx.Tx) error {
		// Locked, and checked again: a suspend, delete or other move since
		// the checks above is refused here.
		cur, err := lockTenant(ctx, tx, t.ID)
		if err != nil {
			return err
		}
		if err := checkTenantMovable(cur); err != nil {
			return err
		}
		if cur.ServerID != from.ID {
			return catalog.Errorf(catalog.CodeConflict, "tenant %s moved to another server meanwhile: try again", t.Slug)
		}
		if err := checkNoFanout(ctx, tx, t); err != nil {
			return err
		}
		var revertsID *int64
		if reverts != nil {
			revertsID = &reverts.ID
			if err := lockKept(ctx, tx, reverts.ID); err != nil {
				return err
			}
		} else {
			var kept int64
			err := tx.QueryRow(ctx, `SELECT id FROM moves WHERE tenant_id = $1 AND from_server_id = $2 AND phase = 'done' AND NOT source_dropped
				ORDER BY id DESC LIMIT 1`, t.ID, to.ID).Scan(&kept)
			if err == nil {
				return catalog.Errorf(catalog.CodeConflict, "server %s keeps tenant %s's source of move %d: revert move %d to go back there", to.Name, t.Slug, kept, kept)
			}
			if !errors.Is(err, pgx.ErrNoRows) {
				return catalog.Classify(err, "move")
			}
		}
		err = tx.QueryRow(ctx, `INSERT INTO moves (tenant_id, from_server_id, to_server_id, mode, mode_reason, reverts, actor, in_step)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id`, t.ID, from.ID, to.ID, mode, reason, revertsID, actor, inStep).Scan(&id)
		if err != nil {
			return catalog.Classify(err, "move of tenant "+strconv.Quote(t.Slug))
		}
		details := map[string]any{"move_id": id, "from": from.Name, "to": to.Name, "mode": mode, "mode_reason": reason}
		if reverts != nil {
			details["reverts"] = reverts.ID
		}
		return s.openMove(ctx, tx, t, id, "tenant.move_started", actor, details)
	})
	if err != nil {
		return Move{}, err
	}
	s.logger.InfoContext(ctx, "move started", "tenant", t.Slug, "move_id", id, "from", from.Name, "to", to.Name, "mode", mode)
	return s.Get(ctx, id)
}

// lockKept locks move id, which a revert takes back, under the lock the
// source's drop job takes, and refuses it (CodeConflict) when its source is
// gone or past its keep: a revert that comes after the drop began is refused.
func lockKept(ctx context.Context, tx pgx.Tx, id int64) error {
	var dropped bool
	var keepUntil *time.Time
	err := tx.QueryRow(ctx, `SELECT source_dropped, keep_until FROM moves WHERE id = $1 FOR UPDATE`, id).Scan(&dropped, &keepUntil)
	if err != nil {
		return catalog.Classify(err, fmt.Sprintf("move %d", id))
	}
	if dropped || keepUntil == nil || time.Until(*keepUntil) <= 0 {
		return catalog.Errorf(catalog.CodeConflict, "move %d's source is gone: it cannot be reverted", id)
	}
	return nil
}

// openMove completes a move recorded in tx: the tenant names it, the audit
// event, the routers told, and the job that drives it.
func (s *Service) openMove(ctx context.Context, tx pgx.Tx, t catalog.Tenant, id int64, action, actor string, details map[string]any) error {
	if _, err := tx.Exec(ctx, `UPDATE tenants SET move_id = $2, updated_at = now() WHERE id = $1`, t.ID, id); err != nil {
		return catalog.Classify(err, "tenant")
	}
	if err := catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: actor, Action: action, TenantID: t.ID,
		Subject: t.Slug, Details: details}); err != nil {
		return err
	}
	if err := notify(ctx, tx, t.ID); err != nil {
		return err
	}
	// The job commits with the move: a move is never recorded without the
	// job that drives it, nor a job queued for a move that is not.
	_, err := s.jobs.Client().InsertTx(ctx, tx, moveArgs{MoveID: id}, &river.InsertOpts{Queue: queue})
	return err
}

func checkTenantMovable(t catalog.Tenant) error {
	if t.MoveID != nil {
		return catalog.Errorf(catalog.CodeConflict, "tenant %s is being moved already (move %d): wait for it, or cancel it", t.Slug, *t.MoveID)
	}
	if t.State != catalog.TenantActive && t.State != catalog.TenantSuspended {
		return catalog.Errorf(catalog.CodeConflict, "tenant %s is %s: only an active or suspended tenant can be moved", t.Slug, t.State)
	}
	return nil
}

// checkNoFanout refuses a tenant that a running (or paused) fan-out run
// has yet to migrate or is migrating: it is moved before the run starts or
// after its migration, never during.
func checkNoFanout(ctx context.Context, q catalog.Querier, t catalog.Tenant) error {
	var run int64
	err := q.QueryRow(ctx, `SELECT r.id FROM migration_run_tenants rt JOIN migration_runs r ON r.id = rt.run_id
		WHERE rt.tenant_id = $1 AND rt.state IN ('pending', 'running') AND r.state IN ('running', 'paused', 'halted')
		ORDER BY r.id LIMIT 1`, t.ID).Scan(&run)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return catalog.Classify(err, "migration run")
	}
	return catalog.Errorf(catalog.CodeConflict, "tenant %s is in migration run %d, which has yet to migrate it: move it once the run is done, or cancel the run", t.Slug, run)
}

// pickMode decides between the online and the copy mode, or refuses.
func (s *Service) pickMode(ctx context.Context, t catalog.Tenant, from, to catalog.Server, asked string, revert bool) (string, string, error) {
	src, err := s.connect(ctx, from.Name, t.Database)
	if err != nil {
		return "", "", catalog.WrapError(catalog.CodeUnavailable, err, "server %s: cannot reach tenant %s's database", from.Name, t.Slug)
	}
	defer src.Close(context.WithoutCancel(ctx))
	var size int64
	if err := src.QueryRow(ctx, "SELECT pg_database_size(current_database())").Scan(&size); err != nil {
		return "", "", catalog.WrapError(catalog.CodeUnavailable, err, "server %s: reading the database size", from.Name)
	}
	estimate := s.estimate(size)
	if asked == ModeCopy {
		return ModeCopy, "copy asked for: writes held for the whole copy, " + estimate, nil
	}
	check, err := s.checkOnline(ctx, src, to)
	if err != nil {
		return "", "", err
	}
	if check.Possible {
		reason := "logical replication from " + from.Name + ": " + string(ApplyStream)
		if check.UnboundedSlotWAL {
			reason += "; max_slot_wal_keep_size is unbounded on " + from.Name + ": a stalled move's slot holds WAL without limit; " +
				"set it (e.g. 10GB) on the server (the move cannot: it takes a superuser or the server's configuration)"
		}
		return ModeOnline, reason, nil
	}
	if revert && asked == "" {
		// A revert goes back the way it can: its source is kept fenced,
		// so only the copy's own pause counts.
		return ModeCopy, "online impossible (" + strings.Join(check.Refusals, "; ") + "): writes held for the whole copy, " + estimate, nil
	}
	return "", "", catalog.Errorf(catalog.CodeConflict, "the online mode cannot run: %s; pass mode copy to move with writes held for the whole copy: %s",
		strings.Join(check.Refusals, "; "), estimate)
}

// checkOnline says whether the online mode can run from src (a connection
// to the source database) to server to.
func (s *Service) checkOnline(ctx context.Context, src *pgx.Conn, to catalog.Server) (OnlineCheck, error) {
	dst, err := s.connect(ctx, to.Name, "")
	if err != nil {
		return OnlineCheck{}, catalog.WrapError(catalog.CodeUnavailable, err, "server %s: cannot connect", to.Name)
	}
	defer dst.Close(context.WithoutCancel(ctx))
	check, err := CheckOnline(ctx, src, dst)
	if err != nil {
		return OnlineCheck{}, catalog.WrapError(catalog.CodeUnavailable, err, "checking the online mode")
	}
	return check, nil
}

// estimate is the copy mode's expected write pause for a database of size bytes.
func (s *Service) estimate(size int64) string {
	secs := (size + s.cfg.CopyRateEstimate - 1) / s.cfg.CopyRateEstimate
	return fmt.Sprintf("about %d s for this database's %d MB", max(secs, 1), (size+(1<<20)-1)>>20)
}

// Get returns a move.
func (s *Service) Get(ctx context.Context, id int64) (Move, error) {
	m, err := getMove(ctx, s.store.Pool(), id)
	return m.Move, err
}

// List returns moves, newest first, a page at a time (catalog's limits and
// cursors); the cursor is "" on the last page.
func (s *Service) List(ctx context.Context, limit int, cursor string) ([]Move, string, error) {
	return catalog.IDPage(ctx, s.store.Pool(), limit, cursor, "moves", moveSelect+` WHERE m.id < $1 ORDER BY m.id DESC LIMIT $2`,
		func(r pgx.Row) (Move, error) { m, err := scanMove(r); return m.Move, err }, func(m Move) int64 { return m.ID })
}

// Cancel asks the job of a move that has not switched yet to stop: it lifts
// any fence, drops the target and ends the move aborted. A move past the
// switch is a CodeConflict (revert it instead).
func (s *Service) Cancel(ctx context.Context, id int64, actor string) (Move, error) {
	err := s.store.InTx(ctx, func(tx pgx.Tx) error {
		var phase string
		var tenantID string
		err := tx.QueryRow(ctx, `SELECT phase, tenant_id FROM moves WHERE id = $1 FOR UPDATE`, id).Scan(&phase, &tenantID)
		if err != nil {
			return catalog.Classify(err, fmt.Sprintf("move %d", id))
		}
		if !cancellable(phase) {
			return catalog.Errorf(catalog.CodeConflict, "move %d is %s: only a move that has not switched can be cancelled (revert a done one)", id, phase)
		}
		if _, err := tx.Exec(ctx, `UPDATE moves SET cancel_requested = true, updated_at = now() WHERE id = $1`, id); err != nil {
			return catalog.Classify(err, "move")
		}
		return catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: actor, Action: "tenant.move_cancel_requested", TenantID: tenantID,
			Details: map[string]any{"move_id": id, "phase": phase}})
	})
	if err != nil {
		return Move{}, err
	}
	return s.Get(ctx, id)
}

func cancellable(phase string) bool {
	switch phase {
	case PhasePending, PhaseCopying, PhaseCatchingUp, PhaseFenced, PhaseVerifying:
		return true
	}
	return false
}

// Revert moves a done move's tenant back onto the source the move kept,
// with every write made since: a new move (Reverts set) whose target is
// the kept source database. A promotion or demotion is taken back by the
// opposite one (revertTier). Where the source is kept in step (KeepInStep)
// the revert only catches up the last writes and switches back
// (revert.go); otherwise it copies every row back. The original becomes
// reverted once the revert is done. A move that is not done, or whose
// source is gone or past its keep, is a CodeConflict.
func (s *Service) Revert(ctx context.Context, id int64, actor string) (Move, error) {
	m, err := getMove(ctx, s.store.Pool(), id)
	if err != nil {
		return Move{}, err
	}
	switch {
	case m.Phase != PhaseDone:
		return Move{}, catalog.Errorf(catalog.CodeConflict, "move %d is %s: only a done move can be reverted (cancel one under way)", id, m.Phase)
	case m.sourceDropped || m.KeepUntil == nil || time.Until(*m.KeepUntil) <= 0:
		return Move{}, catalog.Errorf(catalog.CodeConflict, "move %d kept its source on %s until %s: it is gone, so the move cannot be reverted", id, m.From, fmtTime(m.KeepUntil))
	}
	t, err := s.store.GetTenantByID(ctx, m.TenantID)
	if err != nil {
		return Move{}, err
	}
	if m.Kind != KindMove {
		return s.revertTier(ctx, m, t, actor)
	}
	if t.ServerID != m.toID {
		return Move{}, catalog.Errorf(catalog.CodeConflict, "tenant %s is on server %s now, not %s: move %d cannot be reverted", t.Slug, t.Server, m.To, id)
	}
	mode := ""
	if m.Mode == ModeCopy {
		mode = ModeCopy
	}
	return s.startMove(ctx, t.Slug, MoveSpec{To: m.From, Mode: mode}, actor, &m.Move)
}

func fmtTime(t *time.Time) string {
	if t == nil {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}
