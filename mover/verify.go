package mover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// ErrMismatch matches (errors.Is) the *MismatchError Verify returns when the
// target differs from the source.
var ErrMismatch = errors.New("the target differs from the source")

// MismatchError names every difference Verify found, one sentence each:
// "table users: 1000 rows on the source, 999 on the target".
type MismatchError struct {
	Differences []string
}

func (e *MismatchError) Error() string { return strings.Join(e.Differences, "; ") }

// Is makes errors.Is(err, ErrMismatch) true.
func (e *MismatchError) Is(target error) bool { return target == ErrMismatch }

// TableCheck compares one table's rows on both sides.
type TableCheck struct {
	Table                  string
	SourceRows, TargetRows int64
	// SourceHash and TargetHash are the sums, as decimals, of a 64-bit hash
	// (md5's first 16 hex digits) of each row's text: equal sums mean the
	// same rows with overwhelming likelihood, in any order.
	SourceHash, TargetHash string
}

// Equal says whether both sides have the same rows.
func (c TableCheck) Equal() bool {
	return c.SourceRows == c.TargetRows && c.SourceHash == c.TargetHash
}

// String says how the table differs, or that it does not.
func (c TableCheck) String() string {
	switch {
	case c.SourceRows != c.TargetRows:
		return fmt.Sprintf("table %s: %d rows on the source, %d on the target", c.Table, c.SourceRows, c.TargetRows)
	case c.SourceHash != c.TargetHash:
		return fmt.Sprintf("table %s: %d rows on both sides, but their contents differ (row hash %s on the source, %s on the target)",
			c.Table, c.SourceRows, c.SourceHash, c.TargetHash)
	}
	return fmt.Sprintf("table %s: %d rows, equal", c.Table, c.SourceRows)
}

// SequenceCheck compares one sequence: the target's must be at or past the
// source's, so that it hands out no value the source has.
type SequenceCheck struct {
	Sequence       string
	Source, Target Sequence
	Missing        bool // not on the target
}

// OK says whether the target's sequence is at or past the source's.
func (c SequenceCheck) OK() bool { return !c.Missing && c.Target.atOrPast(c.Source) }

func (c SequenceCheck) String() string {
	switch {
	case c.Missing:
		return fmt.Sprintf("sequence %s: not on the target", c.Sequence)
	case !c.OK():
		return fmt.Sprintf("sequence %s: next value %d on the source, %d on the target (behind)", c.Sequence, c.Source.Next(), c.Target.Next())
	}
	return fmt.Sprintf("sequence %s: next value %d on the source, %d on the target", c.Sequence, c.Source.Next(), c.Target.Next())
}

// SchemaVersion is a database's golang-migrate state (schema_migrations).
type SchemaVersion struct {
	Version int64
	Dirty   bool
	Known   bool // the database has a schema_migrations row
}

func (v SchemaVersion) String() string {
	switch {
	case !v.Known:
		return "none"
	case v.Dirty:
		return fmt.Sprintf("%d (dirty)", v.Version)
	}
	return fmt.Sprint(v.Version)
}

// VerifyResult is everything Verify compared.
type VerifyResult struct {
	SourceSchema, TargetSchema SchemaVersion
	Tables                     []TableCheck // tables on both sides, in foreign-key order
	Sequences                  []SequenceCheck
	// Changed compares, with VerifyOptions.Changed, the rows written
	// during the move of each table that has some (Tables then has only
	// full counts, with empty hashes, but for the tables checked whole).
	Changed []TableCheck
	// Differences are the sentences of the *MismatchError, if any.
	Differences []string
	Duration    time.Duration
}

// Verify compares target with source: the schema version, the set of
// tables and their columns, each table's row count and order-independent
// row hash (the way pgcopydb's compare data does), and each sequence (the
// target's at or past the source's). Each side is read in one REPEATABLE
// READ READ ONLY transaction, both at once. Writes to the source while it
// runs make it report differences: verify a fenced source.
//
// It returns the whole comparison and, when anything differs, a
// *MismatchError (errors.Is ErrMismatch) naming each difference; other
// errors mean it could not compare.
func Verify(ctx context.Context, source, target DB) (VerifyResult, error) {
	return VerifyWith(ctx, source, target, VerifyOptions{})
}

// VerifyOptions change what Verify compares.
type VerifyOptions struct {
	// SourceSnapshot, when set, reads the source under that exported
	// snapshot (SET TRANSACTION SNAPSHOT): an online move's copy is
	// verified against the slot's snapshot while the tenant writes on. The
	// sequences, which no snapshot holds still, are then not compared.
	SourceSnapshot string
	// TenantID, when set, compares only that tenant's rows (tenant_id):
	// a promotion's or a demotion's, whose other side holds other tenants.
	TenantID string
	// Changed, when set, restricts the row hashes to the rows it names
	// (per table, a count and a hash of the rows whose key it holds, on
	// both sides), and to every row of a table it marks as a whole; every
	// table's rows are still counted in full. What an online move checks
	// in its fence after a Verify under its snapshot.
	Changed *ChangeSet
	// Copied, when set, is what Copy sent each table (CopyResult.Copied),
	// counted and hashed on its way from a source that has not changed
	// since (fenced, or read under the same snapshot): the source's rows
	// are not read again, and the target's are read back with COPY and
	// hashed the same way. Changed is then ignored.
	Copied []CopiedTable
}

