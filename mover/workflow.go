package mover

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/golang-migrate/migrate/v4/database"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/tenantplane/tenantplane/catalog"
)

// moveArgs is the durable job that drives one move through its phases.
// Each phase is recorded in the ledger and idempotent, so a job that dies
// anywhere (SIGKILL included) is taken up again, by a restart or another
// replica, and finishes the move or rolls it back: never half-fenced.
type moveArgs struct {
	MoveID int64 `json:"move_id" river:"unique"`
}

func (moveArgs) Kind() string { return "tenantplane.move" }

func (moveArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: queue, UniqueOpts: river.UniqueOpts{ByArgs: true}}
}

type moveWorker struct {
	river.WorkerDefaults[moveArgs]
	s *Service
}

// Timeout: a move takes as long as its copy; the source lock it holds
// (lockSource) keeps a second run of it out.
func (w *moveWorker) Timeout(*river.Job[moveArgs]) time.Duration { return -1 }

func (w *moveWorker) Work(ctx context.Context, job *river.Job[moveArgs]) error {
	s, id := w.s, job.Args.MoveID
	err := s.run(ctx, id)
	var snooze *river.JobSnoozeError
	if err == nil || errors.As(err, &snooze) {
		return err
	}
	logger := s.logger.With("move_id", id)
	if ctx.Err() != nil || errors.Is(err, errInterrupted) {
		logger.WarnContext(ctx, "move interrupted; it will resume", "error", err)
		return err
	}
	logger.ErrorContext(ctx, "move step failed", "error", err, "attempt", job.Attempt)
	bg := context.WithoutCancel(ctx)
	_, _ = s.store.Pool().Exec(bg, `UPDATE moves SET last_error = $2, updated_at = now() WHERE id = $1`, id, err.Error())
	if job.Attempt >= job.MaxAttempts {
		// The last try: give the tenant back its source rather than leave
		// it held or fenced with no job to finish the move.
		m, gerr := getMove(bg, s.store.Pool(), id)
		if gerr == nil && cancellable(m.Phase) {
			if aerr := s.abort(bg, &work{m: &m}, "gave up after "+strconv.Itoa(job.Attempt)+" attempts: "+err.Error()); aerr != nil {
				return errors.Join(err, aerr)
			}
			return nil
		}
	}
	return err
}

// errInterrupted marks a phase stopped on purpose (tests' crash hook).
var errInterrupted = errors.New("interrupted")

// work is one run of a move's job: the move, its tenant and servers, and
// the connections it holds.
type work struct {
	m        *move
	t        catalog.Tenant
	from, to catalog.Server
	version  int64
	lock     *pgx.Conn // to the source tenant database, holding its migration lock
	stream   *Stream
	streamTo *pgx.Conn // the target tenant database, where the stream applies
	// snapshotVerified: this run verified the copy against the stream's
	// snapshot, so that its fence need only verify what the stream
	// applied since (changes, kept from the stream once it is closed).
	snapshotVerified bool
	changes          *ChangeSet
	// copied is what this run's copy sent (CopyResult.Copied); fenced says
	// the source was fenced all through it, so that it still holds.
	copied       []CopiedTable
	copiedFenced bool
	keep         *keepStart // keeping the source in step after the switch (keep.go)
	resumed      bool       // the stream was opened again from its slot (resume.go)
	// srcDB and dstDB are the source and target databases: the tenant's
	// own on both sides for a move; a pool database on one side for a
	// promotion or demotion (tier.go), whose own is the dedicated side's
	// names (t_<id>) even while the tenant is pooled.
	srcDB, dstDB string
	own          catalog.Tenant
}

func (w *work) close(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	if w.stream != nil {
		_ = w.stream.Close(ctx)
		w.stream = nil
	}
	if w.streamTo != nil {
		_ = w.streamTo.Close(ctx)
		w.streamTo = nil
	}
	if w.lock != nil {
		_ = w.lock.Close(ctx) // releases the lock
		w.lock = nil
	}
}

func slotName(id int64) string { return "tenantplane_move_" + strconv.FormatInt(id, 10) }

// migrationLockID is the advisory lock golang-migrate's pgx/v5 driver takes
// on a database while it migrates it (schema public, table
// schema_migrations): holding it keeps fan-out from migrating the tenant
// mid-move (fan-out takes a held lock as transient and retries later).
func migrationLockID(db string) (int64, error) {
	id, err := database.GenerateAdvisoryLockId(db, Schema, migrationsTable)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(id, 10, 64)
}

