package mover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"

	"github.com/tenantplane/tenantplane/catalog"
)

// Keeping a moved tenant's source in step.
//
// Where the target server allows logical replication (wal_level = logical
// and a replication privilege for its admin role, as CheckOnline tells of
// a source), a move leaves, at its switch, a slot and a publication named
// like the move (slotName) in the tenant's database on the target, and the
// keep job (keepArgs) applies what the tenant writes there to the kept,
// fenced source, with the online mode's Stream: the source stays fenced for
// the tenant role, only the mover's admin connection writes it. A revert of
// such a move (in_step) then holds and fences the target, catches up the
// last changes, verifies the rows written since the switch with every
// table's count, and switches back: no copy.
//
// Exactly once: each transaction applied to the kept source records, in
// that same transaction, the end of the source transaction it applied
// (keepSchema's progress row, locked FOR UPDATE at its start), and the keys
// of the rows it wrote. A stream opened again (another run of the job, a
// restart after SIGKILL, the revert taking it over) starts replication at
// that position (the server sends no transaction that committed before it)
// and skips any that does, so a transaction applied but not yet confirmed
// to the slot is not applied twice, and two appliers of one slot (a run
// taken over while the first still applies) never both apply one: the
// second waits on the row lock, then skips.
//
// Where the target cannot replicate, the move says why in keep_reason and
// a revert is a move back that copies every row. The keep ends, with the
// slot and publication dropped, when the keep is over (dropSource), when
// the tenant moves on, its schema changes (DDL is not streamed), the slot
// loses its WAL (max_slot_wal_keep_size) or the kept source stops matching;
// keep_reason then says why and a revert copies.

// tierNotKept is why a promotion's or demotion's source is not kept in
// step: the opposite change takes it back.
const tierNotKept = "a promotion or demotion keeps its source fenced but not in step: the opposite change (demote or promote) takes it back"

// keepSchema is where a database a move's stream applies to keeps the
// stream's ledger: a kept source, and an online move's target until its
// switch (resume.go). Out of schema public (Tables, Copy and Verify see
// only that), owned by the admin role, invisible to the tenant role; the
// live database's is dropped at the switch.
const keepSchema = "tenantplane_keep"

// keepRun bounds one run of the keep job; then it hands over to its next
// run (a snooze), so that River never takes it for a job stuck running.
const keepRun = time.Minute

// keepPoll is how often a keep looks for new writes on the target while
// the tenant writes; idle, it looks less and less often, up to keepIdlePoll
// (each look that finds the server's WAL moved commits an empty transaction
// there, CurrentLSN's, and so takes an xid).
const (
	keepPoll     = 200 * time.Millisecond
	keepIdlePoll = 2 * time.Second
)

// fencedPoll is the stream's status poll (statusPoll) in a catch-up under
// the fence.
const fencedPoll = 10 * time.Millisecond

// stepKeepApplied is the test hook's point where a keep has committed a
// transaction on the kept source and not yet confirmed it to the slot.
const stepKeepApplied = "keep: applied"

// errDrift is an applied change that did not find its row: the target of
// a stream has drifted from its source.
var errDrift = errors.New("the target has drifted from the source")

// keepStart is what a move's run learned about keeping its source in step.
type keepStart struct {
	possible bool   // the target can stream back
	started  bool   // the slot and the kept ledger are set at the switch point
	reason   string // keep_reason
}

// applyLedger records, in each transaction a Stream applies, how far it has
// applied, and says which transactions were applied before.
type applyLedger interface {
	// begin runs first in the target transaction of a source transaction
	// whose commit record starts at final, and sets stableFormat's settings
	// for it; skip: it was applied already.
	begin(ctx context.Context, tx pgx.Tx, final LSN) (skip bool, err error)
	// commit runs last in it, before the commit; end is where the source
	// transaction ends, changes the stream's ChangeSet (its journal).
	commit(ctx context.Context, tx pgx.Tx, end LSN, changes *ChangeSet) error
	// committed runs once it is committed, before the slot is told.
	committed(ctx context.Context, end LSN) error
}

