package mover

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/tenantplane/tenantplane/catalog"
)

// States of an evacuation (evacuations.state). It runs until every tenant
// has moved or failed (done, or failed when any did); paused starts no new
// move; cancelled starts no new move and ends once the moves in flight do
// (they finish: a move near its switch is not worth throwing away).
const (
	EvacuationRunning   = "running"
	EvacuationPaused    = "paused"
	EvacuationCancelled = "cancelled"
	EvacuationDone      = "done"
	EvacuationFailed    = "failed"
)

// Kinds of an evacuation (evacuations.kind).
const (
	KindEvacuate  = "evacuate"  // every tenant off one server, targets picked as moves start
	KindRebalance = "rebalance" // a rebalance plan's moves, targets fixed by the plan
)

// States of a tenant in an evacuation (evacuation_tenants.state).
const (
	EvacTenantPending = "pending"
	EvacTenantMoving  = "moving"
	EvacTenantMoved   = "moved"
	EvacTenantFailed  = "failed"
	EvacTenantSkipped = "skipped" // the evacuation was cancelled before its move started
)

// EvacuationSpec is what starting an evacuation (or carrying out a
// rebalance) takes. Zero fields take their defaults.
type EvacuationSpec struct {
	// Concurrency is the most moves under way at once. Default 4. The
	// mover's workers (Config.Workers, per process) bound it too.
	Concurrency int `json:"concurrency"`
	// PerServer is the most moves under way at once into one target
	// server. Default 2.
	PerServer int `json:"per_server"`
	// Mode is each move's mode ("online", "copy", or "": online when
	// possible, else that tenant fails with the reason).
	Mode string `json:"mode"`
	// MaxAttempts is how many moves of one tenant are tried before it is
	// reported failed: a move that aborts, or cannot start, is tried again
	// after a pause (evacRetryDelay times the attempts so far), each
	// attempt's error kept. Default 3, at most 10.
	MaxAttempts int `json:"max_attempts"`
}

func (sp *EvacuationSpec) check() error {
	if sp.Concurrency == 0 {
		sp.Concurrency = 4
	}
	if sp.PerServer == 0 {
		sp.PerServer = 2
	}
	if sp.MaxAttempts == 0 {
		sp.MaxAttempts = 3
	}
	if sp.MaxAttempts < 1 || sp.MaxAttempts > 10 {
		return catalog.Errorf(catalog.CodeInvalid, "max_attempts must be between 1 and 10")
	}
	if sp.Concurrency < 1 || sp.Concurrency > 64 || sp.PerServer < 1 || sp.PerServer > 64 {
		return catalog.Errorf(catalog.CodeInvalid, "concurrency and per_server must be between 1 and 64")
	}
	if sp.Mode != "" && sp.Mode != ModeOnline && sp.Mode != ModeCopy {
		return catalog.Errorf(catalog.CodeInvalid, "mode %q: use online, copy, or leave it out (online when possible)", sp.Mode)
	}
	return nil
}

// Evacuation is an evacuation or a rebalance as its ledger records it, with
// its counts and each tenant's outcome.
type Evacuation struct {
	ID          int64              `json:"id"`
	Kind        string             `json:"kind"`
	Server      string             `json:"server,omitempty"` // the evacuated server
	State       string             `json:"state"`
	Concurrency int                `json:"concurrency"`
	PerServer   int                `json:"per_server"`
	Mode        string             `json:"mode"`
	MaxAttempts int                `json:"max_attempts"`
	Total       int                `json:"total"`
	Pending     int                `json:"pending"`
	Moving      int                `json:"moving"`
	Moved       int                `json:"moved"`
	Failed      int                `json:"failed"`
	Skipped     int                `json:"skipped"`
	LastError   string             `json:"last_error"`
	Actor       string             `json:"actor"`
	CreatedAt   time.Time          `json:"created_at"`
	UpdatedAt   time.Time          `json:"updated_at"`
	FinishedAt  *time.Time         `json:"finished_at"`
	Tenants     []EvacuationTenant `json:"tenants,omitempty"` // absent in lists
}