// run takes the move from its recorded phase to its end.
func (s *Service) run(ctx context.Context, id int64) error {
	m, err := getMove(ctx, s.store.Pool(), id)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if !m.Open() {
		return nil
	}
	if m.Phase == PhaseSwitched {
		return s.finish(ctx, &m)
	}
	w := &work{m: &m}
	defer w.close(ctx)
	if err := s.load(ctx, w); err != nil {
		return err
	}
	// The source lock, on a connection of its own for the whole move: one
	// run of the move at a time, and no fan-out migration under it.
	if w.lock, err = s.connect(ctx, w.from.Name, w.srcDB); err != nil {
		return fmt.Errorf("server %s: %w", w.from.Name, err)
	}
	lockID, err := migrationLockID(w.srcDB)
	if err != nil {
		return err
	}
	var locked bool
	if err := w.lock.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", lockID).Scan(&locked); err != nil {
		return fmt.Errorf("server %s: %w", w.from.Name, err)
	}
	if !locked {
		s.logger.InfoContext(ctx, "move waits: the tenant's database is being migrated (or moved by another run)", "move_id", id, "tenant", w.t.Slug)
		return river.JobSnooze(2 * time.Second)
	}
	// The tenant's schema as the source has it: mid fan-out the catalog's
	// copy may lag.
	v, err := readSchemaVersion(ctx, w.lock)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	if v.Dirty {
		return s.abort(ctx, w, fmt.Sprintf("the source's schema is dirty at version %d: fix it first", v.Version))
	}
	w.version = v.Version
	if m.inStep {
		return s.runInStep(ctx, w)
	}

	for {
		if cancellable(m.Phase) {
			if c, err := s.cancelRequested(ctx, &m); err != nil {
				return err
			} else if c {
				return s.abort(ctx, w, "cancelled")
			}
		}
		var err error
		switch m.Phase {
		case PhasePending:
			err = s.prepare(ctx, w)
		case PhaseFenced:
			err = s.afterFence(ctx, w)
		case PhaseCopying:
			err = s.copying(ctx, w)
		case PhaseCatchingUp:
			err = s.catchingUp(ctx, w)
		case PhaseVerifying:
			err = s.verify(ctx, w)
		case PhaseSwitched:
			return s.finish(ctx, &m)
		default:
			return nil
		}
		var mismatch *MismatchError
		if errors.As(err, &mismatch) {
			return s.abort(ctx, w, "verification failed: "+mismatch.Error())
		}
		var lost *SlotLostError
		if errors.As(err, &lost) {
			return s.abort(ctx, w, lost.Error())
		}
		if err != nil {
			return err
		}
	}
}

// load reads the tenant and both servers of a move.
func (s *Service) load(ctx context.Context, w *work) (err error) {
	if w.t, err = s.store.GetTenantByID(ctx, w.m.TenantID); err != nil {
		return err
	}
	if w.from, err = s.store.GetServer(ctx, w.m.From); err != nil {
		return err
	}
	if w.to, err = s.store.GetServer(ctx, w.m.To); err != nil {
		return err
	}
	w.sides()
	return nil
}

// prepare makes the target database; in the copy mode it then fences the source.
func (s *Service) prepare(ctx context.Context, w *work) error {
	if w.m.Kind != KindDemote { // a demotion's target is a pool database, made already
		if err := s.cfg.Targets.PrepareTarget(ctx, w.own, w.to, w.version); err != nil {
			return fmt.Errorf("preparing the target on %s: %w", w.to.Name, err)
		}
	} else if err := s.unfenceTargetPool(ctx, w); err != nil {
		return err
	}
	if w.m.Mode == ModeCopy {
		if err := s.holdAndFence(ctx, w); err != nil {
			return err
		}
		return s.setPhase(ctx, w.m, PhaseFenced)
	}
	return s.setPhase(ctx, w.m, PhaseCopying)
}

// afterFence: in the copy mode the copy comes next; in the online mode the
// last catch-up, or (a resumed move, whose stream is gone) a copy of the
// fenced source.
func (s *Service) afterFence(ctx context.Context, w *work) error {
	if err := s.holdAndFence(ctx, w); err != nil { // again, after a restart
		return err
	}
	if w.m.Mode == ModeCopy {
		return s.setPhase(ctx, w.m, PhaseCopying)
	}
	if _, err := s.resumeStream(ctx, w); err != nil {
		return err
	}
	if w.stream != nil {
		if err := s.checkSlot(ctx, w); err != nil {
			return err
		}
		if err := lastCatchUp(ctx, w, w.streamTo); err != nil {
			return err
		}
		w.changes = w.stream.Changes()
		_ = w.stream.Close(ctx)
		w.stream = nil
	} else if err := s.copyAll(ctx, w, ""); err != nil {
		return err
	}
	if err := DropStream(ctx, w.lock, slotName(w.m.ID)); err != nil {
		return err
	}
	return s.setPhase(ctx, w.m, PhaseVerifying)
}

