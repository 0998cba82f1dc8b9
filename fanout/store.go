package fanout

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantplane/tenantplane/catalog"
)

// store is fan-out's tables in the catalog database: migration_runs and
// migration_run_tenants.
type store struct {
	db *catalog.Store
}

func newStore(db *catalog.Store) *store { return &store{db: db} }

// RunState is where a migration run is.
//
//	running -> paused -> running      (pause, resume)
//	running -> halted -> running      (too many failures, or a canary failed; resume retries them)
//	running -> done | failed          (every tenant tried; failed: some failed, no more than max_failures)
//	failed -> running                 (resume retries the failed tenants)
//	running | paused | halted -> cancelled
type RunState string

const (
	RunRunning   RunState = "running"
	RunPaused    RunState = "paused"
	RunHalted    RunState = "halted"
	RunCancelled RunState = "cancelled"
	RunDone      RunState = "done"
	RunFailed    RunState = "failed"
)

// RunTenantState is where one tenant of a run is.
type RunTenantState string

const (
	RunTenantPending RunTenantState = "pending"
	RunTenantRunning RunTenantState = "running"
	RunTenantDone    RunTenantState = "done"
	RunTenantFailed  RunTenantState = "failed"
	RunTenantSkipped RunTenantState = "skipped"
)

// MigrationRun is a fan-out of the tenant schema to one version.
type MigrationRun struct {
	ID            int64     `json:"id"`
	State         RunState  `json:"state"`
	TargetVersion int64     `json:"target_version"`
	SchemaHash    string    `json:"schema_hash"`
	Concurrency   int       `json:"concurrency"`
	PerServer     int       `json:"per_server"`
	Canary        int       `json:"canary"`
	MaxFailures   int       `json:"max_failures"`
	AllTenants    bool      `json:"all_tenants"`
	Generation    int       `json:"generation"`
	Actor         string    `json:"actor"`
	Reason        string    `json:"reason"`
	Counts        RunCounts `json:"counts"`
	HeartbeatAt   time.Time `json:"heartbeat_at"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
	// StartedAt is when the first tenant was claimed.
	StartedAt  *time.Time `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
}

// RunCounts counts a run's tenants by state.
type RunCounts struct {
	Total   int `json:"total"`
	Pending int `json:"pending"`
	Running int `json:"running"`
	Done    int `json:"done"`
	Failed  int `json:"failed"`
	Skipped int `json:"skipped"`
}

// RunTenant is one tenant of a run.
type RunTenant struct {
	RunID       int64               `json:"run_id"`
	TenantID    string              `json:"tenant_id"`
	Slug        string              `json:"slug"`
	TenantState catalog.TenantState `json:"tenant_state"`
	ServerID    int64               `json:"-"`
	Server      string              `json:"server"`
	Database    string              `json:"database"`
	Canary      bool                `json:"canary"`
	State       RunTenantState      `json:"state"`
	FromVersion int64               `json:"from_version"`
	ToVersion   int64               `json:"to_version"`
	Version     *int64              `json:"version"`
	Dirty       bool                `json:"dirty"`
	Attempts    int                 `json:"attempts"`
	Error       string              `json:"error"`
	Note        string              `json:"note"`
	Worker      string              `json:"worker"`
	StartedAt   *time.Time          `json:"started_at"`
	FinishedAt  *time.Time          `json:"finished_at"`
	// LeaseOwner identifies a claim; only its holder may finish the row.
	LeaseOwner string `json:"-"`
}

// NewMigrationRun is what starting a run takes. The provisioner fills in the
// defaults; the store checks the tenants.
type NewMigrationRun struct {
	TargetVersion int64
	SchemaHash    string
	Concurrency   int
	PerServer     int
	// Canary is how many tenants go first, alone; -1 is one per server.
	Canary      int
	MaxFailures int
	// Tenants are slugs; empty means every active and suspended tenant.
	Tenants []string
	Actor   string
}

// RunEnqueue queues, in the transaction that changes the run, the workers
// that drive it: slots of them, for the run's current generation.
type RunEnqueue func(ctx context.Context, tx pgx.Tx, run MigrationRun, slots int) error

const runColumns = `r.id, r.state, r.target_version, r.schema_hash, r.concurrency, r.per_server, r.canary, r.max_failures,
	r.all_tenants, r.generation, r.actor, r.reason, r.heartbeat_at, r.created_at, r.updated_at, r.finished_at,
	(SELECT min(started_at) FROM migration_run_tenants x WHERE x.run_id = r.id)`

func scanRun(row pgx.Row) (r MigrationRun, err error) {
	err = row.Scan(&r.ID, &r.State, &r.TargetVersion, &r.SchemaHash, &r.Concurrency, &r.PerServer, &r.Canary, &r.MaxFailures,
		&r.AllTenants, &r.Generation, &r.Actor, &r.Reason, &r.HeartbeatAt, &r.CreatedAt, &r.UpdatedAt, &r.FinishedAt, &r.StartedAt)
	return r, err
}