// EvacuationTenant is one tenant of an evacuation.
type EvacuationTenant struct {
	Tenant string `json:"tenant"`
	From   string `json:"from"`
	To     string `json:"to,omitempty"` // the planned or picked target
	// ToPool is a pooled tenant's target pool database (its move a repool).
	ToPool string `json:"to_pool,omitempty"`
	Reason string `json:"reason,omitempty"`
	State  string `json:"state"`
	MoveID *int64 `json:"move_id"`
	Phase  string `json:"phase,omitempty"` // its move's
	Error  string `json:"error,omitempty"`
	// Attempts are its moves that failed, oldest first; RetryAt, when
	// its next try may start.
	Attempts []EvacuationAttempt `json:"attempts"`
	RetryAt  *time.Time          `json:"retry_at,omitempty"`
}

// EvacuationAttempt is a failed try at moving a tenant of an evacuation.
type EvacuationAttempt struct {
	MoveID *int64    `json:"move_id"` // nil when the move could not start
	Error  string    `json:"error"`
	At     time.Time `json:"at"`
}

// evacQueue is the River queue of evacuation jobs: apart from the moves'
// queue, so an evacuation's job never takes a slot its moves need.
const evacQueue = "tenantplane_evacuations"

// evacPoll is how often an evacuation's job looks at its moves.
const evacPoll = 200 * time.Millisecond

// evacRetryDelay is the pause before a tenant's next try, times the tries
// so far (Config.evacRetryDelay in the tests).
const evacRetryDelay = 2 * time.Second

// evacuateArgs is the durable job that drives an evacuation: it starts
// moves as slots free up and settles the finished ones, from the ledger
// and the moves table each time, so a restarted process (or another
// replica, once this one's client stops beating) carries on where it was.
type evacuateArgs struct {
	EvacuationID int64 `json:"evacuation_id" river:"unique"`
}

func (evacuateArgs) Kind() string { return "tenantplane.evacuation" }

func (evacuateArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: evacQueue, UniqueOpts: river.UniqueOpts{ByArgs: true}}
}

type evacuateWorker struct {
	river.WorkerDefaults[evacuateArgs]
	s *Service
}

// Timeout: an evacuation lasts as long as its moves.
func (w *evacuateWorker) Timeout(*river.Job[evacuateArgs]) time.Duration { return -1 }

func (w *evacuateWorker) Work(ctx context.Context, job *river.Job[evacuateArgs]) error {
	id := job.Args.EvacuationID
	for {
		done, err := w.s.evacStep(ctx, id)
		if err != nil {
			w.s.logger.WarnContext(ctx, "evacuation step failed; it will resume", "evacuation_id", id, "error", err)
			return err
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.s.stopping:
			// Handed over: this process or another takes it up again from
			// the ledger in a second.
			return river.JobSnooze(time.Second)
		case <-time.After(evacPoll):
		}
	}
}

// registerEvacuations adds the evacuation worker and queue to the registry.
func (s *Service) registerEvacuations() {
	river.AddWorker(s.jobs.Workers(), &evacuateWorker{s: s})
	s.jobs.AddQueue(evacQueue, 2)
}

func evacActor(id int64) string { return "evacuation:" + strconv.FormatInt(id, 10) }