// lastCatchUp applies, under the fence, the stream up to the fenced
// source's WAL on target, and moves target's sequences up to the source's.
func lastCatchUp(ctx context.Context, w *work, target *pgx.Conn) error {
	// The position, then the flush of all before it (and of CurrentLSN's
	// record past it): the stream gets there at once, not after the WAL
	// writer's next round where commits are asynchronous.
	until, err := CurrentLSN(ctx, w.lock)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	if err := flushWAL(ctx, w.lock); err != nil {
		return fmt.Errorf("source: %w", err)
	}
	w.stream.poll = fencedPoll
	if err := w.stream.CatchUp(ctx, target, until, nil); err != nil {
		return err
	}
	_, err = SyncSequences(ctx, w.lock, target)
	return err
}

// flushWAL has the source flush its WAL now: a commit with
// synchronous_commit on flushes all before it, so the WAL sender can send
// the tenant's last commits at once rather than after the WAL writer's
// next round (wal_writer_delay, 200ms by default), where a server commits
// asynchronously. It shortens the write pause.
//
// The transaction writes a record of its own (a transactional logical
// message, which the stream's pgoutput at protocol 1 does not send): a
// commit that wrote nothing but its xid is not flushed whatever
// synchronous_commit says.
func flushWAL(ctx context.Context, conn *pgx.Conn) error {
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = on; SELECT pg_logical_emit_message(true, 'tenantplane', '')")
		return err
	})
}

// copying copies the source: fenced in the copy mode, under a new stream's
// snapshot in the online mode.
func (s *Service) copying(ctx context.Context, w *work) error {
	if w.m.Mode == ModeCopy {
		if err := s.holdAndFence(ctx, w); err != nil {
			return err
		}
		if err := s.copyAll(ctx, w, ""); err != nil {
			return err
		}
		return s.setPhase(ctx, w.m, PhaseVerifying)
	}
	// A resumed online move that had not verified its copy starts its
	// stream over: a fence or hold left by a run that died before it
	// recorded the phase fenced goes first.
	if err := s.liftFence(ctx, w); err != nil {
		return err
	}
	if err := DropStream(ctx, w.lock, slotName(w.m.ID)); err != nil {
		return err
	}
	srcCfg, err := s.serverConfig(ctx, w.from.Name, w.srcDB)
	if err != nil {
		return err
	}
	if w.stream, err = openStream(ctx, &srcCfg.Config, w.lock, slotName(w.m.ID), w.tenantFilter()); err != nil {
		return err
	}
	if err := s.copyAll(ctx, w, w.stream.Snapshot()); err != nil {
		return err
	}
	if err := s.hook(ctx, w.m.ID, stepCopied); err != nil {
		return err
	}
	if err := s.checkSlot(ctx, w); err != nil {
		return err
	}
	// The whole copy verified out of the fence, against the snapshot it was
	// copied under: still valid, the stream has not started.
	if err := s.verifyCopy(ctx, w, VerifyOptions{SourceSnapshot: w.stream.Snapshot(), Copied: w.copied, TenantID: w.tenantFilter()}); err != nil {
		return err
	}
	w.snapshotVerified = true
	if w.streamTo, err = s.connect(ctx, w.to.Name, w.dstDB); err != nil {
		return fmt.Errorf("target: %w", err)
	}
	if err := s.ledgerStream(ctx, w); err != nil {
		return err
	}
	return s.setPhase(ctx, w.m, PhaseCatchingUp)
}

// catchUpQuiet: the catch-up goes into the fence only after a round that
// took less than this (the writes left for the fence are about one round's).
const catchUpQuiet = 200 * time.Millisecond