func runSubject(id int64) string { return "run " + strconv.FormatInt(id, 10) }

// CreateMigrationRun records a run with one row per tenant, in state running,
// and calls enqueue in the same transaction, so the run is durable exactly
// when its workers are. Tenants are ordered with the servers interleaved, so
// that a per-server limit never starves the total; the canary wave is the
// first of that order (by default, the first tenant of each server). A run
// while another is open is a catalog.CodeConflict error; named tenants that do not
// exist or are not active or suspended are a catalog.CodeInvalid error.
func (s *store) CreateMigrationRun(ctx context.Context, nr NewMigrationRun, enqueue RunEnqueue) (MigrationRun, error) {
	var run MigrationRun
	err := s.db.InTx(ctx, func(tx pgx.Tx) error {
		var slugs []string // nil: all tenants
		if len(nr.Tenants) > 0 {
			var err error
			if slugs, err = checkRunTenants(ctx, tx, nr.Tenants); err != nil {
				return err
			}
		}
		if open, err := openRun(ctx, tx); err != nil {
			return err
		} else if open != nil {
			return catalog.Errorf(catalog.CodeConflict, "run %d is %s: resume it, or cancel it, before starting another", open.ID, open.State)
		}
		err := tx.QueryRow(ctx, `
			INSERT INTO migration_runs (target_version, schema_hash, concurrency, per_server, canary, max_failures, all_tenants, actor)
			VALUES ($1, $2, $3, $4, 0, $5, $6, $7) RETURNING id`,
			nr.TargetVersion, nr.SchemaHash, nr.Concurrency, nr.PerServer, nr.MaxFailures, slugs == nil, nr.Actor).Scan(&run.ID)
		if err != nil {
			if isUniqueViolation(err) {
				return catalog.Errorf(catalog.CodeConflict, "another run was started meanwhile: resume it, or cancel it, before starting another")
			}
			return catalog.Classify(err, "migration run")
		}
		_, err = tx.Exec(ctx, `
			INSERT INTO migration_run_tenants (run_id, tenant_id, server_id, position, canary, from_version, to_version)
			SELECT $1, id, server_id, pos, CASE WHEN $3 < 0 THEN rank = 1 ELSE pos <= $3 END, schema_version, $4
			FROM (
				SELECT id, server_id, schema_version, rank, row_number() OVER (ORDER BY rank, server_id) AS pos
				FROM (
					SELECT t.id, t.server_id, t.schema_version,
					       row_number() OVER (PARTITION BY t.server_id ORDER BY t.created_at, t.id) AS rank
					FROM tenants t
					WHERE t.state IN ('active', 'suspended') AND t.server_id IS NOT NULL
					  AND ($2::text[] IS NULL OR t.slug = ANY($2))
				) ranked
			) ordered`, run.ID, slugs, nr.Canary, nr.TargetVersion)
		if err != nil {
			return catalog.Classify(err, "migration run tenants")
		}
		if _, err := tx.Exec(ctx, `UPDATE migration_runs SET canary = (SELECT count(*) FROM migration_run_tenants WHERE run_id = $1 AND canary) WHERE id = $1`, run.ID); err != nil {
			return catalog.Classify(err, "migration run")
		}
		if run, err = getRun(ctx, tx, run.ID); err != nil {
			return err
		}
		if err := catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: nr.Actor, Action: "migration_run.created", Subject: runSubject(run.ID),
			ToState: string(run.State), Details: map[string]any{
				"target_version": run.TargetVersion, "tenants": run.Counts.Total, "concurrency": run.Concurrency,
				"per_server": run.PerServer, "canary": run.Canary, "max_failures": run.MaxFailures,
			}}); err != nil {
			return err
		}
		if run.Counts.Total == 0 {
			// Nothing to do: done at once, with nothing queued.
			if _, err := tx.Exec(ctx, `UPDATE migration_runs SET state = 'done', finished_at = now(), updated_at = now() WHERE id = $1`, run.ID); err != nil {
				return catalog.Classify(err, "migration run")
			}
			run, err = getRun(ctx, tx, run.ID)
			return err
		}
		if enqueue != nil {
			return enqueue(ctx, tx, run, min(run.Concurrency, run.Counts.Total))
		}
		return nil
	})
	return run, err
}

