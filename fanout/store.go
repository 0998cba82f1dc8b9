package fanout

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantplane/tenantplane/catalog"
)

// store is fan-out's tables in the catalog database, migration_runs and
// migration_run_tenants: flat reads and writes, each on the querier it is
// given (the pool, or a transaction of the workflow's, machine.go), which
// decides nothing. The claim is one statement, since the limits it keeps
// hold only if it is.
type store struct {
	db *catalog.Store
}

func newStore(db *catalog.Store) *store { return &store{db: db} }

// RunState is where a migration run is (machine.go has the transitions).
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

// NewMigrationRun is what starting a run takes. StartRun fills in the
// defaults and createRun checks the tenants.
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

// openRun returns the open run (running, paused or halted), or nil.
func (s *store) openRun(ctx context.Context, q catalog.Querier) (*MigrationRun, error) {
	r, err := scanRun(q.QueryRow(ctx, `SELECT `+runColumns+` FROM migration_runs r WHERE r.state IN ('running', 'paused', 'halted')`))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, catalog.Classify(err, "migration run")
	}
	return &r, nil
}

// getRun returns a run with its counts.
func (s *store) getRun(ctx context.Context, q catalog.Querier, id int64) (MigrationRun, error) {
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
	return s.getRun(ctx, s.db.Pool(), id)
}

// ListMigrationRuns returns a page of runs, newest first: at most limit
// (catalog.CheckLimit's bounds) after cursor, and the cursor of the next page ("" on
// the last).
func (s *store) ListMigrationRuns(ctx context.Context, limit int, cursor string) ([]MigrationRun, string, error) {
	ids, next, err := catalog.IDPage(ctx, s.db.Pool(), limit, cursor, "migration runs", `SELECT r.id FROM migration_runs r WHERE r.id < $1 ORDER BY r.id DESC LIMIT $2`,
		func(r pgx.Row) (id int64, err error) { err = r.Scan(&id); return id, err }, func(id int64) int64 { return id })
	if err != nil {
		return nil, "", err
	}
	runs := make([]MigrationRun, 0, len(ids))
	for _, id := range ids {
		r, err := s.getRun(ctx, s.db.Pool(), id)
		if err != nil {
			return nil, "", err
		}
		runs = append(runs, r)
	}
	return runs, next, nil
}

// A run's row is a tenant's database, or a pool database (pool_id set, its
// name in place of a slug, its target_id in tenant_id), which holds the rows
// of many pooled tenants and is migrated once for them all.
const runTenantColumns = `rt.run_id, rt.tenant_id, coalesce(t.slug, 'tp_pool_' || p.id), coalesce(t.state, CASE WHEN p.state = 'active' THEN 'active' ELSE p.state END),
	rt.server_id, s.name, coalesce(t.db_name, 'tp_pool_' || p.id, ''), rt.canary,
	rt.state, rt.from_version, rt.to_version, rt.version, rt.dirty, rt.attempts, rt.error, rt.note, rt.worker,
	rt.started_at, rt.finished_at, coalesce(rt.lease_owner::text, '')`

const runTenantFrom = ` FROM migration_run_tenants rt LEFT JOIN tenants t ON t.id = rt.tenant_id AND rt.pool_id IS NULL
	LEFT JOIN pool_databases p ON p.id = rt.pool_id JOIN servers s ON s.id = rt.server_id `

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

// claimed is what one claim statement answered.
type claimed struct {
	running   bool   // the run is running, for the worker's generation
	unsettled bool   // some tenant is pending or running
	claimed   string // the tenant claimed, if any
}

// claim picks the next tenant the run's limits allow and claims it for the
// worker (claimSQL). One round trip, one implicit transaction: the first
// statement locks the run's row (and marks it attended), the second, with a
// snapshot taken once the lock is held, picks and claims. The lock is held
// for the time the server takes to run them, not for network round trips:
// with dozens of workers this is what keeps claims from queueing.
func (s *store) claim(ctx context.Context, req ClaimRequest) (claimed, error) {
	batch := &pgx.Batch{}
	batch.Queue(`UPDATE migration_runs SET heartbeat_at = now() WHERE id = $1 AND state = 'running' AND generation = $2`, req.RunID, req.Generation)
	batch.Queue(claimSQL, req.RunID, req.Generation, req.Lease.Seconds(), req.Worker)
	br := s.db.Pool().SendBatch(ctx, batch)
	var c claimed
	var tenant *string
	_, err := br.Exec()
	if err == nil {
		err = br.QueryRow().Scan(&c.running, &c.unsettled, &tenant)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return claimed{}, catalog.Classify(err, runSubject(req.RunID))
	}
	if tenant != nil {
		c.claimed = *tenant
	}
	return c, nil
}