// catchUpClose applies w's stream on target, round after round, until the
// target is within CatchUpLag of the source after a round quicker than
// catchUpQuiet (or after 100 rounds), recording the lag; slot checks the
// stream's slot. cancelled: the move was cancelled meanwhile.
func (s *Service) catchUpClose(ctx context.Context, w *work, target *pgx.Conn, slot func() error) (cancelled bool, err error) {
	for round := 0; ; round++ {
		if err := slot(); err != nil {
			return false, err
		}
		until, err := CurrentLSN(ctx, w.lock)
		if err != nil {
			return false, fmt.Errorf("source: %w", err)
		}
		roundStart := time.Now()
		if err := w.stream.CatchUp(ctx, target, until, nil); err != nil {
			if lost := slot(); lost != nil {
				return false, lost
			}
			return false, err
		}
		now, err := CurrentLSN(ctx, w.lock)
		if err != nil {
			return false, fmt.Errorf("source: %w", err)
		}
		lag := int64(0)
		if now > w.stream.Applied() {
			lag = int64(now - w.stream.Applied())
		}
		if _, err := s.store.Pool().Exec(ctx, `UPDATE moves SET lag_bytes = $2, updated_at = now() WHERE id = $1`, w.m.ID, lag); err != nil {
			return false, catalog.Classify(err, "move")
		}
		w.m.LagBytes = lag
		if lag <= s.cfg.CatchUpLag && time.Since(roundStart) < catchUpQuiet || round >= 100 {
			return false, nil
		}
		if c, err := s.cancelRequested(ctx, w.m); err != nil || c {
			return c, err
		}
	}
}

// catchingUp applies the stream until the target is within CatchUpLag of
// the source, then fences the source for the last catch-up.
func (s *Service) catchingUp(ctx context.Context, w *work) error {
	if ok, err := s.resumeStream(ctx, w); err != nil {
		return err
	} else if !ok { // the stream died with its run and cannot resume
		return s.setPhase(ctx, w.m, PhaseCopying)
	}
	if c, err := s.catchUpClose(ctx, w, w.streamTo, func() error { return s.checkSlot(ctx, w) }); err != nil || c {
		return err // the loop in run aborts a cancelled move
	}
	s.prepareKeep(ctx, w)
	if err := s.holdAndFence(ctx, w); err != nil {
		return err
	}
	return s.setPhase(ctx, w.m, PhaseFenced)
}

// SlotLostError is why an online move aborts when its slot on the source
// lost the WAL its stream has yet to apply (wal_status lost), or is past
// max_slot_wal_keep_size and may lose it at the next checkpoint
// (unreserved): the catch-up could not be complete, so the move gives the
// tenant back its source rather than go on.
type SlotLostError struct {
	Slot, Server, Status string
}

func (e *SlotLostError) Error() string {
	return fmt.Sprintf("replication slot %s on %s is %s: the source has removed, or may remove at its next checkpoint, WAL the move has yet to apply "+
		"(max_slot_wal_keep_size): start the move again when the source writes less, or raise max_slot_wal_keep_size there", e.Slot, e.Server, e.Status)
}

// checkSlot fails with a *SlotLostError when the move's slot is lost or
// unreserved.
func (s *Service) checkSlot(ctx context.Context, w *work) error {
	var status string
	err := w.lock.QueryRow(ctx, "SELECT coalesce(max(wal_status), '') FROM pg_replication_slots WHERE slot_name = $1", slotName(w.m.ID)).Scan(&status)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	if status == "lost" || status == "unreserved" {
		return &SlotLostError{Slot: slotName(w.m.ID), Server: w.from.Name, Status: status}
	}
	return nil
}

// fencedVerify holds and fences again (idempotent), moves the target's
// sequences up to the source's, and compares both sides with the options
// opts gives (from the target): a difference is a *MismatchError.
func (s *Service) fencedVerify(ctx context.Context, w *work, opts func(dst *pgx.Conn) (VerifyOptions, error)) error {
	if err := s.holdAndFence(ctx, w); err != nil {
		return err
	}
	src, err := s.connect(ctx, w.from.Name, w.srcDB)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	defer src.Close(context.WithoutCancel(ctx))
	dst, err := s.connect(ctx, w.to.Name, w.dstDB)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	defer dst.Close(context.WithoutCancel(ctx))
	if _, err := SyncSequences(ctx, src, dst); err != nil {
		return err
	}
	o, err := opts(dst)
	if err != nil {
		return err
	}
	res, err := VerifyWith(ctx, src, dst, o)
	changedOnly := o.Copied == nil && o.Changed != nil && !o.Changed.Overflowed()
	if changedOnly {
		s.verifies.changed.Add(1)
	} else {
		s.verifies.full.Add(1)
	}
	if err != nil {
		return err
	}
	s.verifies.last.Store(int64(res.Duration))
	s.logger.InfoContext(ctx, "move verified", "move_id", w.m.ID, "tenant", w.t.Slug, "rows_written_only", changedOnly,
		"keys", o.Changed.Keys(), "duration", res.Duration)
	return nil
}