// checkRunTenants returns the distinct slugs, all of tenants a run can take,
// or a catalog.CodeInvalid error naming each that is not.
func checkRunTenants(ctx context.Context, tx pgx.Tx, slugs []string) ([]string, error) {
	seen := map[string]bool{}
	var distinct []string
	for _, s := range slugs {
		if !seen[s] {
			seen[s] = true
			distinct = append(distinct, s)
		}
	}
	rows, err := tx.Query(ctx, `SELECT slug, state, server_id IS NOT NULL FROM tenants WHERE slug = ANY($1)`, distinct)
	if err != nil {
		return nil, catalog.Classify(err, "tenants")
	}
	type found struct {
		state  catalog.TenantState
		placed bool
	}
	byslug := map[string]found{}
	for rows.Next() {
		var slug string
		var f found
		if err := rows.Scan(&slug, &f.state, &f.placed); err != nil {
			rows.Close()
			return nil, catalog.Classify(err, "tenants")
		}
		byslug[slug] = f
	}
	if err := rows.Err(); err != nil {
		return nil, catalog.Classify(err, "tenants")
	}
	var problems []string
	for _, s := range distinct {
		f, ok := byslug[s]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("%q does not exist", s))
		case f.state != catalog.TenantActive && f.state != catalog.TenantSuspended:
			problems = append(problems, fmt.Sprintf("%q is %s", s, f.state))
		case !f.placed:
			problems = append(problems, fmt.Sprintf("%q has no database", s))
		}
	}
	if len(problems) > 0 {
		return nil, catalog.Errorf(catalog.CodeInvalid, "a run takes active or suspended tenants: %s", strings.Join(problems, "; "))
	}
	return distinct, nil
}

func openRun(ctx context.Context, q catalog.Querier) (*MigrationRun, error) {
	r, err := scanRun(q.QueryRow(ctx, `SELECT `+runColumns+` FROM migration_runs r WHERE r.state IN ('running', 'paused', 'halted')`))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, catalog.Classify(err, "migration run")
	}
	return &r, nil
}

func getRun(ctx context.Context, q catalog.Querier, id int64) (MigrationRun, error) {
	r, err := scanRun(q.QueryRow(ctx, `SELECT `+runColumns+` FROM migration_runs r WHERE r.id = $1`, id))
	if err != nil {
		return MigrationRun{}, catalog.Classify(err, runSubject(id))
	}
	err = q.QueryRow(ctx, `
		SELECT count(*),
		       count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'running'),
		       count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'failed'),
		       count(*) FILTER (WHERE state = 'skipped')
		FROM migration_run_tenants WHERE run_id = $1`, id).
		Scan(&r.Counts.Total, &r.Counts.Pending, &r.Counts.Running, &r.Counts.Done, &r.Counts.Failed, &r.Counts.Skipped)
	return r, catalog.Classify(err, runSubject(id))
}

// GetMigrationRun returns a run with its counts.
func (s *store) GetMigrationRun(ctx context.Context, id int64) (MigrationRun, error) {
	return getRun(ctx, s.db.Pool(), id)
}

// ListMigrationRuns returns a page of runs, newest first: at most limit
// (catalog.CheckLimit's bounds) after cursor, and the cursor of the next page ("" on
// the last).
func (s *store) ListMigrationRuns(ctx context.Context, limit int, cursor string) ([]MigrationRun, string, error) {
	limit, err := catalog.CheckLimit(limit)
	if err != nil {
		return nil, "", err
	}
	before, err := idCursor(cursor)
	if err != nil {
		return nil, "", err
	}
	rows, err := s.db.Pool().Query(ctx, `SELECT r.id FROM migration_runs r WHERE r.id < $1 ORDER BY r.id DESC LIMIT $2`, before, limit+1)
	if err != nil {
		return nil, "", catalog.Classify(err, "migration runs")
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, "", catalog.Classify(err, "migration runs")
	}
	next := ""
	if len(ids) > limit {
		ids = ids[:limit]
		next = catalog.EncodeCursor(strconv.FormatInt(ids[limit-1], 10))
	}
	runs := make([]MigrationRun, 0, len(ids))
	for _, id := range ids {
		r, err := getRun(ctx, s.db.Pool(), id)
		if err != nil {
			return nil, "", err
		}
		runs = append(runs, r)
	}
	return runs, next, nil
}

// idCursor reads a cursor of a list ordered by a numeric id, newest first:
// the ids to list are below it.
func idCursor(cursor string) (int64, error) {
	parts, err := catalog.DecodeCursor(cursor, 1)
	if err != nil || parts == nil {
		return math.MaxInt64, err
	}
	id, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil {
		return 0, catalog.ErrBadCursor()
	}
	return id, nil
}

const runTenantColumns = `rt.run_id, rt.tenant_id, t.slug, t.state, rt.server_id, s.name, coalesce(t.db_name, ''), rt.canary,
	rt.state, rt.from_version, rt.to_version, rt.version, rt.dirty, rt.attempts, rt.error, rt.note, rt.worker,
	rt.started_at, rt.finished_at, coalesce(rt.lease_owner::text, '')`

const runTenantFrom = ` FROM migration_run_tenants rt JOIN tenants t ON t.id = rt.tenant_id JOIN servers s ON s.id = rt.server_id `

func scanRunTenant(row pgx.Row) (rt RunTenant, err error) {
	err = row.Scan(&rt.RunID, &rt.TenantID, &rt.Slug, &rt.TenantState, &rt.ServerID, &rt.Server, &rt.Database, &rt.Canary,
		&rt.State, &rt.FromVersion, &rt.ToVersion, &rt.Version, &rt.Dirty, &rt.Attempts, &rt.Error, &rt.Note, &rt.Worker,
		&rt.StartedAt, &rt.FinishedAt, &rt.LeaseOwner)
	return rt, err
}