// Evacuate moves every tenant off server: the server becomes evacuating
// (it takes no new tenants), and a job starts the moves, at most
// spec.Concurrency at once and spec.PerServer into one target, each to the
// active server with the most free capacity that has room (never past a
// target's capacity, counting the moves into it); a pooled tenant of one
// of its pool databases is repooled (StartRepool) into the active pool
// database with the most room on another active server. A tenant whose
// move fails is reported with its error; the others go on. The server ends
// empty when no tenant is left on it, its pool databases retired, draining
// otherwise. A server that is being evacuated already, or whose tenants
// the other servers (or their pool databases) have no room for, is a
// CodeConflict that says so.
func (s *Service) Evacuate(ctx context.Context, server string, spec EvacuationSpec, actor string) (Evacuation, error) {
	if err := spec.check(); err != nil {
		return Evacuation{}, err
	}
	var id int64
	err := s.store.InTx(ctx, func(tx pgx.Tx) error {
		var srvID int64
		var state string
		err := tx.QueryRow(ctx, `SELECT id, state FROM servers WHERE name = $1 FOR UPDATE`, server).Scan(&srvID, &state)
		if err != nil {
			return catalog.Classify(err, "server "+strconv.Quote(server))
		}
		var open int64
		err = tx.QueryRow(ctx, `SELECT id FROM evacuations WHERE server_id = $1 AND state IN ('running', 'paused')`, srvID).Scan(&open)
		if err == nil {
			return catalog.Errorf(catalog.CodeConflict, "server %s is being evacuated already (evacuation %d): follow, pause or cancel it", server, open)
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return catalog.Classify(err, "evacuation")
		}
		err = tx.QueryRow(ctx, `INSERT INTO evacuations (kind, server_id, concurrency, per_server, mode, actor, max_attempts)
			VALUES ('evacuate', $1, $2, $3, $4, $5, $6) RETURNING id`, srvID, spec.Concurrency, spec.PerServer, spec.Mode, actor, spec.MaxAttempts).Scan(&id)
		if err != nil {
			return catalog.Classify(err, "evacuation of server "+strconv.Quote(server))
		}
		if err := checkEvacuationRoom(ctx, tx, server, srvID); err != nil {
			return err
		}
		// Its tenants: those with a database on it, and the pooled tenants
		// of its pool databases (each moved to a pool database elsewhere).
		_, err = tx.Exec(ctx, `INSERT INTO evacuation_tenants (evacuation_id, tenant_id, position, from_server_id)
			SELECT $1, t.id, row_number() OVER (ORDER BY t.slug), $2 FROM tenants t LEFT JOIN pool_databases p ON p.id = t.pool_id
			WHERE coalesce(t.server_id, p.server_id) = $2 AND t.state <> 'deleted'`, id, srvID)
		if err != nil {
			return catalog.Classify(err, "evacuation tenants")
		}
		if _, err := tx.Exec(ctx, `UPDATE servers SET state = 'evacuating', updated_at = now() WHERE id = $1`, srvID); err != nil {
			return catalog.Classify(err, "server")
		}
		if err := catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: actor, Action: "server.evacuation_started", Subject: server,
			FromState: state, ToState: string(catalog.ServerEvacuating),
			Details: map[string]any{"evacuation_id": id, "concurrency": spec.Concurrency, "per_server": spec.PerServer, "mode": spec.Mode,
				"max_attempts": spec.MaxAttempts}}); err != nil {
			return err
		}
		// The job commits with the ledger: never one without the other.
		_, err = s.jobs.Client().InsertTx(ctx, tx, evacuateArgs{EvacuationID: id}, nil)
		return err
	})
	if err != nil {
		return Evacuation{}, err
	}
	s.logger.InfoContext(ctx, "evacuation started", "server", server, "evacuation_id", id)
	return s.GetEvacuation(ctx, id)
}

// GetEvacuation returns an evacuation (or a rebalance) with its tenants.
func (s *Service) GetEvacuation(ctx context.Context, id int64) (Evacuation, error) {
	var e Evacuation
	var server *string
	err := s.store.Pool().QueryRow(ctx, `SELECT e.id, e.kind, s.name, e.state, e.concurrency, e.per_server, e.mode, e.max_attempts, e.last_error, e.actor,
		e.created_at, e.updated_at, e.finished_at FROM evacuations e LEFT JOIN servers s ON s.id = e.server_id WHERE e.id = $1`, id).
		Scan(&e.ID, &e.Kind, &server, &e.State, &e.Concurrency, &e.PerServer, &e.Mode, &e.MaxAttempts, &e.LastError, &e.Actor, &e.CreatedAt, &e.UpdatedAt, &e.FinishedAt)
	if err != nil {
		return Evacuation{}, catalog.Classify(err, fmt.Sprintf("evacuation %d", id))
	}
	if server != nil {
		e.Server = *server
	}
	rows, err := s.store.Pool().Query(ctx, `SELECT t.slug, fs.name, coalesce(ms.name, ts.name, ''), et.reason, et.state, et.move_id,
		coalesce(m.phase, ''), et.error, et.attempts, et.retry_at, coalesce('tp_pool_' || m.to_pool_id, '')
		FROM evacuation_tenants et JOIN tenants t ON t.id = et.tenant_id JOIN servers fs ON fs.id = et.from_server_id
		LEFT JOIN servers ts ON ts.id = et.to_server_id LEFT JOIN moves m ON m.id = et.move_id LEFT JOIN servers ms ON ms.id = m.to_server_id
		WHERE et.evacuation_id = $1 ORDER BY et.position`, id)
	if err != nil {
		return Evacuation{}, catalog.Classify(err, "evacuation tenants")
	}
	e.Tenants, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (EvacuationTenant, error) {
		var t EvacuationTenant
		err := row.Scan(&t.Tenant, &t.From, &t.To, &t.Reason, &t.State, &t.MoveID, &t.Phase, &t.Error, &t.Attempts, &t.RetryAt, &t.ToPool)
		return t, err
	})
	if err != nil {
		return Evacuation{}, catalog.Classify(err, "evacuation tenants")
	}
	if e.Tenants == nil {
		e.Tenants = []EvacuationTenant{}
	}
	e.Total = len(e.Tenants)
	for _, t := range e.Tenants {
		switch t.State {
		case EvacTenantPending:
			e.Pending++
		case EvacTenantMoving:
			e.Moving++
		case EvacTenantMoved:
			e.Moved++
		case EvacTenantFailed:
			e.Failed++
		case EvacTenantSkipped:
			e.Skipped++
		}
	}
	return e, nil
}