// verify compares both sides under the fence; a difference aborts the move.
func (s *Service) verify(ctx context.Context, w *work) error {
	err := s.fencedVerify(ctx, w, func(dst *pgx.Conn) (VerifyOptions, error) { return s.verifyOptions(ctx, w, dst) })
	if err != nil {
		return err
	}
	s.startKeep(ctx, w)
	return s.switchOver(ctx, w)
}

// verifyOptions is what the fence of a move verifies: the rows its copy
// sent, the rows its stream wrote, or every row.
func (s *Service) verifyOptions(ctx context.Context, w *work, dst *pgx.Conn) (VerifyOptions, error) {
	var err error
	if (w.resumed || w.changes == nil) && w.m.Mode == ModeOnline && w.m.Kind == KindMove && w.m.Reverts == nil && !w.copiedFenced {
		// The stream ran in more than one run, or this run only verifies:
		// the target's ledger names every row the stream wrote since the
		// snapshot the copy was verified under (resume.go).
		if w.changes, err = loadKeptChanges(ctx, dst, w.m.ID); err != nil {
			s.logger.WarnContext(ctx, "move verifies every row: no ledger of its stream on the target", "move_id", w.m.ID, "error", err)
			w.changes = nil
		} else {
			w.snapshotVerified = true
		}
	}
	opts := VerifyOptions{TenantID: w.tenantFilter()}
	switch {
	case w.copiedFenced:
		// This run copied the fenced source: its rows as the copy sent
		// them, against the target's read back.
		opts.Copied = w.copied
	case w.m.Mode != ModeOnline || w.m.Reverts != nil || !w.snapshotVerified || w.changes == nil:
		// The copy mode resumed after its copy, a revert, or a run that did
		// not verify the copy under the stream's snapshot (resumed): every row
		// (of the tenant, for a promotion or demotion).
	case w.changes.Overflowed():
		reason := fmt.Sprintf("; more than %d rows written during the move: every row verified in the fence", maxChangedKeys)
		s.logger.WarnContext(ctx, "move verifies every row in its fence", "move_id", w.m.ID, "tenant", w.t.Slug, "reason", reason[2:])
		if _, err := s.store.Pool().Exec(ctx, `UPDATE moves SET mode_reason = mode_reason || $2, updated_at = now() WHERE id = $1`, w.m.ID, reason); err != nil {
			return opts, catalog.Classify(err, "move")
		}
		w.m.ModeReason += reason
	default:
		opts.Changed = w.changes
	}
	return opts, nil
}

// verifyCopy verifies the target against the source with opts.
func (s *Service) verifyCopy(ctx context.Context, w *work, opts VerifyOptions) error {
	src, err := s.connect(ctx, w.from.Name, w.srcDB)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	defer src.Close(context.WithoutCancel(ctx))
	dst, err := s.connect(ctx, w.to.Name, w.dstDB)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	defer dst.Close(context.WithoutCancel(ctx))
	res, err := VerifyWith(ctx, src, dst, opts)
	if err != nil {
		return err
	}
	s.logger.InfoContext(ctx, "move's copy verified against its snapshot", "move_id", w.m.ID, "tenant", w.t.Slug, "duration", res.Duration)
	return nil
}

// holdAndFence makes every router hold the tenant's requests (tenants.held
// and a NOTIFY), gives its transactions in flight up to HoldWait to end,
// then fences the source at the database. The hold's start is the move's
// fenced_at, where its write pause begins. Idempotent.
func (s *Service) holdAndFence(ctx context.Context, w *work) error {
	err := s.store.InTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE tenants SET held = true, updated_at = now() WHERE id = $1 AND move_id = $2 AND NOT held`, w.t.ID, w.m.ID)
		if err != nil {
			return catalog.Classify(err, "tenant")
		}
		if _, err := tx.Exec(ctx, `UPDATE moves SET fenced_at = coalesce(fenced_at, clock_timestamp()), updated_at = now() WHERE id = $1`, w.m.ID); err != nil {
			return catalog.Classify(err, "move")
		}
		if tag.RowsAffected() == 0 {
			return nil
		}
		return notify(ctx, tx, w.t.ID)
	})
	if err != nil {
		return err
	}
	if w.m.Kind == KindPromote {
		// A pool database: its fence waits for the transactions that hold
		// its tables, then refuses the tenant's rows.
		return FenceTenantRows(ctx, w.lock, catalog.PoolName(w.m.poolID), w.t.ID)
	}
	deadline := time.Now().Add(s.cfg.HoldWait)
	for time.Now().Before(deadline) {
		var busy int
		if err := w.lock.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = $2 AND xact_start IS NOT NULL`,
			w.srcDB, w.own.Role).Scan(&busy); err != nil {
			return fmt.Errorf("source: %w", err)
		}
		if busy == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return Fence(ctx, w.lock, w.srcDB, w.own.Role)
}