// scanRunTenantPos scans a run tenant followed by its position.
func scanRunTenantPos(row pgx.Row) (rt RunTenant, pos int64, err error) {
	err = row.Scan(&rt.RunID, &rt.TenantID, &rt.Slug, &rt.TenantState, &rt.ServerID, &rt.Server, &rt.Database, &rt.Canary,
		&rt.State, &rt.FromVersion, &rt.ToVersion, &rt.Version, &rt.Dirty, &rt.Attempts, &rt.Error, &rt.Note, &rt.Worker,
		&rt.StartedAt, &rt.FinishedAt, &rt.LeaseOwner, &pos)
	return rt, pos, err
}

// ListRunTenants returns a run's tenants in the given states (all when none),
// in claim order, at most limit (default 1000).
func (s *store) ListRunTenants(ctx context.Context, runID int64, states []RunTenantState, limit int) ([]RunTenant, error) {
	if limit <= 0 {
		limit = 1000
	}
	out, _, err := s.listRunTenants(ctx, runID, states, limit, "")
	return out, err
}

// ListRunTenantsPage is a page of ListRunTenants: at most limit
// (catalog.CheckLimit's bounds) after cursor, and the next page's cursor.
func (s *store) ListRunTenantsPage(ctx context.Context, runID int64, states []RunTenantState, limit int, cursor string) ([]RunTenant, string, error) {
	limit, err := catalog.CheckLimit(limit)
	if err != nil {
		return nil, "", err
	}
	return s.listRunTenants(ctx, runID, states, limit, cursor)
}

func (s *store) listRunTenants(ctx context.Context, runID int64, states []RunTenantState, limit int, cursor string) ([]RunTenant, string, error) {
	var filter []string
	for _, st := range states {
		filter = append(filter, string(st))
	}
	// Canaries first, then claim order: (NOT canary, position) ascending.
	afterWave, afterPos := -1, int64(-1)
	parts, err := catalog.DecodeCursor(cursor, 2)
	if err != nil {
		return nil, "", err
	}
	if parts != nil {
		w, werr := strconv.Atoi(parts[0])
		p, perr := strconv.ParseInt(parts[1], 10, 64)
		if werr != nil || perr != nil {
			return nil, "", catalog.ErrBadCursor()
		}
		afterWave, afterPos = w, p
	}
	rows, err := s.db.Pool().Query(ctx, `SELECT `+runTenantColumns+`, rt.position`+runTenantFrom+`
		WHERE rt.run_id = $1 AND ($2::text[] IS NULL OR rt.state = ANY($2))
		  AND ((NOT rt.canary)::int, rt.position) > ($4::int, $5::bigint)
		ORDER BY rt.canary DESC, rt.position LIMIT $3`, runID, filter, limit+1, afterWave, afterPos)
	if err != nil {
		return nil, "", catalog.Classify(err, "migration run tenants")
	}
	var positions []int64
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (RunTenant, error) {
		rt, pos, err := scanRunTenantPos(row)
		positions = append(positions, pos)
		return rt, err
	})
	if err != nil {
		return nil, "", catalog.Classify(err, "migration run tenants")
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		wave := 1
		if out[limit-1].Canary {
			wave = 0
		}
		next = catalog.EncodeCursor(strconv.Itoa(wave), strconv.FormatInt(positions[limit-1], 10))
	}
	if out == nil {
		out = []RunTenant{}
	}
	return out, next, nil
}

// RunAction is an operator's change to a run.
type RunAction string

const (
	RunPause  RunAction = "pause"
	RunResume RunAction = "resume"
	RunCancel RunAction = "cancel"
)