// ListEvacuations returns evacuations and rebalances, newest first, a page
// at a time (catalog's limits and cursors), with their counts but not their
// tenants; the cursor is "" on the last page.
func (s *Service) ListEvacuations(ctx context.Context, limit int, cursor string) ([]Evacuation, string, error) {
	return catalog.IDPage(ctx, s.store.Pool(), limit, cursor, "evacuations", `SELECT e.id, e.kind, coalesce(s.name, ''), e.state, e.concurrency, e.per_server, e.mode, e.max_attempts, e.last_error, e.actor,
		e.created_at, e.updated_at, e.finished_at,
		count(et.tenant_id), count(*) FILTER (WHERE et.state = 'pending'), count(*) FILTER (WHERE et.state = 'moving'),
		count(*) FILTER (WHERE et.state = 'moved'), count(*) FILTER (WHERE et.state = 'failed'), count(*) FILTER (WHERE et.state = 'skipped')
		FROM evacuations e LEFT JOIN servers s ON s.id = e.server_id LEFT JOIN evacuation_tenants et ON et.evacuation_id = e.id
		WHERE e.id < $1 GROUP BY e.id, s.name ORDER BY e.id DESC LIMIT $2`,
		func(row pgx.Row) (Evacuation, error) {
			var e Evacuation
			err := row.Scan(&e.ID, &e.Kind, &e.Server, &e.State, &e.Concurrency, &e.PerServer, &e.Mode, &e.MaxAttempts, &e.LastError, &e.Actor,
				&e.CreatedAt, &e.UpdatedAt, &e.FinishedAt, &e.Total, &e.Pending, &e.Moving, &e.Moved, &e.Failed, &e.Skipped)
			return e, err
		}, func(e Evacuation) int64 { return e.ID })
}

// PauseEvacuation stops an evacuation from starting moves; the moves under
// way go on. ResumeEvacuation lets it start them again. CancelEvacuation
// stops it for good: no new move starts, the tenants not started are
// skipped, and the moves under way finish (cancel one with Cancel); the
// evacuation is finished once they have. A change its state does not allow
// is a CodeConflict.
func (s *Service) PauseEvacuation(ctx context.Context, id int64, actor string) (Evacuation, error) {
	return s.setEvacState(ctx, id, EvacuationPaused, actor, EvacuationRunning)
}

// ResumeEvacuation: see PauseEvacuation.
func (s *Service) ResumeEvacuation(ctx context.Context, id int64, actor string) (Evacuation, error) {
	return s.setEvacState(ctx, id, EvacuationRunning, actor, EvacuationPaused)
}

// CancelEvacuation: see PauseEvacuation.
func (s *Service) CancelEvacuation(ctx context.Context, id int64, actor string) (Evacuation, error) {
	return s.setEvacState(ctx, id, EvacuationCancelled, actor, EvacuationRunning, EvacuationPaused)
}

func (s *Service) setEvacState(ctx context.Context, id int64, to, actor string, from ...string) (Evacuation, error) {
	err := s.store.InTx(ctx, func(tx pgx.Tx) error {
		// Waits for a step of the job under way (it holds the row): once
		// this returns, a paused or cancelled evacuation starts no move.
		var state, kind string
		err := tx.QueryRow(ctx, `SELECT state, kind FROM evacuations WHERE id = $1 FOR UPDATE`, id).Scan(&state, &kind)
		if err != nil {
			return catalog.Classify(err, fmt.Sprintf("evacuation %d", id))
		}
		ok := false
		for _, f := range from {
			ok = ok || f == state
		}
		if !ok {
			return catalog.Errorf(catalog.CodeConflict, "evacuation %d is %s: it cannot be %s", id, state, map[string]string{
				EvacuationPaused: "paused (only a running one)", EvacuationRunning: "resumed (only a paused one)",
				EvacuationCancelled: "cancelled (only a running or paused one)"}[to])
		}
		if _, err := tx.Exec(ctx, `UPDATE evacuations SET state = $2, updated_at = now() WHERE id = $1`, id, to); err != nil {
			return catalog.Classify(err, "evacuation")
		}
		return catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: actor, Action: kind + "." + to, Subject: strconv.FormatInt(id, 10),
			FromState: state, ToState: to})
	})
	if err != nil {
		return Evacuation{}, err
	}
	s.logger.InfoContext(ctx, "evacuation "+to, "evacuation_id", id)
	return s.GetEvacuation(ctx, id)
}