// VerifyWith is Verify with options.
func VerifyWith(ctx context.Context, source, target DB, opts VerifyOptions) (_ VerifyResult, err error) {
	defer wrap(&err, "Verify")
	began := time.Now()
	if opts.Changed != nil && opts.Changed.Overflowed() {
		opts.Changed = nil // it no longer names every row written: all of them
	}
	if opts.Copied != nil {
		opts.Changed = nil
	}
	src := sideState{copied: map[string]CopiedTable{}, source: true}
	dst := sideState{copied: src.copied}
	for _, c := range opts.Copied {
		src.copied[c.Table] = c
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := src.read(gctx, source, opts.SourceSnapshot, opts.Changed, opts.TenantID); err != nil {
			return fmt.Errorf("source: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := dst.read(gctx, target, "", opts.Changed, opts.TenantID); err != nil {
			return fmt.Errorf("target: %w", err)
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return VerifyResult{}, err
	}
	if opts.SourceSnapshot != "" {
		src.sequences, dst.sequences = nil, nil
	}

	res := VerifyResult{SourceSchema: src.schema, TargetSchema: dst.schema}
	var diffs []string
	if src.schema != dst.schema {
		diffs = append(diffs, fmt.Sprintf("schema version %s on the source, %s on the target", src.schema, dst.schema))
	}
	var schemaErr *SchemaMismatchError
	if err := compareTables(src.tables, dst.tables); errors.As(err, &schemaErr) {
		diffs = append(diffs, schemaErr.Differences...)
	}
	for _, t := range src.tables {
		d, ok := dst.checks[t.Name]
		if !ok {
			continue // named above
		}
		s := src.checks[t.Name]
		c := TableCheck{Table: t.Name, SourceRows: s.rows, TargetRows: d.rows, SourceHash: s.hash, TargetHash: d.hash}
		res.Tables = append(res.Tables, c)
		if !c.Equal() {
			diffs = append(diffs, c.String())
		}
		if sc, ok := src.changed[t.Name]; ok {
			dc := dst.changed[t.Name]
			c := TableCheck{Table: t.Name, SourceRows: sc.rows, TargetRows: dc.rows, SourceHash: sc.hash, TargetHash: dc.hash}
			res.Changed = append(res.Changed, c)
			if !c.Equal() {
				diffs = append(diffs, "of the rows written during the move, "+c.String())
			}
		}
	}
	onTarget := map[string]Sequence{}
	for _, s := range dst.sequences {
		onTarget[s.Name] = s
	}
	for _, s := range src.sequences {
		t, ok := onTarget[s.Name]
		c := SequenceCheck{Sequence: s.Name, Source: s, Target: t, Missing: !ok}
		res.Sequences = append(res.Sequences, c)
		if !c.OK() {
			diffs = append(diffs, c.String())
		}
	}
	res.Differences = diffs
	res.Duration = time.Since(began)
	if len(diffs) > 0 {
		return res, &MismatchError{Differences: diffs}
	}
	return res, nil
}

type rowSummary struct {
	rows int64
	hash string
}

// sideState is what Verify reads from one side.
type sideState struct {
	copied map[string]CopiedTable // VerifyOptions.Copied, by table
	source bool

	schema    SchemaVersion
	tables    []Table
	checks    map[string]rowSummary
	changed   map[string]rowSummary // the rows a ChangeSet names
	sequences []Sequence
}

func (s *sideState) read(ctx context.Context, db DB, snapshot string, changed *ChangeSet, tenantID string) error {
	if tenantID != "" && !uuidRE.MatchString(tenantID) {
		return fmt.Errorf("tenant id %q is not a UUID", tenantID)
	}
	tx, err := db.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if snapshot != "" {
		if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT "+literal(snapshot)); err != nil {
			return fmt.Errorf("snapshot %s: %w", snapshot, err)
		}
	}
	if _, err := tx.Exec(ctx, stableFormat); err != nil {
		return err
	}
	if s.schema, err = readSchemaVersion(ctx, tx); err != nil {
		return err
	}
	if s.tables, err = Tables(ctx, tx); err != nil {
		return err
	}
	s.checks = map[string]rowSummary{}
	s.changed = map[string]rowSummary{}
	for _, t := range s.tables {
		var sum rowSummary
		if c, ok := s.copied[t.Name]; ok {
			switch {
			case s.source:
				sum = rowSummary{rows: c.Rows, hash: formatRowHash(c.Hash)}
			case !hasColumns(t, c.Columns):
				continue // compareTables names the difference
			default:
				if sum, err = hashCopied(ctx, tx, c, tenantID); err != nil {
					return err
				}
			}
			s.checks[t.Name] = sum
			continue
		}
		ct := changed.tableOf(t.Name)
		if tenantID != "" && (changed == nil || ct != nil && ct.full) {
			if err := tx.QueryRow(ctx, rowHashQuery(t)+" WHERE r.tenant_id = $1", tenantID).Scan(&sum.rows, &sum.hash); err != nil {
				return fmt.Errorf("table %s: %w", t.Name, err)
			}
			s.checks[t.Name] = sum
			continue
		}
		if changed == nil || ct != nil && ct.full {
			if err := tx.QueryRow(ctx, rowHashQuery(t)).Scan(&sum.rows, &sum.hash); err != nil {
				return fmt.Errorf("table %s: %w", t.Name, err)
			}
			s.checks[t.Name] = sum
			continue
		}
		count := "SELECT count(*) FROM " + qualified(t.Name)
		if tenantID != "" {
			// The tenant's rows only; the rows its stream wrote are its own
			// (tenant_id leads every key).
			count += " WHERE tenant_id = " + literal(tenantID)
		}
		if err := tx.QueryRow(ctx, count).Scan(&sum.rows); err != nil {
			return fmt.Errorf("table %s: %w", t.Name, err)
		}
		s.checks[t.Name] = sum
		if ct == nil || len(ct.keys) == 0 {
			continue
		}
		var c rowSummary
		sql, args := ct.rowHashQuery(t)
		if err := tx.QueryRow(ctx, sql, args...).Scan(&c.rows, &c.hash); err != nil {
			return fmt.Errorf("table %s: the rows written during the move: %w", t.Name, err)
		}
		s.changed[t.Name] = c
	}
	s.sequences, err = Sequences(ctx, tx)
	return err
}

// hasColumns says whether t has every one of columns.
func hasColumns(t Table, columns []string) bool {
	for _, c := range columns {
		if !slices.Contains(t.Columns, c) {
			return false
		}
	}
	return true
}

// rowHashQuery restricted to the rows whose key ct holds: the keys go as
// one text array per key column, cast to the column's type.
func (ct *changedTable) rowHashQuery(t Table) (string, []any) {
	arrays := make([][]string, len(ct.cols))
	for _, vals := range ct.keys {
		for i, v := range vals {
			arrays[i] = append(arrays[i], v)
		}
	}
	args := make([]any, len(ct.cols))
	params := make([]string, len(ct.cols))
	names := make([]string, len(ct.cols))
	cols := make([]string, len(ct.cols))
	casts := make([]string, len(ct.cols))
	for i, c := range ct.cols {
		args[i] = arrays[i]
		params[i] = fmt.Sprintf("$%d::text[]", i+1)
		names[i] = fmt.Sprintf("k%d", i)
		cols[i] = "r." + ident(c)
		casts[i] = fmt.Sprintf("k.k%d::%s", i, ct.types[i])
	}
	return rowHashQuery(t) + " WHERE (" + strings.Join(cols, ", ") + ") IN (SELECT " + strings.Join(casts, ", ") +
		" FROM unnest(" + strings.Join(params, ", ") + ") AS k(" + strings.Join(names, ", ") + "))", args
}

// rowHashQuery counts a table's rows and sums a 64-bit hash of each row's
// text over its copied columns in name order, so that both sides hash the
// same text whatever their columns' physical order. The sum of bigints is a
// numeric: it does not overflow.
func rowHashQuery(t Table) string {
	cols := slices.Sorted(slices.Values(t.Columns))
	fields := make([]string, len(cols))
	for i, c := range cols {
		fields[i] = "r." + ident(c)
	}
	row := "ROW(" + strings.Join(fields, ", ") + ")"
	if len(cols) == 0 {
		row = "ROW()"
	}
	return "SELECT count(*), coalesce(sum(('x' || substr(md5(" + row + "::text), 1, 16))::bit(64)::bigint), 0)::text FROM " +
		qualified(t.Name) + " r"
}

// readSchemaVersion reads schema_migrations, if the database has one.
func readSchemaVersion(ctx context.Context, q Querier) (SchemaVersion, error) {
	var exists bool
	if err := q.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", qualified(migrationsTable)).Scan(&exists); err != nil {
		return SchemaVersion{}, fmt.Errorf("schema version: %w", err)
	}
	if !exists {
		return SchemaVersion{}, nil
	}
	var v SchemaVersion
	err := q.QueryRow(ctx, "SELECT version, dirty FROM "+qualified(migrationsTable)+" LIMIT 1").Scan(&v.Version, &v.Dirty)
	if errors.Is(err, pgx.ErrNoRows) {
		return SchemaVersion{}, nil
	}
	if err != nil {
		return SchemaVersion{}, fmt.Errorf("schema version: %w", err)
	}
	v.Known = true
	return v, nil
}