// liftFence undoes holdAndFence: the source serves again. Idempotent.
func (s *Service) liftFence(ctx context.Context, w *work) error {
	if err := s.unfenceSource(ctx, w, w.lock); err != nil {
		return err
	}
	return s.store.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE moves SET fenced_at = NULL, updated_at = now() WHERE id = $1`, w.m.ID); err != nil {
			return catalog.Classify(err, "move")
		}
		tag, err := tx.Exec(ctx, `UPDATE tenants SET held = false, updated_at = now() WHERE id = $1 AND held`, w.t.ID)
		if err != nil || tag.RowsAffected() == 0 {
			return catalog.Classify(err, "tenant")
		}
		return notify(ctx, tx, w.t.ID)
	})
}

// copyAll copies every table into the emptied target, recording progress.
func (s *Service) copyAll(ctx context.Context, w *work, snapshot string) error {
	src, err := s.connect(ctx, w.from.Name, w.srcDB)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	defer src.Close(context.WithoutCancel(ctx))
	dst, err := s.connect(ctx, w.to.Name, w.dstDB)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	defer dst.Close(context.WithoutCancel(ctx))
	var done struct{ rows, bytes int64 }
	last := time.Now()
	progress := func(p TableProgress) {
		if p.Done {
			done.rows += p.Rows
			done.bytes += p.Bytes
		}
		if time.Since(last) < 500*time.Millisecond {
			return
		}
		last = time.Now()
		rows, bytes := done.rows, done.bytes
		if !p.Done {
			rows, bytes = rows+p.Rows, bytes+p.Bytes
		}
		_, _ = s.store.Pool().Exec(ctx, `UPDATE moves SET rows_copied = $2, bytes_copied = $3, updated_at = now() WHERE id = $1`, w.m.ID, rows, bytes)
	}
	if snapshot == "" && w.m.Kind == KindMove {
		// A copy of the fenced source: a stream's ledger on the target
		// (resume.go) no longer names what differs from the source.
		if _, err := dst.Exec(ctx, "DROP SCHEMA IF EXISTS "+keepSchema+" CASCADE"); err != nil {
			return fmt.Errorf("target: %w", err)
		}
	}
	res, err := Copy(ctx, src, dst, CopyOptions{Truncate: true, Snapshot: snapshot, Progress: progress, TenantID: w.tenantFilter(),
		SharedTarget: w.m.Kind == KindDemote})
	if err != nil {
		return err
	}
	w.copied, w.copiedFenced = res.Copied, snapshot == ""
	w.m.RowsCopied, w.m.BytesCopied = res.Rows, res.Bytes
	_, err = s.store.Pool().Exec(ctx, `UPDATE moves SET rows_copied = $2, bytes_copied = $3, updated_at = now() WHERE id = $1`, w.m.ID, res.Rows, res.Bytes)
	return catalog.Classify(err, "move")
}

// switchOver flips the tenant to the target in one catalog transaction:
// its server, the hold lifted, the move switched with its write pause and
// the source's keep, the routers told, and the job that drops the source
// once the keep is over.
func (s *Service) switchOver(ctx context.Context, w *work) error {
	keep := max(s.cfg.Keep, 0)
	err := s.store.InTx(ctx, func(tx pgx.Tx) error {
		tag, err := s.switchTenant(ctx, tx, w)
		if err != nil {
			return catalog.Classify(err, "tenant")
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("tenant %s no longer names move %d as its own", w.t.Slug, w.m.ID)
		}
		var keepUntil time.Time
		var pause int64
		err = tx.QueryRow(ctx, `UPDATE moves SET phase = 'switched', switched_at = clock_timestamp(),
				write_pause_ms = (extract(epoch FROM clock_timestamp() - coalesce(fenced_at, clock_timestamp())) * 1000)::bigint,
				keep_until = clock_timestamp() + make_interval(secs => $2), last_error = '', updated_at = now()
			WHERE id = $1 RETURNING keep_until, write_pause_ms`, w.m.ID, keep.Seconds()).Scan(&keepUntil, &pause)
		if err != nil {
			return catalog.Classify(err, "move")
		}
		if w.m.Reverts != nil {
			if _, err := tx.Exec(ctx, `UPDATE moves SET phase = 'reverted', finished_at = now(), updated_at = now() WHERE id = $1`, *w.m.Reverts); err != nil {
				return catalog.Classify(err, "move")
			}
		}
		details := map[string]any{"move_id": w.m.ID, "from": w.from.Name, "to": w.to.Name, "mode": w.m.Mode,
			"write_pause_ms": pause, "keep_until": keepUntil, "rows_copied": w.m.RowsCopied}
		if w.m.Reverts != nil {
			details["reverts"] = *w.m.Reverts
		}
		if err := catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: "mover", Action: w.auditAction(), TenantID: w.t.ID,
			Subject: w.t.Slug, Details: details}); err != nil {
			return err
		}
		if w.m.Plan != "" {
			// A change of plan across tiers: the tenant takes its new plan
			// with the tier, in this transaction.
			if err := catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: "mover", Action: "tenant.plan_changed", TenantID: w.t.ID,
				Subject: w.t.Slug, Details: map[string]any{"from": w.m.FromPlan, "to": w.m.Plan, "move_id": w.m.ID}}); err != nil {
				return err
			}
		}
		if err := notify(ctx, tx, w.t.ID); err != nil {
			return err
		}
		if err := s.recordKeep(ctx, tx, w); err != nil {
			return err
		}
		_, err = s.jobs.Client().InsertTx(ctx, tx, dropSourceArgs{MoveID: w.m.ID}, &river.InsertOpts{Queue: queue, ScheduledAt: keepUntil})
		return err
	})
	if err != nil {
		return err
	}
	w.m.Phase = PhaseSwitched
	s.logger.InfoContext(ctx, "tenant moved", "move_id", w.m.ID, "tenant", w.t.Slug, "from", w.from.Name, "to", w.to.Name)
	if err := s.hook(ctx, w.m.ID, PhaseSwitched); err != nil {
		return err
	}
	return s.finish(ctx, w.m)
}

func (s *Service) finish(ctx context.Context, m *move) error {
	_, err := s.store.Pool().Exec(ctx, `UPDATE moves SET phase = 'done', finished_at = now(), updated_at = now() WHERE id = $1 AND phase = 'switched'`, m.ID)
	if err != nil {
		return catalog.Classify(err, "move")
	}
	m.Phase = PhaseDone
	return nil
}

// abort rolls a move back before its switch: the stream and the fence go,
// the target is dropped (a revert's target, the source its move kept, is
// fenced again instead), and the tenant is released onto its source.
func (s *Service) abort(ctx context.Context, w *work, reason string) error {
	s.logger.WarnContext(ctx, "move aborted", "move_id", w.m.ID, "tenant", w.m.Tenant, "reason", reason)
	if w.t.ID == "" {
		if err := s.load(ctx, w); err != nil {
			return err
		}
	}
	if w.stream != nil {
		_ = w.stream.Close(context.WithoutCancel(ctx))
		w.stream = nil
	}
	if w.lock == nil {
		conn, err := s.connect(ctx, w.from.Name, w.srcDB)
		if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		defer conn.Close(context.WithoutCancel(ctx))
		w.lock = conn
		defer func() { w.lock = nil }()
	}
	if err := DropStream(ctx, w.lock, slotName(w.m.ID)); err != nil {
		return err
	}
	if err := s.unfenceSource(ctx, w, w.lock); err != nil {
		return err
	}
	if err := s.abortKeep(ctx, w); err != nil {
		return err
	}
	// A promotion or demotion that reverts another copied into that one's
	// kept source, which is no longer what it kept: dropped as any target
	// (a later revert copies again).
	if w.m.Reverts == nil || w.m.Kind != KindMove {
		if err := s.dropTarget(ctx, w); err != nil {
			return fmt.Errorf("dropping the target on %s: %w", w.to.Name, err)
		}
	} else if err := s.refenceKept(ctx, w); err != nil {
		return err
	}
	return s.store.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE tenants SET held = false, move_id = NULL, updated_at = now() WHERE id = $1 AND move_id = $2`, w.t.ID, w.m.ID); err != nil {
			return catalog.Classify(err, "tenant")
		}
		if _, err := tx.Exec(ctx, `UPDATE moves SET phase = 'aborted', last_error = $2, finished_at = now(), updated_at = now() WHERE id = $1`, w.m.ID, reason); err != nil {
			return catalog.Classify(err, "move")
		}
		if err := catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: "mover", Action: "tenant.move_aborted", TenantID: w.t.ID,
			Subject: w.t.Slug, Reason: reason, Details: map[string]any{"move_id": w.m.ID, "from": w.from.Name, "to": w.to.Name}}); err != nil {
			return err
		}
		w.m.Phase, w.m.LastError = PhaseAborted, reason
		return notify(ctx, tx, w.t.ID)
	})
}

