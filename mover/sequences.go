package mover

import (
	"context"
	"fmt"
)

// Sequence is the state of a sequence of schema public: serial and identity
// columns' sequences as well as free-standing ones.
type Sequence struct {
	Name      string
	LastValue int64
	IsCalled  bool  // false: nextval returns LastValue itself (a new or reset sequence)
	Increment int64 // negative for a descending sequence
}

// Next is the value nextval would return now.
func (s Sequence) Next() int64 {
	if s.IsCalled {
		return s.LastValue + s.Increment
	}
	return s.LastValue
}

// atOrPast says whether s hands out no value that source has handed out or
// will hand out next: s's next value is at or beyond source's in the
// direction the sequence runs.
func (s Sequence) atOrPast(source Sequence) bool {
	if source.Increment < 0 {
		return s.Next() <= source.Next()
	}
	return s.Next() >= source.Next()
}

// Sequences reads every sequence of schema public (but those that belong to
// an extension), by name.
func Sequences(ctx context.Context, q Querier) ([]Sequence, error) {
	rows, err := q.Query(ctx, `
		SELECT c.relname, s.seqincrement
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			JOIN pg_sequence s ON s.seqrelid = c.oid
		WHERE n.nspname = $1 AND c.relkind = 'S'
			AND NOT EXISTS (SELECT FROM pg_depend d
				WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
		ORDER BY c.relname`, Schema)
	if err != nil {
		return nil, fmt.Errorf("listing sequences: %w", err)
	}
	var seqs []Sequence
	for rows.Next() {
		var s Sequence
		if err := rows.Scan(&s.Name, &s.Increment); err != nil {
			rows.Close()
			return nil, fmt.Errorf("listing sequences: %w", err)
		}
		seqs = append(seqs, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing sequences: %w", err)
	}
	// pg_sequences.last_value is NULL both for an unused sequence and for a
	// role without privileges on it; the sequence itself says which.
	for i := range seqs {
		s := &seqs[i]
		if err := q.QueryRow(ctx, "SELECT last_value, is_called FROM "+qualified(s.Name)).Scan(&s.LastValue, &s.IsCalled); err != nil {
			return nil, fmt.Errorf("reading sequence %s: %w", s.Name, err)
		}
	}
	return seqs, nil
}

// SyncSequences moves every sequence of target that is behind its namesake
// in source up to it (setval with the source's last value and is_called), so
// that the target hands out no value the source handed out. A sequence
// already at or past the source's is left as it is: it is never moved back,
// which makes SyncSequences safe to repeat. A sequence missing on the target
// is an error (*SchemaMismatchError). It returns how many it moved.
func SyncSequences(ctx context.Context, source, target Querier) (int, error) {
	src, err := Sequences(ctx, source)
	if err != nil {
		return 0, fmt.Errorf("source: %w", err)
	}
	return syncSequences(ctx, src, target)
}

func syncSequences(ctx context.Context, src []Sequence, target Querier) (int, error) {
	dst, err := Sequences(ctx, target)
	if err != nil {
		return 0, fmt.Errorf("target: %w", err)
	}
	onTarget := map[string]Sequence{}
	for _, s := range dst {
		onTarget[s.Name] = s
	}
	var missing []string
	moved := 0
	for _, s := range src {
		t, ok := onTarget[s.Name]
		if !ok {
			missing = append(missing, fmt.Sprintf("sequence %s: not on the target", s.Name))
			continue
		}
		if t.atOrPast(s) {
			continue
		}
		if _, err := target.Exec(ctx, "SELECT setval($1::regclass, $2, $3)", qualified(s.Name), s.LastValue, s.IsCalled); err != nil {
			return moved, fmt.Errorf("target: setval of sequence %s: %w", s.Name, err)
		}
		moved++
	}
	if len(missing) > 0 {
		return moved, &SchemaMismatchError{Differences: missing}
	}
	return moved, nil
}