// getRunTenant returns one tenant of a run.
func (s *store) getRunTenant(ctx context.Context, q catalog.Querier, runID int64, tenantID string) (RunTenant, error) {
	rt, err := scanRunTenant(q.QueryRow(ctx, `SELECT `+runTenantColumns+runTenantFrom+`WHERE rt.run_id = $1 AND rt.tenant_id = $2`, runID, tenantID))
	if err != nil {
		return RunTenant{}, catalog.Classify(err, runSubject(runID))
	}
	return rt, nil
}

// claimSQL picks the next tenant the run's limits allow and claims it:
// a pending one, one whose lease ran out, or one claimed by the same worker
// before (whose claim's answer was lost: ClaimRequest.Worker). It
// answers whether the run is running (for this generation), whether any
// tenant is not settled yet, and the claimed tenant, if any.
const claimSQL = `
WITH run AS (
	SELECT concurrency, per_server FROM migration_runs WHERE id = $1 AND state = 'running' AND generation = $2
), live AS (
	-- the claimer's own row is not live: it claims only when it migrates none
	SELECT server_id FROM migration_run_tenants WHERE run_id = $1 AND state = 'running' AND lease_until >= now() AND worker <> $4
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
	       OR (rt.state = 'running' AND (rt.lease_until < now() OR rt.worker = $4)))
	  AND (NOT gate.canaries_only OR rt.canary)
	  AND coalesce(b.n, 0) < run.per_server
	  AND (SELECT count(*) FROM live) < run.concurrency
	ORDER BY rt.canary DESC, rt.position
	LIMIT 1
), claimed AS (
	UPDATE migration_run_tenants rt SET
		note = CASE WHEN rt.state = 'running' AND rt.worker = $4 THEN 'claimed again by its worker, who never got the answer to its claim'
		            WHEN rt.state = 'running' THEN 'taken over from ' || rt.worker || ', whose lease ran out' ELSE rt.note END,
		state = 'running', lease_owner = gen_random_uuid(), lease_until = now() + make_interval(secs => $3),
		worker = $4, attempts = rt.attempts + 1, not_before = NULL, started_at = now(), finished_at = NULL
	WHERE rt.run_id = $1 AND rt.tenant_id = (SELECT tenant_id FROM pick)
	  -- again, for a row that its late owner finished meanwhile
	  AND (rt.state = 'pending' OR (rt.state = 'running' AND (rt.lease_until < now() OR rt.worker = $4)))
	RETURNING rt.tenant_id
)
SELECT EXISTS (SELECT 1 FROM run),
       EXISTS (SELECT 1 FROM migration_run_tenants WHERE run_id = $1 AND state IN ('pending', 'running')),
       (SELECT tenant_id::text FROM claimed)`

// settling is a run whose claim found every tenant settled, locked.
type settling struct {
	state      RunState
	generation int
	target     int64
	allTenants bool
	createdAt  time.Time
	unsettled  bool // a tenant became pending or running meanwhile
}

// lockSettling locks a run's row (FOR UPDATE) and reads what finishing it needs.
func (s *store) lockSettling(ctx context.Context, tx pgx.Tx, id int64) (settling, error) {
	var r settling
	err := tx.QueryRow(ctx, `SELECT state, generation, target_version, all_tenants, created_at,
			EXISTS (SELECT 1 FROM migration_run_tenants WHERE run_id = $1 AND state IN ('pending', 'running'))
		FROM migration_runs WHERE id = $1 FOR UPDATE`, id).Scan(&r.state, &r.generation, &r.target, &r.allTenants, &r.createdAt, &r.unsettled)
	if err != nil {
		return settling{}, catalog.Classify(err, runSubject(id))
	}
	return r, nil
}

// joinLateTenants adds to a run the active and suspended tenants it does not
// hold whose schema is not at target (or is dirty), after its last
// position, and returns how many joined.
func (s *store) joinLateTenants(ctx context.Context, q catalog.Querier, id, target int64) (int64, error) {
	tag, err := q.Exec(ctx, `
		INSERT INTO migration_run_tenants (run_id, tenant_id, pool_id, server_id, position, from_version, to_version, note)
		SELECT $1, t.id, t.pool_id, t.server_id, (SELECT coalesce(max(position), 0) FROM migration_run_tenants WHERE run_id = $1)
		       + row_number() OVER (ORDER BY t.created_at, t.id), t.schema_version, $2, 'joined while the run was going'
		FROM (`+runTargets+`) t
		WHERE (t.schema_version <> $2 OR t.schema_dirty)
		  AND NOT EXISTS (SELECT 1 FROM migration_run_tenants x WHERE x.run_id = $1 AND x.tenant_id = t.id)`, id, target)
	if err != nil {
		return 0, catalog.Classify(err, runSubject(id))
	}
	return tag.RowsAffected(), nil
}