// ChangeMigrationRun pauses, resumes or cancels a run. Pause and cancel let
// the tenants being migrated finish and start no others; cancel marks the
// pending ones skipped. Resume retries the failed tenants and queues a new
// generation of workers through enqueue, in the same transaction. A run in a
// state the action does not apply to is a catalog.CodeConflict error.
func (s *store) ChangeMigrationRun(ctx context.Context, id int64, action RunAction, actor string, enqueue RunEnqueue) (MigrationRun, error) {
	var from = map[RunAction][]RunState{
		RunPause:  {RunRunning},
		RunResume: {RunPaused, RunHalted, RunFailed},
		RunCancel: {RunRunning, RunPaused, RunHalted},
	}[action]
	if from == nil {
		return MigrationRun{}, catalog.Errorf(catalog.CodeInvalid, "unknown run action %q", action)
	}
	var run MigrationRun
	err := s.db.InTx(ctx, func(tx pgx.Tx) error {
		var state RunState
		if err := tx.QueryRow(ctx, `SELECT state FROM migration_runs WHERE id = $1 FOR UPDATE`, id).Scan(&state); err != nil {
			return catalog.Classify(err, runSubject(id))
		}
		ok := false
		for _, st := range from {
			ok = ok || st == state
		}
		if !ok {
			names := make([]string, len(from))
			for i, st := range from {
				names[i] = string(st)
			}
			return catalog.Errorf(catalog.CodeConflict, "run %d is %s; %s needs it to be %s", id, state, action, joinStates(names))
		}
		if action == RunResume && state == RunFailed {
			// A finished run becomes open again: only if no other is.
			if open, err := openRun(ctx, tx); err != nil {
				return err
			} else if open != nil {
				return catalog.Errorf(catalog.CodeConflict, "run %d is %s: cancel it before resuming run %d", open.ID, open.State, id)
			}
		}
		var err error
		switch action {
		case RunPause:
			_, err = tx.Exec(ctx, `UPDATE migration_runs SET state = 'paused', reason = $2, updated_at = now() WHERE id = $1`, id, "paused by "+actor)
		case RunCancel:
			if _, err = tx.Exec(ctx, `UPDATE migration_runs SET state = 'cancelled', reason = $2, finished_at = now(), updated_at = now() WHERE id = $1`, id, "cancelled by "+actor); err == nil {
				_, err = tx.Exec(ctx, `UPDATE migration_run_tenants SET state = 'skipped', note = 'the run was cancelled', lease_owner = NULL, lease_until = NULL
					WHERE run_id = $1 AND state = 'pending'`, id)
			}
		case RunResume:
			_, err = tx.Exec(ctx, `UPDATE migration_runs SET state = 'running', reason = '', finished_at = NULL, generation = generation + 1,
				heartbeat_at = now(), updated_at = now() WHERE id = $1`, id)
			if isUniqueViolation(err) {
				return catalog.Errorf(catalog.CodeConflict, "another run was opened meanwhile: cancel it before resuming run %d", id)
			}
			if err == nil {
				_, err = tx.Exec(ctx, `UPDATE migration_run_tenants SET state = 'pending', note = 'retried after: ' || error, error = '',
					not_before = NULL, finished_at = NULL WHERE run_id = $1 AND state = 'failed'`, id)
			}
		}
		if err != nil {
			return catalog.Classify(err, runSubject(id))
		}
		if run, err = getRun(ctx, tx, id); err != nil {
			return err
		}
		if err := catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: actor, Action: "migration_run." + pastTense(action), Subject: runSubject(id),
			FromState: string(state), ToState: string(run.State)}); err != nil {
			return err
		}
		if action == RunResume && enqueue != nil {
			if slots := min(run.Concurrency, run.Counts.Pending+run.Counts.Running); slots > 0 {
				return enqueue(ctx, tx, run, slots)
			}
		}
		return nil
	})
	return run, err
}

func pastTense(a RunAction) string {
	switch a {
	case RunPause:
		return "paused"
	case RunResume:
		return "resumed"
	}
	return "cancelled"
}

// ClaimOutcome is what a worker's claim came to.
type ClaimOutcome int

const (
	// ClaimGot: the worker holds a tenant; migrate it, then FinishRunTenant.
	ClaimGot ClaimOutcome = iota
	// ClaimWait: nothing to take now (limits, the canary wave, retries not
	// due, tenants still provisioning); ask again shortly.
	ClaimWait
	// ClaimStop: the run is not running, or the worker's generation is old.
	ClaimStop
	// ClaimFinished: every tenant was tried; the run is now done or failed.
	ClaimFinished
)

// ClaimRequest is a worker asking for a tenant of a run.
type ClaimRequest struct {
	RunID      int64
	Generation int
	Worker     string        // the process, for operators
	Lease      time.Duration // how long the claim lives without a heartbeat
	// WaitForProvisioning keeps the run from finishing while tenants are
	// still provisioning, so that those created during it join it (needed
	// when new tenants are not created at the run's target).
	WaitForProvisioning bool
}