// evacRow is an evacuation's tenant as its job sees it.
type evacRow struct {
	tenantID, slug string
	fromID         int64
	toID           *int64 // planned (rebalance)
	state          string
	moveID         *int64
	movePhase      *string
	moveError      *string
	moveTo         *int64
	attempts       []EvacuationAttempt
	retryAt        *time.Time
	pooled         bool // in a pool database: repooled
}

// evacStep settles the moves that ended and starts new ones where the
// bounds allow, under the evacuation's row lock; done once the evacuation
// is over.
func (s *Service) evacStep(ctx context.Context, id int64) (done bool, err error) {
	err = s.store.InTx(ctx, func(tx pgx.Tx) error {
		var kind, state, mode, actor string
		var serverID *int64
		var conc, perServer, maxAttempts int
		err := tx.QueryRow(ctx, `SELECT kind, server_id, state, concurrency, per_server, mode, actor, max_attempts FROM evacuations WHERE id = $1 FOR UPDATE`, id).
			Scan(&kind, &serverID, &state, &conc, &perServer, &mode, &actor, &maxAttempts)
		if errors.Is(err, pgx.ErrNoRows) {
			done = true
			return nil
		}
		if err != nil {
			return catalog.Classify(err, "evacuation")
		}
		if state == EvacuationDone || state == EvacuationFailed {
			done = true
			return nil
		}
		rows, err := tx.Query(ctx, `SELECT et.tenant_id, t.slug, et.from_server_id, et.to_server_id, et.state, et.move_id, m.phase, m.last_error, m.to_server_id,
			et.attempts, et.retry_at, t.pool_id IS NOT NULL
			FROM evacuation_tenants et JOIN tenants t ON t.id = et.tenant_id LEFT JOIN moves m ON m.id = et.move_id
			WHERE et.evacuation_id = $1 ORDER BY et.position`, id)
		if err != nil {
			return catalog.Classify(err, "evacuation tenants")
		}
		list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (evacRow, error) {
			var r evacRow
			err := row.Scan(&r.tenantID, &r.slug, &r.fromID, &r.toID, &r.state, &r.moveID, &r.movePhase, &r.moveError, &r.moveTo, &r.attempts, &r.retryAt, &r.pooled)
			return r, err
		})
		if err != nil {
			return catalog.Classify(err, "evacuation tenants")
		}
		setRow := func(r *evacRow, state, msg string) error {
			r.state = state
			_, err := tx.Exec(ctx, `UPDATE evacuation_tenants SET state = $3, move_id = $4, error = $5 WHERE evacuation_id = $1 AND tenant_id = $2`,
				id, r.tenantID, state, r.moveID, msg)
			return catalog.Classify(err, "evacuation tenant")
		}
		// failAttempt records a failed try (its move, if it started, and
		// the error); the tenant is tried again after a pause until it
		// has been tried maxAttempts times, then it fails.
		failAttempt := func(r *evacRow, msg string) error {
			r.attempts = append(r.attempts, EvacuationAttempt{MoveID: r.moveID, Error: msg, At: time.Now().UTC()})
			n := len(r.attempts)
			if n >= maxAttempts || state == EvacuationCancelled {
				r.state = EvacTenantFailed
				if n > 1 {
					msg = fmt.Sprintf("after %d attempts: %s", n, msg)
				}
			} else {
				r.state, r.moveID = EvacTenantPending, nil
				at := time.Now().Add(time.Duration(n) * s.cfg.evacRetryDelay)
				r.retryAt = &at
			}
			_, err := tx.Exec(ctx, `UPDATE evacuation_tenants SET state = $3, move_id = $4, error = $5, attempts = $6, retry_at = $7
				WHERE evacuation_id = $1 AND tenant_id = $2`, id, r.tenantID, r.state, r.moveID, msg, r.attempts, r.retryAt)
			return catalog.Classify(err, "evacuation tenant")
		}

		// Settle the moves that ended.
		moving := 0
		inflight := map[int64]int{} // this evacuation's moves under way, by target
		for i := range list {
			r := &list[i]
			if r.state != EvacTenantMoving || r.movePhase == nil {
				continue
			}
			switch *r.movePhase {
			case PhaseDone, PhaseReverted:
				err = setRow(r, EvacTenantMoved, "")
			case PhaseAborted:
				msg := "the move was aborted"
				if r.moveError != nil && *r.moveError != "" {
					msg = *r.moveError
				}
				s.logger.WarnContext(ctx, "evacuation: a move failed", "evacuation_id", id, "tenant", r.slug, "move_id", *r.moveID, "error", msg,
					"attempt", len(r.attempts)+1, "of", maxAttempts)
				err = failAttempt(r, msg)
			default:
				moving++
				inflight[*r.moveTo]++
			}
			if err != nil {
				return err
			}
		}

		pending := 0
		for i := range list {
			if list[i].state != EvacTenantPending {
				continue
			}
			if state == EvacuationCancelled {
				if err := setRow(&list[i], EvacTenantSkipped, ""); err != nil {
					return err
				}
				continue
			}
			pending++
		}
		if state == EvacuationPaused || (state == EvacuationRunning && pending > 0) {
			if state == EvacuationRunning {
				started, err := s.evacStart(ctx, tx, id, kind, serverID, mode, actor, list, conc-moving, perServer, inflight, setRow, failAttempt)
				if err != nil {
					return err
				}
				moving += started
			}
			return nil
		}
		if moving > 0 {
			return nil
		}
		// Nothing pending, nothing moving: the evacuation is over.
		done = true
		return s.evacFinish(ctx, tx, id, kind, serverID, state, list)
	})
	return done, err
}

