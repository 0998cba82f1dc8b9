package mover

import (
	"context"
	"fmt"
)

// An online move's stream resumes from its slot after a restart.
//
// Once its copy is verified under the slot's snapshot, the stream applies
// on the target with a ledger there (keepLedger, the same as a kept
// source's): each applied transaction records in itself where it ends and
// the keys it wrote. A run that dies while catching up or fenced leaves the
// slot on the source and the ledger on the target; the next run opens the
// slot again from the ledger's position, skipping what the target holds
// already, instead of copying again, and its fence verifies the rows the
// ledger names (every one written since the snapshot, over all runs) with
// every table's count. Without both (the slot lost, the ledger gone, or
// another move's), the move copies again as before.

// ledgerStream gives the stream this run opened, its copy verified, a
// ledger on the target (w.streamTo) at the slot's consistent point.
func (s *Service) ledgerStream(ctx context.Context, w *work) error {
	if w.m.Kind != KindMove {
		return nil // a pool database is the target of many moves: no ledger of one there
	}
	if err := startLedger(ctx, w.streamTo, w.m.ID, w.stream.ConsistentPoint()); err != nil {
		return fmt.Errorf("target: %w", err)
	}
	w.stream.ledger = &keepLedger{s: s, moveID: w.m.ID}
	w.stream.changes.journal = &changeJournal{tables: map[string]bool{}}
	return nil
}

// resumeStream opens the stream of a run that died again from its slot and
// the target's ledger, if both are there: true when it did.
func (s *Service) resumeStream(ctx context.Context, w *work) (bool, error) {
	if w.m.Mode != ModeOnline || w.m.Kind != KindMove || w.stream != nil {
		return w.stream != nil, nil
	}
	var slot bool
	if err := w.lock.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)", slotName(w.m.ID)).Scan(&slot); err != nil {
		return false, fmt.Errorf("source: %w", err)
	}
	if !slot {
		return false, nil
	}
	dst, err := s.connect(ctx, w.to.Name, w.t.Database)
	if err != nil {
		return false, fmt.Errorf("target: %w", err)
	}
	var owner int64
	err = dst.QueryRow(ctx, `SELECT coalesce((SELECT move_id FROM `+keepSchema+`.progress), 0)
		WHERE to_regclass($1) IS NOT NULL`, keepSchema+".progress").Scan(&owner)
	if err != nil || owner != w.m.ID {
		dst.Close(context.WithoutCancel(ctx))
		return false, nil // no ledger of this move's there: copy again
	}
	if err := takeSlot(ctx, w.lock, slotName(w.m.ID)); err != nil {
		dst.Close(context.WithoutCancel(ctx))
		return false, fmt.Errorf("source: taking slot %s over: %w", slotName(w.m.ID), err)
	}
	st, err := s.openLedgered(ctx, w.m.ID, w.from.Name, w.t.Database, dst, "")
	if err != nil {
		dst.Close(context.WithoutCancel(ctx))
		return false, err
	}
	w.stream, w.streamTo, w.resumed, w.snapshotVerified = st, dst, true, true
	s.logger.InfoContext(ctx, "move's stream resumed from its slot", "move_id", w.m.ID, "tenant", w.t.Slug, "from", st.Applied())
	return true, nil
}