// ClaimRunTenant takes the next tenant of a run that the limits allow: the
// run must be running and of the worker's generation; while any canary is
// not done, only canaries are taken; at most concurrency tenants run at once,
// and per_server on one server. A tenant whose worker's lease ran out is
// taken again. Claims of a run are serialized on its row, so the limits hold
// across any number of processes. When nothing is left, the run is finished
// (done, or failed when some tenants failed), after taking in the tenants
// that appeared while it ran when it covers all tenants.
func (s *store) ClaimRunTenant(ctx context.Context, req ClaimRequest) (RunTenant, ClaimOutcome, error) {
	// One round trip, one implicit transaction: the first statement locks
	// the run's row (and marks it attended), the second, with a snapshot
	// taken once the lock is held, picks and claims. The lock is held for
	// the time the server takes to run them, not for network round trips:
	// with dozens of workers this is what keeps claims from queueing.
	batch := &pgx.Batch{}
	batch.Queue(`UPDATE migration_runs SET heartbeat_at = now() WHERE id = $1 AND state = 'running' AND generation = $2`, req.RunID, req.Generation)
	batch.Queue(claimSQL, req.RunID, req.Generation, req.Lease.Seconds(), req.Worker)
	br := s.db.Pool().SendBatch(ctx, batch)
	var (
		running, unsettled bool
		claimed            *string
	)
	_, err := br.Exec()
	if err == nil {
		err = br.QueryRow().Scan(&running, &unsettled, &claimed)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return RunTenant{}, ClaimWait, catalog.Classify(err, runSubject(req.RunID))
	}
	switch {
	case !running:
		return RunTenant{}, ClaimStop, nil
	case claimed != nil:
		rt, err := scanRunTenant(s.db.Pool().QueryRow(ctx, `SELECT `+runTenantColumns+runTenantFrom+`WHERE rt.run_id = $1 AND rt.tenant_id = $2`, req.RunID, *claimed))
		if err != nil {
			return RunTenant{}, ClaimWait, catalog.Classify(err, runSubject(req.RunID))
		}
		return rt, ClaimGot, nil
	case unsettled:
		return RunTenant{}, ClaimWait, nil
	}
	// Every tenant settled: finish the run, or take in late ones.
	outcome := ClaimWait
	err = s.db.InTx(ctx, func(tx pgx.Tx) error {
		var state RunState
		var generation int
		var target int64
		var allTenants, unsettled bool
		var createdAt time.Time
		err := tx.QueryRow(ctx, `SELECT state, generation, target_version, all_tenants, created_at,
				EXISTS (SELECT 1 FROM migration_run_tenants WHERE run_id = $1 AND state IN ('pending', 'running'))
			FROM migration_runs WHERE id = $1 FOR UPDATE`, req.RunID).Scan(&state, &generation, &target, &allTenants, &createdAt, &unsettled)
		if err != nil {
			return catalog.Classify(err, runSubject(req.RunID))
		}
		switch {
		case state != RunRunning || generation != req.Generation:
			outcome = ClaimStop
			return nil
		case unsettled:
			return nil
		}
		return s.finishRunTx(ctx, tx, req, target, allTenants, createdAt, &outcome)
	})
	return RunTenant{}, outcome, err
}

// claimSQL picks the next tenant the run's limits allow and claims it. It
// answers whether the run is running (for this generation), whether any
// tenant is not settled yet, and the claimed tenant, if any.
const claimSQL = `
WITH run AS (
	SELECT concurrency, per_server FROM migration_runs WHERE id = $1 AND state = 'running' AND generation = $2
), live AS (
	SELECT server_id FROM migration_run_tenants WHERE run_id = $1 AND state = 'running' AND lease_until >= now()
), busy AS (
	SELECT server_id, count(*) AS n FROM live GROUP BY server_id
), gate AS (
	-- a failed canary halts the run: only pending and running ones hold the others back
	SELECT EXISTS (SELECT 1 FROM migration_run_tenants WHERE run_id = $1 AND canary AND state IN ('pending', 'running')) AS canaries_only
), pick AS MATERIALIZED (
	SELECT rt.tenant_id
	FROM migration_run_tenants rt CROSS JOIN run CROSS JOIN gate LEFT JOIN busy b ON b.server_id = rt.server_id
	WHERE rt.run_id = $1
	  AND ((rt.state = 'pending' AND (rt.not_before IS NULL OR rt.not_before <= now()))
	       OR (rt.state = 'running' AND rt.lease_until < now()))
	  AND (NOT gate.canaries_only OR rt.canary)
	  AND coalesce(b.n, 0) < run.per_server
	  AND (SELECT count(*) FROM live) < run.concurrency
	ORDER BY rt.canary DESC, rt.position
	LIMIT 1
), claimed AS (
	UPDATE migration_run_tenants rt SET
		note = CASE WHEN rt.state = 'running' THEN 'taken over from ' || rt.worker || ', whose lease ran out' ELSE rt.note END,
		state = 'running', lease_owner = gen_random_uuid(), lease_until = now() + make_interval(secs => $3),
		worker = $4, attempts = rt.attempts + 1, not_before = NULL, started_at = now(), finished_at = NULL
	WHERE rt.run_id = $1 AND rt.tenant_id = (SELECT tenant_id FROM pick)
	  -- again, for a row that its late owner finished meanwhile
	  AND (rt.state = 'pending' OR (rt.state = 'running' AND rt.lease_until < now()))
	RETURNING rt.tenant_id
)
SELECT EXISTS (SELECT 1 FROM run),
       EXISTS (SELECT 1 FROM migration_run_tenants WHERE run_id = $1 AND state IN ('pending', 'running')),
       (SELECT tenant_id::text FROM claimed)`