// evacStart starts up to slots moves of pending tenants, and reports how
// many it started. A tenant whose move cannot start fails with the reason;
// when no target has room and nothing is moving, the tenants left fail.
func (s *Service) evacStart(ctx context.Context, tx pgx.Tx, id int64, kind string, serverID *int64, mode, actor string, list []evacRow,
	slots, perServer int, inflight map[int64]int, setRow func(*evacRow, string, string) error, failAttempt func(*evacRow, string) error) (int, error) {
	if slots <= 0 {
		return 0, nil
	}
	type target struct {
		id             int64
		name, state    string
		capacity, used int // used: tenants placed and open moves into it
	}
	rows, err := tx.Query(ctx, `SELECT s.id, s.name, s.state, s.capacity,
		(SELECT count(*) FROM tenants t WHERE t.server_id = s.id AND t.state <> 'deleted')
		+ (SELECT count(*) FROM moves m WHERE m.to_server_id = s.id AND m.kind IN ('move', 'promote') AND m.phase NOT IN ('done', 'aborted', 'reverted'))
		FROM servers s ORDER BY s.name`)
	if err != nil {
		return 0, catalog.Classify(err, "servers")
	}
	targets, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (target, error) {
		var t target
		err := row.Scan(&t.id, &t.name, &t.state, &t.capacity, &t.used)
		return t, err
	})
	if err != nil {
		return 0, catalog.Classify(err, "servers")
	}
	places, err := poolPlaces(ctx, tx, "")
	if err != nil {
		return 0, err
	}
	moving := 0
	for _, n := range inflight {
		moving += n
	}
	started, waiting := 0, 0
	now := time.Now()
	for i := range list {
		r := &list[i]
		if r.state != EvacTenantPending || r.retryAt != nil && r.retryAt.After(now) {
			continue
		}
		if started >= slots {
			break
		}
		// A pooled tenant: the pool database with the most room on another
		// active server that this evacuation is not filling at its bound.
		var (
			into  int64 // the target server
			spec  MoveSpec
			taken func()
		)
		if r.pooled {
			p := pickPool(places, r.fromID, perServer, inflight)
			if p == nil {
				waiting++
				continue
			}
			into, spec, taken = p.serverID, MoveSpec{Pool: p.id, Mode: mode}, func() { p.room-- }
		}
		// Else picked: the planned target, or the active server with the
		// most room that this evacuation is not filling at its bound already.
		var to *target
		for j := range targets {
			if r.pooled {
				break
			}
			t := &targets[j]
			if t.id == r.fromID || t.state != string(catalog.ServerActive) || t.used >= t.capacity {
				continue
			}
			if r.toID != nil && *r.toID != t.id {
				continue
			}
			if inflight[t.id] >= perServer {
				if r.toID != nil {
					waiting++
					to = nil
					break
				}
				continue
			}
			if to == nil || t.capacity-t.used > to.capacity-to.used {
				to = t
			}
		}
		if to != nil {
			into, spec, taken = to.id, MoveSpec{To: to.name, Mode: mode}, func() { to.used++ }
		} else if !r.pooled {
			if r.toID != nil && inflight[*r.toID] < perServer {
				// The plan's target took other tenants meanwhile (or left
				// the fleet): this one stays.
				if err := setRow(r, EvacTenantFailed, "its planned target has no room now or is not active"); err != nil {
					return started, err
				}
			} else {
				waiting++
			}
			continue
		}
		// A move this evacuation started whose record did not commit (a
		// crash, or a failed step, between the two): take it over, open or
		// ended, rather than start another; the next step settles it.
		// Not one of its failed attempts, of course.
		tried := []int64{}
		for _, a := range r.attempts {
			if a.MoveID != nil {
				tried = append(tried, *a.MoveID)
			}
		}
		var adopted *int64
		err := tx.QueryRow(ctx, `SELECT id FROM moves WHERE tenant_id = $1 AND actor = $2 AND id <> ALL($3) ORDER BY id DESC LIMIT 1`,
			r.tenantID, evacActor(id), tried).Scan(&adopted)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return started, catalog.Classify(err, "moves")
		}
		if adopted == nil {
			m, err := s.StartMove(ctx, r.slug, spec, evacActor(id)) // a repool for a pooled tenant
			if err != nil {
				if ctx.Err() != nil {
					return started, err
				}
				s.logger.WarnContext(ctx, "evacuation: a move could not start", "evacuation_id", id, "tenant", r.slug, "to", spec.To, "pool", spec.Pool,
					"error", err, "attempt", len(r.attempts)+1)
				if err := failAttempt(r, err.Error()); err != nil {
					return started, err
				}
				continue
			}
			adopted = &m.ID
		}
		r.moveID = adopted
		if err := setRow(r, EvacTenantMoving, ""); err != nil {
			return started, err
		}
		taken()
		inflight[into]++
		started++
	}
	if started == 0 && moving == 0 && waiting > 0 {
		// Nothing under way that could free room, and no target has any:
		// the tenants left cannot move.
		msg := "no active server has room for it"
		if kind == KindEvacuate && serverID != nil {
			msg = "no other active server has room for it (capacity counts tenants placed and moves under way)"
		}
		for i := range list {
			if list[i].state == EvacTenantPending && (list[i].retryAt == nil || !list[i].retryAt.After(now)) {
				msg := msg
				if list[i].pooled {
					msg = "no pool database on another active server has room for it (add one: POST /admin/v1/pools)"
				}
				if err := setRow(&list[i], EvacTenantFailed, msg); err != nil {
					return started, err
				}
			}
		}
	}
	return started, nil
}