// provisioningSince reports whether a tenant created since then is still provisioning.
func (s *store) provisioningSince(ctx context.Context, q catalog.Querier, since time.Time) (bool, error) {
	var provisioning bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM tenants WHERE state = 'provisioning' AND created_at >= $1)`, since).Scan(&provisioning); err != nil {
		return false, catalog.Classify(err, "tenants")
	}
	return provisioning, nil
}

// countFailed counts a run's failed tenants.
func (s *store) countFailed(ctx context.Context, q catalog.Querier, id int64) (int, error) {
	var failed int
	if err := q.QueryRow(ctx, `SELECT count(*) FROM migration_run_tenants WHERE run_id = $1 AND state = 'failed'`, id).Scan(&failed); err != nil {
		return 0, catalog.Classify(err, runSubject(id))
	}
	return failed, nil
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

// recordResult records an attempt's result, only for the claim's owner,
// and copies the database's version to the tenant's record (finishSQL). It
// reports false when the claim had passed to another worker: then nothing
// is recorded.
func (s *store) recordResult(ctx context.Context, q catalog.Querier, res RunTenantResult) (bool, error) {
	var notBefore, finishedAt *time.Time
	if res.State == RunTenantPending {
		nb := time.Now().Add(res.RetryAfter)
		notBefore = &nb
	} else {
		now := time.Now()
		finishedAt = &now
	}
	var n int
	err := q.QueryRow(ctx, finishSQL, res.RunID, res.TenantID, res.Owner, res.State, res.FromVersion, res.Version, res.Dirty,
		res.Error, res.Note, notBefore, finishedAt).Scan(&n)
	if err != nil {
		return false, catalog.Classify(err, runSubject(res.RunID))
	}
	return n > 0, nil
}

// lockRunLimits locks a run's row (FOR UPDATE) and returns its state and max_failures.
func (s *store) lockRunLimits(ctx context.Context, tx pgx.Tx, id int64) (RunState, int, error) {
	var state RunState
	var maxFailures int
	if err := tx.QueryRow(ctx, `SELECT state, max_failures FROM migration_runs WHERE id = $1 FOR UPDATE`, id).Scan(&state, &maxFailures); err != nil {
		return "", 0, catalog.Classify(err, runSubject(id))
	}
	return state, maxFailures, nil
}

// finishSQL records a claimed tenant's result, only for the claim's owner,
// and copies the database's version to the tenant's record. It answers how
// many rows it recorded (0: the claim had passed to another worker).
const finishSQL = `
WITH done AS (
	UPDATE migration_run_tenants SET state = $4, from_version = coalesce($5, from_version), version = coalesce($6, version),
		dirty = $7, error = $8, not_before = $10, finished_at = $11,
		-- A takeover's note stays, and the outcome is added to it: "taken over
		-- from …, whose lease ran out; already at version 2".
		note = CASE WHEN $9 = '' THEN note WHEN note LIKE 'taken over from %' THEN note || '; ' || $9 ELSE $9 END,
		lease_owner = NULL, lease_until = NULL
	WHERE run_id = $1 AND tenant_id = $2 AND lease_owner = $3::uuid AND state = 'running'
	RETURNING tenant_id
), tenant AS (
	UPDATE tenants SET schema_version = $6, schema_dirty = $7, updated_at = now()
	WHERE id IN (SELECT tenant_id FROM done) AND $6::bigint IS NOT NULL
), pool AS (
	UPDATE pool_databases SET schema_version = $6, schema_dirty = $7, updated_at = now()
	WHERE target_id IN (SELECT tenant_id FROM done) AND $6::bigint IS NOT NULL
	RETURNING id
), pooled AS (
	-- A pooled tenant's schema is its pool database's.
	UPDATE tenants SET schema_version = $6, schema_dirty = $7, updated_at = now()
	WHERE pool_id IN (SELECT id FROM pool) AND state <> 'deleted'
)
SELECT count(*) FROM done`

// UnattendedRuns returns the running runs of a tenant schema that no worker
// has shown a sign of life in for longer than after: their workers' process
// died, and reviveRun should give them new ones.
func (s *store) UnattendedRuns(ctx context.Context, schemaHash string, after time.Duration) ([]int64, error) {
	return s.unattendedRuns(ctx, "=", schemaHash, after)
}

// OtherUnattendedRuns is UnattendedRuns of the runs of every other tenant schema.
func (s *store) OtherUnattendedRuns(ctx context.Context, schemaHash string, after time.Duration) ([]int64, error) {
	return s.unattendedRuns(ctx, "<>", schemaHash, after)
}

func (s *store) unattendedRuns(ctx context.Context, op, schemaHash string, after time.Duration) ([]int64, error) {
	rows, err := s.db.Pool().Query(ctx, `SELECT id FROM migration_runs
		WHERE state = 'running' AND schema_hash `+op+` $1 AND heartbeat_at < now() - make_interval(secs => $2)`, schemaHash, after.Seconds())
	if err != nil {
		return nil, catalog.Classify(err, "migration runs")
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	return ids, catalog.Classify(err, "migration runs")
}

// bumpUnattended moves a running run that no worker has touched for
// longer than after to its next generation of workers, and reports whether
// it did (false: attended meanwhile, or no longer running).
func (s *store) bumpUnattended(ctx context.Context, q catalog.Querier, id int64, after time.Duration) (bool, error) {
	tag, err := q.Exec(ctx, `UPDATE migration_runs SET generation = generation + 1, heartbeat_at = now(), updated_at = now()
		WHERE id = $1 AND state = 'running' AND heartbeat_at < now() - make_interval(secs => $2)`, id, after.Seconds())
	if err != nil {
		return false, catalog.Classify(err, runSubject(id))
	}
	return tag.RowsAffected() == 1, nil
}

// failUnattended fails a running run that no worker has touched for longer
// than after, with the reason, and reports whether it did.
func (s *store) failUnattended(ctx context.Context, q catalog.Querier, id int64, after time.Duration, reason string) (bool, error) {
	tag, err := q.Exec(ctx, `UPDATE migration_runs SET state = 'failed', reason = $3, finished_at = now(), updated_at = now()
		WHERE id = $1 AND state = 'running' AND heartbeat_at < now() - make_interval(secs => $2)`, id, after.Seconds(), reason)
	if err != nil {
		return false, catalog.Classify(err, runSubject(id))
	}
	return tag.RowsAffected() == 1, nil
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

// insertRun records a new run, in state running, and returns its id.
// Another open run (the partial unique index) is a CodeConflict error.
func (s *store) insertRun(ctx context.Context, q catalog.Querier, nr NewMigrationRun, allTenants bool) (int64, error) {
	var id int64
	err := q.QueryRow(ctx, `
		INSERT INTO migration_runs (target_version, schema_hash, concurrency, per_server, canary, max_failures, all_tenants, actor)
		VALUES ($1, $2, $3, $4, 0, $5, $6, $7) RETURNING id`,
		nr.TargetVersion, nr.SchemaHash, nr.Concurrency, nr.PerServer, nr.MaxFailures, allTenants, nr.Actor).Scan(&id)
	if isUniqueViolation(err) {
		return 0, catalog.Errorf(catalog.CodeConflict, "another run was started meanwhile: resume it, or cancel it, before starting another")
	}
	if err != nil {
		return 0, catalog.Classify(err, "migration run")
	}
	return id, nil
}

// insertRunTenants gives a run one row per active and suspended tenant with
// a database (of slugs, or all when nil, pool databases included), ordered with the servers
// interleaved; the first canary of that order (-1: the first of each
// server) are the canary wave, whose size is recorded on the run.
func (s *store) insertRunTenants(ctx context.Context, q catalog.Querier, id int64, slugs []string, canary int, target int64) error {
	_, err := q.Exec(ctx, `
		INSERT INTO migration_run_tenants (run_id, tenant_id, pool_id, server_id, position, canary, from_version, to_version)
		SELECT $1, id, pool_id, server_id, pos, CASE WHEN $3 < 0 THEN rank = 1 ELSE pos <= $3 END, schema_version, $4
		FROM (
			SELECT id, pool_id, server_id, schema_version, rank, row_number() OVER (ORDER BY rank, server_id) AS pos
			FROM (
				SELECT t.id, t.pool_id, t.server_id, t.schema_version,
				       row_number() OVER (PARTITION BY t.server_id ORDER BY t.created_at, t.id) AS rank
				FROM (`+runTargets+`) t
				WHERE $2::text[] IS NULL OR (t.pool_id IS NULL AND t.slug = ANY($2))
			) ranked
		) ordered`, id, slugs, canary, target)
	if err != nil {
		return catalog.Classify(err, "migration run tenants")
	}
	if _, err := q.Exec(ctx, `UPDATE migration_runs SET canary = (SELECT count(*) FROM migration_run_tenants WHERE run_id = $1 AND canary) WHERE id = $1`, id); err != nil {
		return catalog.Classify(err, "migration run")
	}
	return nil
}

// runTargets are the databases a run migrates: every active and suspended
// tenant's own, and every active pool database (one target for all its
// pooled tenants), the latter with pool_id and its name as slug.
const runTargets = `
	SELECT t.id, NULL::bigint AS pool_id, t.server_id, t.schema_version, t.schema_dirty, t.created_at, t.slug
	FROM tenants t WHERE t.state IN ('active', 'suspended') AND t.server_id IS NOT NULL
	UNION ALL
	SELECT p.target_id, p.id, p.server_id, p.schema_version, p.schema_dirty, p.created_at, 'tp_pool_' || p.id
	FROM pool_databases p WHERE p.state = 'active'`

// placement is where a named tenant stands, for a run.
type placement struct {
	state  catalog.TenantState
	placed bool // it has a server
}

// tenantPlacements returns the state and placement of the tenants named.
func (s *store) tenantPlacements(ctx context.Context, q catalog.Querier, slugs []string) (map[string]placement, error) {
	rows, err := q.Query(ctx, `SELECT slug, state, server_id IS NOT NULL FROM tenants WHERE slug = ANY($1)`, slugs)
	if err != nil {
		return nil, catalog.Classify(err, "tenants")
	}
	defer rows.Close()
	found := map[string]placement{}
	for rows.Next() {
		var slug string
		var p placement
		if err := rows.Scan(&slug, &p.state, &p.placed); err != nil {
			return nil, catalog.Classify(err, "tenants")
		}
		found[slug] = p
	}
	if err := rows.Err(); err != nil {
		return nil, catalog.Classify(err, "tenants")
	}
	return found, nil
}

// lockRun locks a run's row (FOR UPDATE) and returns its state.
func (s *store) lockRun(ctx context.Context, tx pgx.Tx, id int64) (RunState, error) {
	var state RunState
	if err := tx.QueryRow(ctx, `SELECT state FROM migration_runs WHERE id = $1 FOR UPDATE`, id).Scan(&state); err != nil {
		return "", catalog.Classify(err, runSubject(id))
	}
	return state, nil
}

// setRunState moves an open run to state, with the reason.
func (s *store) setRunState(ctx context.Context, q catalog.Querier, id int64, state RunState, reason string) error {
	_, err := q.Exec(ctx, `UPDATE migration_runs SET state = $2, reason = $3, updated_at = now() WHERE id = $1`, id, state, reason)
	return catalog.Classify(err, runSubject(id))
}

// endRun moves a run to a final state (done, failed, cancelled), with the reason.
func (s *store) endRun(ctx context.Context, q catalog.Querier, id int64, state RunState, reason string) error {
	_, err := q.Exec(ctx, `UPDATE migration_runs SET state = $2, reason = $3, finished_at = now(), updated_at = now() WHERE id = $1`, id, state, reason)
	return catalog.Classify(err, runSubject(id))
}

// reopenRun makes a run running again, with a new generation of workers.
// Another open run (the partial unique index) is a CodeConflict error.
func (s *store) reopenRun(ctx context.Context, q catalog.Querier, id int64) error {
	_, err := q.Exec(ctx, `UPDATE migration_runs SET state = 'running', reason = '', finished_at = NULL, generation = generation + 1,
		heartbeat_at = now(), updated_at = now() WHERE id = $1`, id)
	if isUniqueViolation(err) {
		return catalog.Errorf(catalog.CodeConflict, "another run was opened meanwhile: cancel it before resuming run %d", id)
	}
	return catalog.Classify(err, runSubject(id))
}

// retryFailed puts a run's failed tenants back to pending, keeping their error as a note.
func (s *store) retryFailed(ctx context.Context, q catalog.Querier, id int64) error {
	_, err := q.Exec(ctx, `UPDATE migration_run_tenants SET state = 'pending', note = 'retried after: ' || error, error = '',
		not_before = NULL, finished_at = NULL WHERE run_id = $1 AND state = 'failed'`, id)
	return catalog.Classify(err, runSubject(id))
}

// skipPending marks a run's pending tenants skipped, with the note.
func (s *store) skipPending(ctx context.Context, q catalog.Querier, id int64, note string) error {
	_, err := q.Exec(ctx, `UPDATE migration_run_tenants SET state = 'skipped', note = $2, lease_owner = NULL, lease_until = NULL
		WHERE run_id = $1 AND state = 'pending'`, id, note)
	return catalog.Classify(err, runSubject(id))
}