// finishRunTx is the end of a run whose rows are all settled: tenants that
// appeared while it ran join it (when it covers all tenants), else it is done.
func (s *store) finishRunTx(ctx context.Context, tx pgx.Tx, req ClaimRequest, target int64, allTenants bool, createdAt time.Time, outcome *ClaimOutcome) error {
	if allTenants {
		tag, err := tx.Exec(ctx, `
			INSERT INTO migration_run_tenants (run_id, tenant_id, server_id, position, from_version, to_version, note)
			SELECT $1, t.id, t.server_id, (SELECT coalesce(max(position), 0) FROM migration_run_tenants WHERE run_id = $1)
			       + row_number() OVER (ORDER BY t.created_at, t.id), t.schema_version, $2, 'joined while the run was going'
			FROM tenants t
			WHERE t.state IN ('active', 'suspended') AND t.server_id IS NOT NULL
			  AND (t.schema_version <> $2 OR t.schema_dirty)
			  AND NOT EXISTS (SELECT 1 FROM migration_run_tenants x WHERE x.run_id = $1 AND x.tenant_id = t.id)`, req.RunID, target)
		if err != nil {
			return catalog.Classify(err, runSubject(req.RunID))
		}
		if tag.RowsAffected() > 0 {
			return nil // ClaimWait: the next claim takes them
		}
		if req.WaitForProvisioning {
			var provisioning bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM tenants WHERE state = 'provisioning' AND created_at >= $1)`, createdAt).Scan(&provisioning); err != nil {
				return catalog.Classify(err, "tenants")
			}
			if provisioning {
				return nil
			}
		}
	}
	var failed int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM migration_run_tenants WHERE run_id = $1 AND state = 'failed'`, req.RunID).Scan(&failed); err != nil {
		return catalog.Classify(err, runSubject(req.RunID))
	}
	final, reason := RunDone, ""
	if failed > 0 {
		final, reason = RunFailed, fmt.Sprintf("%s failed (max_failures allowed it); resume retries them", tenantsN(failed))
	}
	if _, err := tx.Exec(ctx, `UPDATE migration_runs SET state = $2, reason = $3, finished_at = now(), updated_at = now() WHERE id = $1`,
		req.RunID, final, reason); err != nil {
		return catalog.Classify(err, runSubject(req.RunID))
	}
	*outcome = ClaimFinished
	return catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: "provisioner", Action: "migration_run." + string(final), Subject: runSubject(req.RunID),
		FromState: string(RunRunning), ToState: string(final), Reason: reason})
}

// HeartbeatRunTenant extends a claim and marks the run as attended. It
// reports false when the claim is no longer the caller's.
func (s *store) HeartbeatRunTenant(ctx context.Context, runID int64, tenantID, owner string, lease time.Duration) (bool, error) {
	tag, err := s.db.Pool().Exec(ctx, `
		WITH run AS (UPDATE migration_runs SET heartbeat_at = now() WHERE id = $1)
		UPDATE migration_run_tenants SET lease_until = now() + make_interval(secs => $4)
		WHERE run_id = $1 AND tenant_id = $2 AND lease_owner = $3::uuid AND state = 'running'`, runID, tenantID, owner, lease.Seconds())
	if err != nil {
		return false, catalog.Classify(err, runSubject(runID))
	}
	return tag.RowsAffected() == 1, nil
}

// RunTenantResult is how a worker's attempt at a tenant ended.
type RunTenantResult struct {
	RunID    int64
	TenantID string
	Owner    string         // the claim's LeaseOwner
	State    RunTenantState // done, failed or skipped; pending with RetryAfter
	// FromVersion is the database's version before the attempt, when read.
	FromVersion *int64
	// Version and Dirty are where the database is now, when known; they are
	// copied to the tenant's catalog record.
	Version *int64
	Dirty   bool
	Error   string
	Note    string
	// RetryAfter, with State pending, puts the tenant back to be tried again
	// (a transient failure: a lock held elsewhere).
	RetryAfter time.Duration
}