// evacFinish records the end of an evacuation and sets its server's state:
// empty when no tenant is left on it, draining otherwise.
func (s *Service) evacFinish(ctx context.Context, tx pgx.Tx, id int64, kind string, serverID *int64, state string, list []evacRow) error {
	failed := 0
	for _, r := range list {
		if r.state == EvacTenantFailed {
			failed++
		}
	}
	final, lastError := state, ""
	if state == EvacuationRunning {
		final = EvacuationDone
		if failed > 0 {
			final, lastError = EvacuationFailed, fmt.Sprintf("%d of %d tenants did not move: see each one's error", failed, len(list))
		}
	}
	_, err := tx.Exec(ctx, `UPDATE evacuations SET state = $2, last_error = $3, finished_at = now(), updated_at = now() WHERE id = $1`, id, final, lastError)
	if err != nil {
		return catalog.Classify(err, "evacuation")
	}
	details := map[string]any{"evacuation_id": id, "state": final, "tenants": len(list), "failed": failed}
	if kind == KindEvacuate && serverID != nil {
		var name string
		var left int
		// Pooled tenants in the server's pool databases count too: one whose
		// repool failed still lives there, and the server is not empty.
		err := tx.QueryRow(ctx, `SELECT s.name, (SELECT count(*) FROM tenants t LEFT JOIN pool_databases p ON p.id = t.pool_id
				WHERE coalesce(t.server_id, p.server_id) = s.id AND t.state <> 'deleted')
			FROM servers s WHERE s.id = $1`, *serverID).Scan(&name, &left)
		if err != nil {
			return catalog.Classify(err, "server")
		}
		to := catalog.ServerDraining
		if left == 0 {
			to = catalog.ServerEmpty
		}
		if _, err := tx.Exec(ctx, `UPDATE servers SET state = $2, updated_at = now() WHERE id = $1`, *serverID, to); err != nil {
			return catalog.Classify(err, "server")
		}
		details["tenants_left"] = left
		if left == 0 {
			// Its pool databases hold no tenant: retired, they take none
			// and fan-out passes them by (POST /pools/{id}/retry brings one
			// back). The rows a repool kept there go at its keep's end.
			rows, err := tx.Query(ctx, `UPDATE pool_databases SET state = 'retired', updated_at = now()
				WHERE server_id = $1 AND state <> 'retired' RETURNING 'tp_pool_' || id`, *serverID)
			if err != nil {
				return catalog.Classify(err, "pool databases")
			}
			retired, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return catalog.Classify(err, "pool databases")
			}
			if len(retired) > 0 {
				details["pools_retired"] = retired
			}
		}
		if err := catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: evacActor(id), Action: "server." + string(to), Subject: name,
			FromState: string(catalog.ServerEvacuating), ToState: string(to), Details: details}); err != nil {
			return err
		}
	}
	s.logger.InfoContext(ctx, "evacuation finished", "evacuation_id", id, "kind", kind, "state", final, "failed", failed)
	return nil
}