// keepLedger is the applyLedger of the database a move's stream applies
// to (its target while it catches up, its kept source after the switch):
// keepSchema's tables. step is the test hook's point after each commit.
type keepLedger struct {
	s       *Service
	moveID  int64
	step    string
	applied int // transactions committed
}

func (l *keepLedger) begin(ctx context.Context, tx pgx.Tx, final LSN) (bool, error) {
	var applied LSN
	var owner int64
	// stableFormat's settings in the same round trip.
	err := tx.QueryRow(ctx, `SELECT p.move_id, p.lsn FROM `+keepSchema+`.progress p,
		(SELECT set_config('DateStyle', 'ISO, YMD', true), set_config('IntervalStyle', 'postgres', true), set_config('TimeZone', 'UTC', true),
			set_config('extra_float_digits', '3', true), set_config('bytea_output', 'hex', true)) f
		FOR UPDATE OF p`).Scan(&owner, &applied)
	if err != nil {
		return false, fmt.Errorf("kept source: reading the keep's position: %w", err)
	}
	if owner != l.moveID {
		return false, fmt.Errorf("kept source: its keep ledger is move %d's, not move %d's: %w", owner, l.moveID, errDrift)
	}
	return final < applied, nil
}

func (l *keepLedger) commit(ctx context.Context, tx pgx.Tx, end LSN, changes *ChangeSet) error {
	tables, keys, overflow := changes.drain()
	if tables == nil {
		tables = []journalTable{}
	}
	if keys == nil {
		keys = []journalKey{}
	}
	tdata, err := json.Marshal(tables)
	if err != nil {
		return err
	}
	kdata, err := json.Marshal(keys)
	if err != nil {
		return err
	}
	// One round trip: the tables and keys written, and the position.
	_, err = tx.Exec(ctx, `WITH t AS (INSERT INTO `+keepSchema+`.tables (name, cols, types, full_table)
			SELECT x.name, x.cols, x.types, x.full FROM jsonb_to_recordset($1::jsonb) AS x(name text, cols text[], types text[], "full" boolean)
			ON CONFLICT (name) DO UPDATE SET cols = excluded.cols, types = excluded.types, full_table = tables.full_table OR excluded.full_table),
		k AS (INSERT INTO `+keepSchema+`.keys (name, vals)
			SELECT x.t, x.v FROM jsonb_to_recordset($2::jsonb) AS x(t text, v jsonb) ON CONFLICT DO NOTHING)
		UPDATE `+keepSchema+`.progress SET lsn = $3::text::pg_lsn, overflow = overflow OR $4, applied_at = clock_timestamp()`,
		string(tdata), string(kdata), end.String(), overflow)
	if err != nil {
		return fmt.Errorf("recording the stream's position and the rows it wrote: %w", err)
	}
	return nil
}

func (l *keepLedger) committed(ctx context.Context, _ LSN) error {
	l.applied++
	if l.step == "" {
		return nil
	}
	return l.s.hook(ctx, l.moveID, l.step)
}

// changeJournal collects what a ChangeSet added since its last drain.
type changeJournal struct {
	tables map[string]bool
	keys   []journalKey
}

type journalKey struct {
	Table string   `json:"t"`
	Vals  []string `json:"v"`
}

type journalTable struct {
	Name  string   `json:"name"`
	Cols  []string `json:"cols"`
	Types []string `json:"types"`
	Full  bool     `json:"full"`
}

func (j *changeJournal) touch(table string) {
	if j != nil {
		j.tables[table] = true
	}
}

func (j *changeJournal) add(table string, vals []string) {
	if j != nil {
		j.tables[table] = true
		j.keys = append(j.keys, journalKey{Table: table, Vals: vals})
	}
}

// drain returns, and forgets, what the set recorded since the last drain:
// the tables it touched (their key columns, or marked whole) and the keys
// it added; overflow says it stopped recording.
func (c *ChangeSet) drain() ([]journalTable, []journalKey, bool) {
	j := c.journal
	if j == nil {
		return nil, nil, c.overflow
	}
	var tables []journalTable
	for name := range j.tables {
		if t := c.tables[name]; t != nil {
			tables = append(tables, journalTable{Name: name, Cols: t.cols, Types: t.types, Full: t.full})
		}
	}
	keys := j.keys
	j.tables, j.keys = map[string]bool{}, nil
	if c.overflow {
		return nil, nil, true
	}
	return tables, keys, false
}