// refenceKept fences again the kept source an aborted revert was copying
// into: the move it reverts stays done, its source kept.
func (s *Service) refenceKept(ctx context.Context, w *work) error {
	conn, err := s.connect(ctx, w.to.Name, w.t.Database)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return Fence(ctx, conn, w.t.Database, w.t.Role)
}

// dropSourceArgs is the durable job that drops a moved tenant's kept source
// once the move's keep is over.
type dropSourceArgs struct {
	MoveID int64 `json:"move_id" river:"unique"`
}

func (dropSourceArgs) Kind() string { return "tenantplane.move_drop_source" }

func (dropSourceArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: queue, UniqueOpts: river.UniqueOpts{ByArgs: true}}
}

type dropSourceWorker struct {
	river.WorkerDefaults[dropSourceArgs]
	s *Service
}

func (w *dropSourceWorker) Work(ctx context.Context, job *river.Job[dropSourceArgs]) error {
	return w.s.dropSource(ctx, job.Args.MoveID)
}

// dropSource drops a done move's source once its keep is over, unless a
// revert is under way or done (then the source serves again).
func (s *Service) dropSource(ctx context.Context, id int64) error {
	var m move
	var wait time.Duration
	err := s.store.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT FROM moves WHERE id = $1 FOR UPDATE`, id); err != nil {
			return catalog.Classify(err, "move")
		}
		var err error
		if m, err = getMove(ctx, tx, id); err != nil {
			return err
		}
		if m.Phase != PhaseDone {
			return nil
		}
		if m.KeepUntil != nil && time.Until(*m.KeepUntil) > 0 {
			wait = time.Until(*m.KeepUntil)
			return nil
		}
		var reverting bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM moves WHERE reverts = $1 AND phase NOT IN ('done', 'aborted', 'reverted'))`, id).Scan(&reverting); err != nil {
			return catalog.Classify(err, "move")
		}
		if reverting {
			wait = 30 * time.Second
			return nil
		}
		if m.sourceDropped {
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE moves SET source_dropped = true, keep_in_step = false, keep_lag_bytes = 0,
			keep_reason = CASE WHEN keep_in_step THEN 'kept in step until the keep was over; the source and the slot are dropped' ELSE keep_reason END,
			updated_at = now() WHERE id = $1`, id); err != nil {
			return catalog.Classify(err, "move")
		}
		return catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: "mover", Action: "tenant.move_source_dropped", TenantID: m.TenantID,
			Subject: m.Tenant, Details: map[string]any{"move_id": id, "server": m.From}})
	})
	switch {
	case errors.Is(err, catalog.ErrNotFound):
		return nil
	case err != nil:
		return err
	case wait > 0:
		return river.JobSnooze(wait)
	case m.Phase != PhaseDone:
		return nil
	}
	t, err := s.store.GetTenantByID(ctx, m.TenantID)
	if err != nil {
		return err
	}
	if m.Kind != KindMove {
		return s.dropTierSource(ctx, &m, t)
	}
	// The keep's slot and publication on the target go first: nothing
	// streams into the source once it is gone.
	if err := s.dropKeep(ctx, m.To, t.Database, id); err != nil {
		return fmt.Errorf("dropping the keep's slot: %w", err)
	}
	if t.ServerID == m.fromID {
		// Moved back by another move: the database there is the live one.
		s.logger.WarnContext(ctx, "kept source not dropped: the tenant is on that server again", "move_id", id, "tenant", t.Slug)
		return nil
	}
	from, err := s.store.GetServer(ctx, m.From)
	if err != nil {
		return err
	}
	// Marked first, dropped after: a rerun drops again (idempotent), and a
	// revert that comes too late sees the mark.
	if err := s.cfg.Targets.DropDatabase(ctx, t, from); err != nil {
		return fmt.Errorf("dropping the kept source on %s: %w", from.Name, err)
	}
	s.logger.InfoContext(ctx, "kept source dropped", "move_id", id, "tenant", t.Slug, "server", from.Name)
	return nil
}
