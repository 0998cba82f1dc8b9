package mover

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// An in-step revert (moves.in_step) takes a tenant back onto the source
// its move kept in step (keep.go): the revert's source is the move's target
// (w.from, w.lock), its target the kept source (w.to). It copies nothing:
//
//   - pending: the move's keep must still be in step, else the revert
//     aborts saying so (a revert started again copies);
//   - catching_up: it takes the keep's slot over from the keep job (which
//     lets go when it sees the revert) and applies the tenant's writes to
//     the kept source with the keep's ledger, until it is within
//     CatchUpLag; then holds and fences the live database;
//   - fenced: the last catch-up, to the fenced database's WAL, and the
//     sequences;
//   - verifying: every table's count, and the rows written since the
//     move's switch (the keep's ledger) hashed on both sides; the kept
//     source lets the tenant role in again, the revert's own keep starts,
//     and the switch flips the tenant back.
//
// A difference, a lost slot or a stream that no longer applies aborts the
// revert (the tenant stays where it is, served) and ends the move's keep:
// the next revert copies. A cancelled revert leaves the keep going.

// runInStep takes an in-step revert from its recorded phase to its end.
func (s *Service) runInStep(ctx context.Context, w *work) error {
	x := *w.m.Reverts
	kept, err := s.connect(ctx, w.to.Name, w.t.Database)
	if err != nil {
		return fmt.Errorf("kept source on %s: %w", w.to.Name, err)
	}
	defer kept.Close(context.WithoutCancel(ctx))
	for {
		if cancellable(w.m.Phase) {
			if c, err := s.cancelRequested(ctx, w.m); err != nil {
				return err
			} else if c {
				return s.abort(ctx, w, "cancelled")
			}
		}
		var err error
		switch w.m.Phase {
		case PhasePending:
			err = s.inStepPending(ctx, w, x)
		case PhaseCatchingUp:
			err = s.inStepCatchUp(ctx, w, kept, x)
		case PhaseFenced:
			err = s.inStepFenced(ctx, w, kept, x)
		case PhaseVerifying:
			err = s.inStepVerify(ctx, w, kept, x)
		case PhaseSwitched:
			return s.finish(ctx, w.m)
		default:
			return nil
		}
		var mismatch *MismatchError
		var notInStep *notInStepError
		switch {
		case err == nil:
			continue
		case errors.As(err, &notInStep):
			return s.abort(ctx, w, err.Error())
		case errors.As(err, &mismatch):
			err = errors.New("verification failed: " + mismatch.Error())
		case !permanent(err):
			return err
		}
		// The kept source cannot be trusted to be in step any more.
		if w.stream != nil {
			_ = w.stream.Close(context.WithoutCancel(ctx))
			w.stream = nil
		}
		xm, gerr := getMove(ctx, s.store.Pool(), x)
		if gerr != nil {
			return errors.Join(err, gerr)
		}
		if serr := s.stopKeep(ctx, &xm, w.t.Database, "revert "+fmt.Sprint(w.m.ID)+": "+err.Error()); serr != nil {
			return errors.Join(err, serr)
		}
		return s.abort(ctx, w, err.Error()+": the source is no longer kept in step; revert again to copy it back")
	}
}

// notInStepError: the move's keep stopped before its revert could use it.
type notInStepError struct{ move int64 }

func (e *notInStepError) Error() string {
	return fmt.Sprintf("move %d's source is no longer kept in step (its keep_reason says why): revert it again to copy it back", e.move)
}

func (s *Service) inStepPending(ctx context.Context, w *work, x int64) error {
	xm, err := getMove(ctx, s.store.Pool(), x)
	if err != nil {
		return err
	}
	if !xm.KeepInStep || xm.sourceDropped {
		return &notInStepError{move: x}
	}
	return s.setPhase(ctx, w.m, PhaseCatchingUp)
}

// openInStep takes the keep's slot over and opens its stream.
func (s *Service) openInStep(ctx context.Context, w *work, kept *pgx.Conn, x int64) error {
	if err := checkSlotStatus(ctx, w.lock, slotName(x), w.from.Name); err != nil {
		return err
	}
	if err := takeSlot(ctx, w.lock, slotName(x)); err != nil {
		return fmt.Errorf("server %s: taking slot %s over: %w", w.from.Name, slotName(x), err)
	}
	st, err := s.openKept(ctx, x, w.from.Name, w.t.Database, kept)
	if err != nil {
		return err
	}
	w.stream = st
	return nil
}

func (s *Service) inStepCatchUp(ctx context.Context, w *work, kept *pgx.Conn, x int64) error {
	if w.m.fencedAt == nil {
		if err := s.openInStep(ctx, w, kept, x); err != nil {
			return err
		}
		slot := func() error { return checkSlotStatus(ctx, w.lock, slotName(x), w.from.Name) }
		if c, err := s.catchUpClose(ctx, w, kept, slot); err != nil || c {
			return err // runInStep aborts a cancelled revert
		}
		s.prepareKeep(ctx, w)
	}
	// A hold left by a run that died goes on: the stream resumes from the
	// kept source's ledger in the fenced phase.
	if err := s.holdAndFence(ctx, w); err != nil {
		return err
	}
	return s.setPhase(ctx, w.m, PhaseFenced)
}

func (s *Service) inStepFenced(ctx context.Context, w *work, kept *pgx.Conn, x int64) error {
	if err := s.holdAndFence(ctx, w); err != nil { // again, after a restart
		return err
	}
	if w.stream == nil {
		if err := s.openInStep(ctx, w, kept, x); err != nil {
			return err
		}
	}
	if err := lastCatchUp(ctx, w, kept); err != nil {
		return err
	}
	_ = w.stream.Close(ctx)
	w.stream = nil
	return s.setPhase(ctx, w.m, PhaseVerifying)
}

func (s *Service) inStepVerify(ctx context.Context, w *work, kept *pgx.Conn, x int64) error {
	err := s.fencedVerify(ctx, w, func(dst *pgx.Conn) (VerifyOptions, error) {
		changes, err := loadKeptChanges(ctx, dst, x)
		if err != nil {
			// A run that died past this point dropped the ledger: every row.
			s.logger.WarnContext(ctx, "revert verifies every row: the keep's ledger is gone", "move_id", w.m.ID, "tenant", w.t.Slug, "error", err)
			return VerifyOptions{}, nil
		}
		return VerifyOptions{Changed: changes}, nil
	})
	if err != nil {
		return err
	}
	if err := Unfence(ctx, kept, w.t.Database, w.t.Role); err != nil {
		return err
	}
	s.startKeep(ctx, w)
	if err := s.switchOver(ctx, w); err != nil {
		return err
	}
	// The reverted move's keep is over: its slot and publication go (a
	// process that dies first leaves them to the leftovers' scan).
	if err := dropKeepObjects(ctx, w.lock, slotName(x)); err != nil {
		s.logger.WarnContext(ctx, "dropping a reverted move's keep slot failed; the leftovers' scan will", "move_id", x, "error", err)
	}
	return nil
}