// loadKeptChanges reads the rows a keep (move id) wrote on the kept source
// since the switch, as a ChangeSet for VerifyOptions.Changed.
func loadKeptChanges(ctx context.Context, kept Querier, id int64) (*ChangeSet, error) {
	var owner int64
	var overflow bool
	if err := kept.QueryRow(ctx, "SELECT move_id, overflow FROM "+keepSchema+".progress").Scan(&owner, &overflow); err != nil {
		return nil, fmt.Errorf("kept source: the keep's ledger: %w", err)
	}
	if owner != id {
		return nil, fmt.Errorf("kept source: its keep ledger is move %d's, not move %d's", owner, id)
	}
	cs := newChangeSet()
	if overflow {
		cs.overflow, cs.tables = true, nil
		return cs, nil
	}
	rows, err := kept.Query(ctx, "SELECT name, cols, types, full_table FROM "+keepSchema+".tables")
	if err != nil {
		return nil, fmt.Errorf("kept source: %w", err)
	}
	for rows.Next() {
		t := &changedTable{keys: map[string][]string{}}
		var name string
		if err := rows.Scan(&name, &t.cols, &t.types, &t.full); err != nil {
			rows.Close()
			return nil, fmt.Errorf("kept source: %w", err)
		}
		if t.full {
			t.keys = nil
		}
		cs.tables[name] = t
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("kept source: %w", err)
	}
	rows, err = kept.Query(ctx, "SELECT name, vals FROM "+keepSchema+".keys")
	if err != nil {
		return nil, fmt.Errorf("kept source: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var vals []string
		if err := rows.Scan(&name, &vals); err != nil {
			return nil, fmt.Errorf("kept source: %w", err)
		}
		t := cs.tables[name]
		if t == nil || t.full {
			continue
		}
		if cs.keys >= maxChangedKeys {
			cs.overflow, cs.tables = true, nil
			return cs, nil
		}
		id := strings.Join(vals, "\x00")
		if _, ok := t.keys[id]; !ok {
			t.keys[id] = vals
			cs.keys++
		}
	}
	return cs, rows.Err()
}

// keepLedgerDDL makes a kept source's ledger afresh.
const keepLedgerDDL = `DROP SCHEMA IF EXISTS ` + keepSchema + ` CASCADE;
CREATE SCHEMA ` + keepSchema + `;
REVOKE ALL ON SCHEMA ` + keepSchema + ` FROM PUBLIC;
CREATE TABLE ` + keepSchema + `.progress (move_id bigint NOT NULL, lsn pg_lsn NOT NULL, overflow boolean NOT NULL DEFAULT false,
	applied_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE ` + keepSchema + `.tables (name text PRIMARY KEY, cols text[] NOT NULL, types text[] NOT NULL, full_table boolean NOT NULL);
CREATE TABLE ` + keepSchema + `.keys (name text NOT NULL, vals jsonb NOT NULL, PRIMARY KEY (name, vals));`

// prepareKeep checks whether the target can stream the tenant's writes back
// to the source after the switch and, if so, makes the slot and the
// publication there now, before the hold, so that the switch does not wait
// for the slot's consistent point. Nothing here fails the move: a keep
// that cannot be had is a reason.
func (s *Service) prepareKeep(ctx context.Context, w *work) {
	w.keep = &keepStart{}
	if w.m.Kind != KindMove {
		w.keep.reason = tierNotKept
		return
	}
	dst, err := s.connect(ctx, w.to.Name, w.t.Database)
	if err != nil {
		w.keep.reason = fmt.Sprintf("the source is not kept in step (connecting to %s: %v): a revert copies every row back", w.to.Name, err)
		return
	}
	defer dst.Close(context.WithoutCancel(ctx))
	check, err := CheckOnline(ctx, dst, dst)
	if err != nil {
		w.keep.reason = fmt.Sprintf("the source is not kept in step (%v): a revert copies every row back", err)
		return
	}
	if !check.Possible {
		refusals := make([]string, len(check.Refusals))
		for i, r := range check.Refusals { // CheckOnline speaks of its source: here the target
			r = strings.Replace(r, "the source role", "its admin role", 1)
			refusals[i] = strings.Replace(r, "the source has", "it has", 1)
		}
		w.keep.reason = fmt.Sprintf("the source is not kept in step, as the target %s cannot stream it the tenant's writes (%s): a revert copies every row back",
			w.to.Name, strings.Join(refusals, "; "))
		return
	}
	if err := ensureKeepSlot(ctx, dst, slotName(w.m.ID)); err != nil {
		w.keep.reason = fmt.Sprintf("the source is not kept in step (%v): a revert copies every row back", err)
		return
	}
	w.keep.possible = true
	w.keep.reason = fmt.Sprintf("kept in step: a slot on %s streams the tenant's writes to the fenced source, so a revert only catches up and switches back", w.to.Name)
	if check.UnboundedSlotWAL {
		w.keep.reason += fmt.Sprintf("; max_slot_wal_keep_size is unbounded on %s: a stalled keep's slot holds WAL there without limit; "+
			"set it (e.g. 10GB) on the server (the move cannot: it takes a superuser or the server's configuration)", w.to.Name)
	}
}

// ensureKeepSlot makes, in the tenant database conn is connected to, a
// publication of its tables and a pgoutput slot, both called name, unless
// they are there.
func ensureKeepSlot(ctx context.Context, conn *pgx.Conn, name string) error {
	if err := ensurePublication(ctx, conn, name, ""); err != nil {
		return fmt.Errorf("target: creating publication: %w", err)
	}
	var slot bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)`, name).Scan(&slot); err != nil {
		return fmt.Errorf("target: %w", err)
	}
	if !slot {
		if _, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", name); err != nil {
			return fmt.Errorf("target: creating replication slot: %w", err)
		}
	}
	return nil
}

// startKeep, inside the fence once the target is verified, sets the point
// from which the keep streams: the target's WAL position now, as nothing
// but the tenant writes there from here on, and the kept source holds all
// before it. w.lock (the source) gets a fresh ledger at that point. The
// live side loses any ledger it kept itself (a reverted move's). Nothing
// here fails the move: a keep that cannot start is a reason.
func (s *Service) startKeep(ctx context.Context, w *work) {
	if w.m.Kind != KindMove {
		w.keep = &keepStart{reason: tierNotKept}
		return
	}
	dst, err := s.connect(ctx, w.to.Name, w.t.Database)
	if err != nil {
		w.keep = &keepStart{reason: fmt.Sprintf("the source is not kept in step (connecting to %s: %v): a revert copies every row back", w.to.Name, err)}
		return
	}
	defer dst.Close(context.WithoutCancel(ctx))
	if _, err := dst.Exec(ctx, "DROP SCHEMA IF EXISTS "+keepSchema+" CASCADE"); err != nil {
		s.logger.WarnContext(ctx, "dropping a keep ledger on the live database failed", "move_id", w.m.ID, "tenant", w.t.Slug, "error", err)
	}
	if w.keep == nil { // a run resumed after the catch-up
		s.prepareKeep(ctx, w)
	}
	if !w.keep.possible {
		return
	}
	fail := func(err error) {
		w.keep.possible = false
		w.keep.reason = fmt.Sprintf("the source is not kept in step (%v): a revert copies every row back", err)
		s.logger.WarnContext(ctx, "keep not started", "move_id", w.m.ID, "tenant", w.t.Slug, "error", err)
		_ = dropKeepObjects(ctx, dst, slotName(w.m.ID))
	}
	if err := ensureKeepSlot(ctx, dst, slotName(w.m.ID)); err != nil {
		fail(err)
		return
	}
	var start LSN
	if err := dst.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()").Scan(&start); err != nil {
		fail(fmt.Errorf("target: %w", err))
		return
	}
	if err := startLedger(ctx, w.lock, w.m.ID, start); err != nil {
		fail(fmt.Errorf("source: %w", err))
		return
	}
	w.keep.started = true
}

// startLedger makes, in the database conn is connected to, a fresh ledger
// of move id's stream, applied up to from.
func startLedger(ctx context.Context, conn *pgx.Conn, id int64, from LSN) error {
	if _, err := conn.Exec(ctx, keepLedgerDDL); err != nil {
		return err
	}
	_, err := conn.Exec(ctx, "INSERT INTO "+keepSchema+".progress (move_id, lsn) VALUES ($1, $2::text::pg_lsn)", id, from.String())
	return err
}

// recordKeep, in the switch's transaction, records whether the source is
// kept in step, and queues the keep's job if it is.
func (s *Service) recordKeep(ctx context.Context, tx pgx.Tx, w *work) error {
	if w.keep == nil {
		return nil
	}
	_, err := tx.Exec(ctx, `UPDATE moves SET keep_in_step = $2, keep_reason = $3, updated_at = now() WHERE id = $1`,
		w.m.ID, w.keep.started, w.keep.reason)
	if err != nil {
		return catalog.Classify(err, "move")
	}
	if !w.keep.started {
		return nil
	}
	_, err = s.jobs.Client().InsertTx(ctx, tx, keepArgs{MoveID: w.m.ID}, nil)
	return err
}

// dropKeepObjects drops the keep's slot (its holder terminated) and
// publication in the database conn is connected to. Idempotent.
func dropKeepObjects(ctx context.Context, conn *pgx.Conn, name string) error {
	if err := dropSlot(ctx, conn, name); err != nil {
		return fmt.Errorf("dropping slot %s: %w", name, err)
	}
	if _, err := conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+ident(name)); err != nil {
		return fmt.Errorf("dropping publication %s: %w", name, err)
	}
	return nil
}

// dropKeep drops move id's keep slot and publication from the tenant's
// database on server, if the database is there.
func (s *Service) dropKeep(ctx context.Context, server, database string, id int64) error {
	admin, err := s.connect(ctx, server, "")
	if err != nil {
		return fmt.Errorf("server %s: %w", server, err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", database).Scan(&exists); err != nil {
		return fmt.Errorf("server %s: %w", server, err)
	}
	if !exists {
		return dropSlot(ctx, admin, slotName(id))
	}
	conn, err := s.connect(ctx, server, database)
	if err != nil {
		return fmt.Errorf("server %s: %w", server, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := dropKeepObjects(ctx, conn, slotName(id)); err != nil {
		return fmt.Errorf("server %s: %w", server, err)
	}
	return nil
}

// stopKeep ends move id's keep for reason: the slot and publication are
// dropped, keep_in_step is off, and a revert copies.
func (s *Service) stopKeep(ctx context.Context, m *move, database, reason string) error {
	s.logger.WarnContext(ctx, "kept source no longer kept in step", "move_id", m.ID, "tenant", m.Tenant, "reason", reason)
	// The slot first: while keep_in_step stays on, the job tries again.
	if err := s.dropKeep(ctx, m.To, database, m.ID); err != nil {
		return err
	}
	_, err := s.store.Pool().Exec(ctx, `UPDATE moves SET keep_in_step = false, keep_reason = $2, keep_lag_bytes = 0, updated_at = now()
		WHERE id = $1`, m.ID, "the source is no longer kept in step: "+reason+": a revert copies every row back")
	if err != nil {
		return catalog.Classify(err, "move")
	}
	m.KeepInStep = false
	return nil
}

// endReverted ends the keep of a move reverted in step: its revert drops
// the slot just after its switch (here again, should its process have died
// first) and the keep is over.
func (s *Service) endReverted(ctx context.Context, m *move) error {
	t, err := s.store.GetTenantByID(ctx, m.TenantID)
	if err != nil {
		return err
	}
	if err := s.dropKeep(ctx, m.To, t.Database, m.ID); err != nil {
		return err
	}
	_, err = s.store.Pool().Exec(ctx, `UPDATE moves SET keep_in_step = false, keep_lag_bytes = 0,
		keep_reason = 'kept in step until reverted: the revert switched back over the keep', updated_at = now() WHERE id = $1`, m.ID)
	return catalog.Classify(err, "move")
}

// keepArgs is the durable job that keeps a done move's source in step.
type keepArgs struct {
	MoveID int64 `json:"move_id" river:"unique"`
}

func (keepArgs) Kind() string { return "tenantplane.move_keep" }

func (keepArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: queue, UniqueOpts: river.UniqueOpts{ByArgs: true}}
}

type keepWorker struct {
	river.WorkerDefaults[keepArgs]
	s *Service
}

// Timeout: a run ends by itself after keepRun.
func (w *keepWorker) Timeout(*river.Job[keepArgs]) time.Duration { return -1 }

func (w *keepWorker) Work(ctx context.Context, job *river.Job[keepArgs]) error {
	s, id := w.s, job.Args.MoveID
	err := s.keepInStep(ctx, id)
	var snooze *river.JobSnoozeError
	if err == nil || errors.As(err, &snooze) {
		return err
	}
	if ctx.Err() != nil {
		return err
	}
	m, gerr := getMove(ctx, s.store.Pool(), id)
	if gerr != nil {
		return errors.Join(err, gerr)
	}
	if !m.KeepInStep {
		return nil
	}
	if permanent(err) || job.Attempt >= job.MaxAttempts {
		t, terr := s.store.GetTenantByID(ctx, m.TenantID)
		if terr != nil {
			return errors.Join(err, terr)
		}
		return s.stopKeep(ctx, &m, t.Database, err.Error())
	}
	s.logger.WarnContext(ctx, "keep step failed; retrying", "move_id", id, "error", err, "attempt", job.Attempt)
	return err
}

// permanent says a keep cannot go on after err: the kept source no longer
// matches, the schema changed, the slot lost its WAL.
func permanent(err error) bool {
	var mismatch *SchemaMismatchError
	var lost *SlotLostError
	var pgErr *pgconn.PgError
	switch {
	case errors.Is(err, errDrift), errors.As(err, &mismatch), errors.As(err, &lost):
		return true
	case errors.As(err, &pgErr):
		// integrity (23), undefined or wrong objects (42): the kept
		// source and the stream no longer agree.
		return strings.HasPrefix(pgErr.Code, "23") || strings.HasPrefix(pgErr.Code, "42")
	}
	return false
}

// keepGoes says whether move m's keep is to run now: "", or "reverting"
// (wait: a revert streams, or the move is finishing its switch) or "over".
func (s *Service) keepGoes(ctx context.Context, m *move) (string, error) {
	switch {
	case m.Phase == PhaseSwitched && m.KeepInStep:
		return "reverting", nil // not done yet: soon
	case m.Phase == PhaseReverted && m.KeepInStep:
		return "reverted", nil
	case m.Phase != PhaseDone || !m.KeepInStep || m.sourceDropped:
		return "over", nil
	case m.KeepUntil != nil && time.Until(*m.KeepUntil) <= 0:
		return "over", nil // the drop job ends it
	}
	var reverting bool
	if err := s.store.Pool().QueryRow(ctx, `SELECT EXISTS (SELECT FROM moves WHERE reverts = $1 AND phase NOT IN ('done', 'aborted', 'reverted'))`,
		m.ID).Scan(&reverting); err != nil {
		return "", catalog.Classify(err, "move")
	}
	if reverting {
		return "reverting", nil
	}
	return "", nil
}

// keepInStep is one run of a keep: it streams the tenant's writes on the
// target into the kept source for keepRun, then hands over to its next run.
func (s *Service) keepInStep(ctx context.Context, id int64) error {
	m, err := getMove(ctx, s.store.Pool(), id)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	why, err := s.keepGoes(ctx, &m)
	switch {
	case err != nil:
		return err
	case why == "reverting":
		return river.JobSnooze(time.Second) // back if the revert aborts
	case why == "reverted":
		return s.endReverted(ctx, &m)
	case why != "":
		return nil
	}
	t, err := s.store.GetTenantByID(ctx, m.TenantID)
	if err != nil {
		return err
	}
	if why := tenantLeft(t, &m); why != "" {
		return s.stopKeep(ctx, &m, t.Database, why)
	}
	live, err := s.connect(ctx, m.To, t.Database)
	if err != nil {
		return fmt.Errorf("server %s: %w", m.To, err)
	}
	defer live.Close(context.WithoutCancel(ctx))
	kept, err := s.connect(ctx, m.From, t.Database)
	if err != nil {
		return fmt.Errorf("server %s: %w", m.From, err)
	}
	defer kept.Close(context.WithoutCancel(ctx))
	if why, err := schemaMoved(ctx, live, kept); err != nil {
		return err
	} else if why != "" {
		return s.stopKeep(ctx, &m, t.Database, why)
	}
	var active bool
	if err := live.QueryRow(ctx, "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1", slotName(id)).Scan(&active); err != nil {
		return fmt.Errorf("server %s: %w", m.To, err)
	}
	if active { // an earlier run's stream, still letting go
		return river.JobSnooze(time.Second)
	}
	st, err := s.openKept(ctx, id, m.To, t.Database, kept)
	if err != nil {
		return err
	}
	defer st.Close(context.WithoutCancel(ctx))
	deadline := time.Now().Add(keepRun)
	var lagAt time.Time
	poll, seen := keepPoll, 0
	for {
		if err := checkSlotStatus(ctx, live, slotName(id), m.To); err != nil {
			return err
		}
		var insert LSN
		if err := live.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()").Scan(&insert); err != nil {
			return fmt.Errorf("server %s: %w", m.To, err)
		}
		if insert > st.Applied() {
			until, err := CurrentLSN(ctx, live)
			if err != nil {
				return fmt.Errorf("server %s: %w", m.To, err)
			}
			// A long backlog (the keep was down) in bounded steps, so the
			// loop still looks at the catalog and its run still ends.
			until = min(until, st.Applied()+keepStep)
			if err := st.CatchUp(ctx, kept, until, nil); err != nil {
				return err
			}
		}
		if time.Since(lagAt) > 2*time.Second {
			lagAt = time.Now()
			lag := int64(0)
			if insert > st.Applied() {
				lag = int64(insert - st.Applied())
			}
			if _, err := s.store.Pool().Exec(ctx, `UPDATE moves SET keep_lag_bytes = $2 WHERE id = $1 AND keep_in_step`, id, lag); err != nil {
				return catalog.Classify(err, "move")
			}
			if m, err = getMove(ctx, s.store.Pool(), id); err != nil {
				return err
			}
			if why, err := s.keepGoes(ctx, &m); err != nil {
				return err
			} else if why != "" {
				return river.JobSnooze(0) // the next run sees why: it waits, ends, or tidies up
			}
			if t, err = s.store.GetTenantByID(ctx, m.TenantID); err != nil {
				return err
			}
			if why := tenantLeft(t, &m); why != "" {
				_ = st.Close(context.WithoutCancel(ctx)) // the slot is dropped next
				return s.stopKeep(ctx, &m, t.Database, why)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.stopping:
			return river.JobSnooze(0) // to another process
		case <-time.After(poll):
		}
		if n := st.ledger.(*keepLedger).applied; n != seen {
			poll, seen = keepPoll, n
		} else {
			poll = min(2*poll, keepIdlePoll)
		}
		if time.Now().After(deadline) {
			return river.JobSnooze(0)
		}
	}
}

// keepStep bounds how much WAL one catch-up of a keep goes through.
const keepStep = 16 << 20

// tenantLeft says why a keep must end because of its tenant: moved on
// from the move's target, or being deleted (its database is to be dropped,
// which a slot in use there would refuse). "" if it stays.
func tenantLeft(t catalog.Tenant, m *move) string {
	switch {
	case t.ServerID != m.toID:
		return fmt.Sprintf("tenant %s moved on to server %s", t.Slug, t.Server)
	case t.State != catalog.TenantActive && t.State != catalog.TenantSuspended:
		return fmt.Sprintf("tenant %s is %s", t.Slug, t.State)
	}
	return ""
}

// schemaMoved says why the live and the kept database are at different
// schema versions (DDL is not streamed), "" when they are not.
func schemaMoved(ctx context.Context, live, kept Querier) (string, error) {
	lv, err := readSchemaVersion(ctx, live)
	if err != nil {
		return "", err
	}
	kv, err := readSchemaVersion(ctx, kept)
	if err != nil {
		return "", err
	}
	if lv != kv {
		return fmt.Sprintf("the tenant's schema is at version %s, the kept source's at version %s (a migration since the switch: DDL is not streamed)", lv, kv), nil
	}
	return "", nil
}

// openKept opens keep id's stream from the tenant's database on server (the
// live one), applying on kept from the position kept's ledger holds.
func (s *Service) openKept(ctx context.Context, id int64, server, database string, kept Querier) (*Stream, error) {
	return s.openLedgered(ctx, id, server, database, kept, stepKeepApplied)
}

// openLedgered opens move id's stream from the tenant's database on server,
// applying on to from the position to's ledger holds; step is the test
// hook's point after each commit ("" for none).
func (s *Service) openLedgered(ctx context.Context, id int64, server, database string, kept Querier, step string) (*Stream, error) {
	var owner int64
	var from LSN
	if err := kept.QueryRow(ctx, "SELECT move_id, lsn FROM "+keepSchema+".progress").Scan(&owner, &from); err != nil {
		return nil, fmt.Errorf("kept source: the keep's ledger: %w: %w", err, errDrift)
	}
	if owner != id {
		return nil, fmt.Errorf("kept source: its keep ledger is move %d's, not move %d's: %w", owner, id, errDrift)
	}
	cfg, err := s.serverConfig(ctx, server, database)
	if err != nil {
		return nil, err
	}
	rcfg := cfg.Config.Copy()
	rcfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, rcfg)
	if err != nil {
		return nil, fmt.Errorf("server %s: replication connection: %w", server, err)
	}
	cs := newChangeSet()
	cs.journal = &changeJournal{tables: map[string]bool{}}
	return &Stream{name: slotName(id), conn: conn, consistentPoint: from, applied: from, relations: map[uint32]*relation{},
		changes: cs, ledger: &keepLedger{s: s, moveID: id, step: step}}, nil
}

// checkSlotStatus fails with a *SlotLostError when slot name on server is
// lost or unreserved (max_slot_wal_keep_size), or is gone.
func checkSlotStatus(ctx context.Context, q Querier, name, server string) error {
	var status string
	var exists bool
	err := q.QueryRow(ctx, "SELECT count(*) > 0, coalesce(max(wal_status), '') FROM pg_replication_slots WHERE slot_name = $1", name).Scan(&exists, &status)
	if err != nil {
		return fmt.Errorf("server %s: %w", server, err)
	}
	if !exists {
		status = "gone"
	}
	if status == "lost" || status == "unreserved" || status == "gone" {
		return &SlotLostError{Slot: name, Server: server, Status: status}
	}
	return nil
}

// takeSlot waits a bounded while for slot name to be free (the keep job
// lets go of it when it sees the revert), then terminates its holder: the
// slot is the mover's.
func takeSlot(ctx context.Context, conn *pgx.Conn, name string) error {
	deadline := time.Now().Add(slotReleaseWait)
	for {
		var pid int32
		if err := conn.QueryRow(ctx, "SELECT coalesce(max(active_pid), 0) FROM pg_replication_slots WHERE slot_name = $1", name).Scan(&pid); err != nil {
			return err
		}
		if pid == 0 {
			return nil
		}
		if time.Now().After(deadline.Add(slotReleaseWait)) {
			return fmt.Errorf("replication slot %s is still in use (pid %d) after %s", name, pid, 2*slotReleaseWait)
		}
		if time.Now().After(deadline) {
			if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// abortKeep undoes what a move aborted before its switch made for its
// keep: the slot and publication on its target, a ledger on its source.
func (s *Service) abortKeep(ctx context.Context, w *work) error {
	if err := s.dropKeep(ctx, w.to.Name, w.t.Database, w.m.ID); err != nil {
		return err
	}
	// The source serves again: a ledger there is this move's (startKeep).
	// An in-step revert's kept source (the reverted move's ledger) is its
	// target, untouched.
	_, err := w.lock.Exec(ctx, "DROP SCHEMA IF EXISTS "+keepSchema+" CASCADE")
	return err
}