// pickPool is the pool database a pooled tenant of server from goes to in
// an evacuation: open, on another server, with room, on a server the
// evacuation is not filling at its bound (perServer), the one with the
// most room; nil when none.
func pickPool(places []poolPlace, from int64, perServer int, inflight map[int64]int) *poolPlace {
	var pick *poolPlace
	for i := range places {
		p := &places[i]
		if !p.open() || p.serverID == from || p.room <= 0 || inflight[p.serverID] >= perServer {
			continue
		}
		if pick == nil || p.room > pick.room {
			pick = p
		}
	}
	return pick
}

// checkEvacuationRoom refuses (CodeConflict) to evacuate server id when the
// other active servers have no room for its tenants: its dedicated tenants
// need places on them (capacity less their tenants and the moves under way
// into them), its pooled tenants places in their active pool databases.
func checkEvacuationRoom(ctx context.Context, tx pgx.Tx, name string, id int64) error {
	var dedicated, pooled, serverRoom int
	err := tx.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM tenants t WHERE t.server_id = $1 AND t.state <> 'deleted'),
		(SELECT count(*) FROM tenants t JOIN pool_databases p ON p.id = t.pool_id WHERE p.server_id = $1 AND t.state <> 'deleted'),
		(SELECT coalesce(sum(greatest(s.capacity
			- (SELECT count(*) FROM tenants t WHERE t.server_id = s.id AND t.state <> 'deleted')
			- (SELECT count(*) FROM moves m WHERE m.to_server_id = s.id AND m.kind IN ('move', 'promote') AND m.phase NOT IN ('done', 'aborted', 'reverted')), 0)), 0)
			FROM servers s WHERE s.id <> $1 AND s.state = 'active')`, id).Scan(&dedicated, &pooled, &serverRoom)
	if err != nil {
		return catalog.Classify(err, "server "+strconv.Quote(name))
	}
	places, err := poolPlaces(ctx, tx, "WHERE p.server_id <> $1", id)
	if err != nil {
		return err
	}
	poolRoom := 0
	for _, p := range places {
		if p.open() {
			poolRoom += max(p.room, 0)
		}
	}
	var short []string
	if dedicated > serverRoom {
		short = append(short, fmt.Sprintf("its %d tenants with a database of their own need places on other active servers, which have room for %d (raise a capacity, or add a server)",
			dedicated, serverRoom))
	}
	if pooled > poolRoom {
		short = append(short, fmt.Sprintf("its %d pooled tenants need places in pool databases on other active servers, which have room for %d (add one: POST /admin/v1/pools)",
			pooled, poolRoom))
	}
	if len(short) > 0 {
		return catalog.Errorf(catalog.CodeConflict, "server %s cannot be emptied: %s; nothing was started", name, strings.Join(short, "; "))
	}
	return nil
}