// FinishRunTenant records an attempt's result and copies the database's
// version to the tenant's record. A failure halts the run when it is a
// canary's or when the failures are now more than max_failures. It reports
// halted, and stale when the claim had passed to another worker (then
// nothing is recorded).
func (s *store) FinishRunTenant(ctx context.Context, res RunTenantResult) (halted, stale bool, err error) {
	var notBefore, finishedAt *time.Time
	if res.State == RunTenantPending {
		nb := time.Now().Add(res.RetryAfter)
		notBefore = &nb
	} else {
		now := time.Now()
		finishedAt = &now
	}
	args := []any{res.RunID, res.TenantID, res.Owner, res.State, res.FromVersion, res.Version, res.Dirty, res.Error, res.Note, notBefore, finishedAt}
	if res.State != RunTenantFailed {
		// No decision rests on it: no need to queue behind the run's lock.
		var n int
		err := s.db.Pool().QueryRow(ctx, finishSQL, args...).Scan(&n)
		return false, n == 0, catalog.Classify(err, runSubject(res.RunID))
	}
	err = s.db.InTx(ctx, func(tx pgx.Tx) error {
		var state RunState
		var maxFailures int
		if err := tx.QueryRow(ctx, `SELECT state, max_failures FROM migration_runs WHERE id = $1 FOR UPDATE`, res.RunID).Scan(&state, &maxFailures); err != nil {
			return catalog.Classify(err, runSubject(res.RunID))
		}
		var n int
		if err := tx.QueryRow(ctx, finishSQL, args...).Scan(&n); err != nil {
			return catalog.Classify(err, runSubject(res.RunID))
		}
		if n == 0 {
			stale = true
			return nil
		}
		if state != RunRunning && state != RunPaused {
			return nil
		}
		var canary bool
		var slug string
		if err := tx.QueryRow(ctx, `SELECT rt.canary, t.slug FROM migration_run_tenants rt JOIN tenants t ON t.id = rt.tenant_id
			WHERE rt.run_id = $1 AND rt.tenant_id = $2`, res.RunID, res.TenantID).Scan(&canary, &slug); err != nil {
			return catalog.Classify(err, runSubject(res.RunID))
		}
		reason := ""
		if canary {
			reason = fmt.Sprintf("canary tenant %s failed: %s", slug, res.Error)
		} else {
			var failed int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM migration_run_tenants WHERE run_id = $1 AND state = 'failed'`, res.RunID).Scan(&failed); err != nil {
				return catalog.Classify(err, runSubject(res.RunID))
			}
			if failed <= maxFailures {
				return nil
			}
			reason = fmt.Sprintf("%s failed, more than max_failures (%d)", tenantsN(failed), maxFailures)
		}
		if _, err := tx.Exec(ctx, `UPDATE migration_runs SET state = 'halted', reason = $2, updated_at = now() WHERE id = $1`, res.RunID, reason); err != nil {
			return catalog.Classify(err, runSubject(res.RunID))
		}
		halted = true
		return catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: "provisioner", Action: "migration_run.halted", Subject: runSubject(res.RunID),
			FromState: string(state), ToState: string(RunHalted), Reason: reason})
	})
	return halted, stale, err
}

// finishSQL records a claimed tenant's result, only for the claim's owner,
// and copies the database's version to the tenant's record. It answers how
// many rows it recorded (0: the claim had passed to another worker).
const finishSQL = `
WITH done AS (
	UPDATE migration_run_tenants SET state = $4, from_version = coalesce($5, from_version), version = coalesce($6, version),
		dirty = $7, error = $8, note = coalesce(nullif($9, ''), note), not_before = $10, finished_at = $11,
		lease_owner = NULL, lease_until = NULL
	WHERE run_id = $1 AND tenant_id = $2 AND lease_owner = $3::uuid AND state = 'running'
	RETURNING tenant_id
), tenant AS (
	UPDATE tenants SET schema_version = $6, schema_dirty = $7, updated_at = now()
	WHERE id IN (SELECT tenant_id FROM done) AND $6::bigint IS NOT NULL
)
SELECT count(*) FROM done`

// UnattendedRuns returns the running runs of a tenant schema that no worker
// has shown a sign of life in for longer than after: their workers' process
// died, and ReviveMigrationRun should give them new ones.
func (s *store) UnattendedRuns(ctx context.Context, schemaHash string, after time.Duration) ([]int64, error) {
	rows, err := s.db.Pool().Query(ctx, `SELECT id FROM migration_runs
		WHERE state = 'running' AND schema_hash = $1 AND heartbeat_at < now() - make_interval(secs => $2)`, schemaHash, after.Seconds())
	if err != nil {
		return nil, catalog.Classify(err, "migration runs")
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	return ids, catalog.Classify(err, "migration runs")
}

// ReviveMigrationRun gives an unattended run a new generation of workers
// (through enqueue, in the same transaction) if it is still unattended: of
// several processes that notice, one revives it. It reports whether it did.
func (s *store) ReviveMigrationRun(ctx context.Context, id int64, after time.Duration, enqueue RunEnqueue) (bool, error) {
	revived := false
	err := s.db.InTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE migration_runs SET generation = generation + 1, heartbeat_at = now(), updated_at = now()
			WHERE id = $1 AND state = 'running' AND heartbeat_at < now() - make_interval(secs => $2)`, id, after.Seconds())
		if err != nil {
			return catalog.Classify(err, runSubject(id))
		}
		if tag.RowsAffected() == 0 {
			return nil
		}
		run, err := getRun(ctx, tx, id)
		if err != nil {
			return err
		}
		revived = true
		return enqueue(ctx, tx, run, max(1, min(run.Concurrency, run.Counts.Pending+run.Counts.Running)))
	})
	return revived, err
}

// TenantRunning returns the open run in which the tenant's database is being
// migrated right now, or 0.
func (s *store) TenantRunning(ctx context.Context, tenantID string) (int64, error) {
	var id int64
	err := s.db.Pool().QueryRow(ctx, `SELECT rt.run_id FROM migration_run_tenants rt
		WHERE rt.tenant_id = $1 AND rt.state = 'running' AND rt.lease_until >= now() LIMIT 1`, tenantID).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return id, catalog.Classify(err, "migration runs")
}

func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

func tenantsN(n int) string {
	if n == 1 {
		return "1 tenant"
	}
	return strconv.Itoa(n) + " tenants"
}

func joinStates(states []string) string {
	if len(states) == 1 {
		return states[0]
	}
	return strings.Join(states[:len(states)-1], ", ") + " or " + states[len(states)-1]
}
