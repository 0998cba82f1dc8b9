package mover

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrTargetNotEmpty is returned by Copy when a table on the target has rows
// and CopyOptions.Truncate is not set: a copy never mixes into data it did
// not write (a target DSN that points at the source, say).
var ErrTargetNotEmpty = errors.New("a table on the target has rows")

// TableProgress is how far the copy of one table has come.
type TableProgress struct {
	Table string
	Rows  int64 // rows received so far; when Done, the rows the target stored
	Bytes int64 // bytes of COPY text received so far
	Done  bool  // the table is copied (its final report)
}

// DefaultProgressEvery is CopyOptions.ProgressEvery's default.
const DefaultProgressEvery = 4 << 20

// CopyOptions configures Copy. The zero value copies into an empty target
// with no progress reports.
type CopyOptions struct {
	// Progress, if set, is called as each table's rows stream, every
	// ProgressEvery bytes and once with Done when the table is copied. Calls
	// come one at a time, but not always from Copy's goroutine; a slow
	// Progress slows the copy.
	Progress func(TableProgress)
	// ProgressEvery is how many bytes pass between two calls of Progress for
	// a table. Default DefaultProgressEvery (4 MiB).
	ProgressEvery int64
	// Truncate empties the target's tables first, in the same transaction as
	// the copy: for a retry into a target the caller made and owns. Without
	// it, Copy fails with ErrTargetNotEmpty if a table there has a row.
	Truncate bool
	// Snapshot, if set, is a snapshot exported on the source (a logical
	// replication slot's, for the online mode) that the copy reads under
	// (SET TRANSACTION SNAPSHOT). By default the copy takes its own.
	Snapshot string
	// TenantID, if set, copies only that tenant's rows (tenant_id, which
	// every table must have): a promotion out of a pool database or a
	// demotion into one.
	TenantID string
	// SharedTarget says the target holds other tenants' rows (a pool
	// database: a demotion). It keeps them and its indexes: the tenant's
	// rows there are deleted first (Truncate is ignored), in the copy's
	// transaction, and the rows go into the indexes as they are. Without
	// it, the target is the tenant's alone and is loaded as in a move.
	SharedTarget bool
}

// CopyResult is what Copy did.
type CopyResult struct {
	Tables         []TableProgress // each table's final report, in the order copied
	SequencesMoved int             // sequences of the target moved up to the source's
	IndexesRebuilt int             // indexes and constraints of the target dropped before the copy and made again after it
	Rows, Bytes    int64           // over all tables
	// Copied is each table's rows as they went from the source to the
	// target, counted and hashed on the way (VerifyOptions.Copied).
	Copied           []CopiedTable
	Duration         time.Duration
	SourceSnapshotAt time.Time // the source's clock when the snapshot was taken
}

// Copy copies the rows of every user table (Tables) from source to target,
// then moves the target's sequences up to the source's (SyncSequences).
//
// The source is read in one REPEATABLE READ READ ONLY transaction, so every
// table comes from one snapshot; the target is written in one transaction, so
// a failed copy leaves no row behind. Each table streams from the source's
// COPY TO into the target's COPY FROM through a pipe, never held in memory,
// in foreign-key order (deferrable constraints are deferred to the commit).
//
// Like pg_restore, the target's indexes, primary key, unique, exclusion and
// foreign-key constraints are dropped before the rows are loaded and made
// again after (in the same transaction, under the same names and
// definitions): one sort per index instead of an insert per row into each,
// and one check per foreign key instead of one per row. Foreign keys are
// checked when they are made again, so a copy that breaks one fails.
//
// The target must have the same tables and columns (the caller builds it
// with the tenant's migrations at the tenant's version); if not, Copy writes
// nothing and returns a *SchemaMismatchError. source and target are reached
// as the servers' admin role (the tables' owner). When a COPY fails, its
// connection to the source may be closed: take a new one to retry.
func Copy(ctx context.Context, source, target DB, opts CopyOptions) (_ CopyResult, err error) {
	defer wrap(&err, "Copy")
	began := time.Now()
	if opts.ProgressEvery <= 0 {
		opts.ProgressEvery = DefaultProgressEvery
	}

	src, err := source.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return CopyResult{}, fmt.Errorf("source: %w", err)
	}
	// Read only: ending it either way changes nothing.
	defer func() { _ = src.Rollback(context.WithoutCancel(ctx)) }()
	if opts.Snapshot != "" {
		// Must be the transaction's first statement.
		if _, err := src.Exec(ctx, "SET TRANSACTION SNAPSHOT "+literal(opts.Snapshot)); err != nil {
			return CopyResult{}, fmt.Errorf("source: importing snapshot %s: %w", opts.Snapshot, err)
		}
	}
	var res CopyResult
	if err := src.QueryRow(ctx, "SELECT now()").Scan(&res.SourceSnapshotAt); err != nil {
		return CopyResult{}, fmt.Errorf("source: %w", err)
	}
	if _, err := src.Exec(ctx, stableFormat); err != nil {
		return CopyResult{}, fmt.Errorf("source: %w", err)
	}
	tables, err := Tables(ctx, src)
	if err != nil {
		return CopyResult{}, fmt.Errorf("source: %w", err)
	}

	dst, err := target.BeginTx(ctx, pgx.TxOptions{})
	if err != nil {
		return CopyResult{}, fmt.Errorf("target: %w", err)
	}
	defer func() {
		if err != nil {
			_ = dst.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if _, err := dst.Exec(ctx, stableFormat+"; SET CONSTRAINTS ALL DEFERRED"); err != nil {
		return CopyResult{}, fmt.Errorf("target: %w", err)
	}
	targetTables, err := Tables(ctx, dst)
	if err != nil {
		return CopyResult{}, fmt.Errorf("target: %w", err)
	}
	if err := compareTables(tables, targetTables); err != nil {
		return CopyResult{}, err
	}
	if opts.TenantID != "" && !uuidRE.MatchString(opts.TenantID) {
		return CopyResult{}, fmt.Errorf("tenant id %q is not a UUID", opts.TenantID)
	}
	var rebuild, forced []string
	if opts.SharedTarget {
		if err := clearTenant(ctx, dst, tables, opts.TenantID); err != nil {
			return CopyResult{}, err
		}
	} else {
		if err := prepareTarget(ctx, dst, tables, opts.Truncate); err != nil {
			return CopyResult{}, err
		}
		if rebuild, err = dropIndexes(ctx, dst, tables); err != nil {
			return CopyResult{}, err
		}
		// COPY FROM refuses a table whose row-level security applies to
		// the role, and forced security applies to the owner: lifted for
		// the copy, in its transaction (so no one else ever sees it
		// lifted), and forced again before the commit.
		if forced, err = liftForcedSecurity(ctx, dst, tables); err != nil {
			return CopyResult{}, err
		}
	}

	for _, t := range tables {
		p, sent, err := copyTable(ctx, src.Conn(), dst.Conn(), t, opts)
		if err != nil {
			return CopyResult{}, err
		}
		res.Tables = append(res.Tables, p)
		res.Copied = append(res.Copied, CopiedTable{Table: t.Name, Columns: t.Columns, Rows: sent.rows, Hash: sent.sum})
		res.Rows += p.Rows
		res.Bytes += p.Bytes
	}
	for _, stmt := range slices.Concat(rebuild, forced) {
		if _, err := dst.Exec(ctx, stmt); err != nil {
			return CopyResult{}, fmt.Errorf("target: rebuilding after the copy: %s: %w", stmt, err)
		}
	}
	res.IndexesRebuilt = len(rebuild)

	seqs, err := Sequences(ctx, src)
	if err != nil {
		return CopyResult{}, fmt.Errorf("source: %w", err)
	}
	if res.SequencesMoved, err = syncSequences(ctx, seqs, dst); err != nil {
		return CopyResult{}, err
	}
	if err := dst.Commit(ctx); err != nil {
		return CopyResult{}, fmt.Errorf("target: commit: %w", err)
	}
	res.Duration = time.Since(began)
	return res, nil
}

// dropIndexes drops the target's indexes and constraints that a COPY would
// have to maintain row by row, and returns the statements that make them
// again, in an order that works: primary keys, unique and exclusion
// constraints, plain indexes, foreign keys, then comments on any of them.
// It leaves alone a table the role does not own, an index that is a
// replica identity, and a key that a foreign key from another table than
// the copied ones depends on.
func dropIndexes(ctx context.Context, dst pgx.Tx, tables []Table) ([]string, error) {
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = t.Name
	}
	// Tables: the copied tables of schema public that the role may alter.
	rows, err := dst.Query(ctx, `
		WITH tables AS (
			SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relname = ANY($2) AND pg_has_role(c.relowner, 'USAGE')
		)
		SELECT 1 AS step, 'ALTER TABLE ' || k.conrelid::regclass::text || ' DROP CONSTRAINT ' || quote_ident(k.conname),
			'ALTER TABLE ' || k.conrelid::regclass::text || ' ADD CONSTRAINT ' || quote_ident(k.conname) || ' ' || pg_get_constraintdef(k.oid),
			CASE WHEN k.contype = 'f' THEN 4 ELSE 1 END,
			(SELECT 'COMMENT ON CONSTRAINT ' || quote_ident(k.conname) || ' ON ' || k.conrelid::regclass::text || ' IS ' || quote_literal(d.description)
				FROM pg_description d WHERE d.classoid = 'pg_constraint'::regclass AND d.objoid = k.oid),
			-- A key's index is made again under the constraint's name.
			(SELECT 'COMMENT ON INDEX ' || k.conindid::regclass::text || ' IS ' || quote_literal(d.description)
				FROM pg_description d WHERE k.contype <> 'f' AND d.classoid = 'pg_class'::regclass AND d.objoid = k.conindid)
		FROM pg_constraint k JOIN tables t ON t.oid = k.conrelid
		WHERE k.contype IN ('p', 'u', 'x', 'f')
			AND (k.contype = 'f' OR NOT EXISTS (SELECT FROM pg_constraint f
				WHERE f.contype = 'f' AND f.conindid = k.conindid AND f.conrelid NOT IN (SELECT oid FROM tables)))
			AND (k.contype = 'f' OR NOT EXISTS (SELECT FROM pg_index i WHERE i.indexrelid = k.conindid AND i.indisreplident))
			AND (k.contype <> 'f' OR k.confrelid IN (SELECT oid FROM tables))
		UNION ALL
		SELECT 2, 'DROP INDEX ' || i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), 2,
			(SELECT 'COMMENT ON INDEX ' || i.indexrelid::regclass::text || ' IS ' || quote_literal(d.description)
				FROM pg_description d WHERE d.classoid = 'pg_class'::regclass AND d.objoid = i.indexrelid), NULL
		FROM pg_index i JOIN tables t ON t.oid = i.indrelid
		WHERE NOT i.indisreplident
			AND NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)
		ORDER BY 1, 4 DESC, 2`, Schema, names)
	if err != nil {
		return nil, fmt.Errorf("target: listing indexes: %w", err)
	}
	var drops []string
	creates := map[int][]string{}
	var comments []string
	for rows.Next() {
		var step, order int
		var drop, create string
		var comment, indexComment *string
		if err := rows.Scan(&step, &drop, &create, &order, &comment, &indexComment); err != nil {
			rows.Close()
			return nil, fmt.Errorf("target: listing indexes: %w", err)
		}
		drops = append(drops, drop)
		creates[order] = append(creates[order], create)
		for _, c := range []*string{comment, indexComment} {
			if c != nil {
				comments = append(comments, *c)
			}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("target: listing indexes: %w", err)
	}
	// Foreign keys first (order 4 sorts first), then the keys they need.
	for _, stmt := range drops {
		if _, err := dst.Exec(ctx, stmt); err != nil {
			return nil, fmt.Errorf("target: before the copy: %s: %w", stmt, err)
		}
	}
	rebuild := slices.Concat(creates[1], creates[2], creates[4], comments)
	return rebuild, nil
}

// prepareTarget empties the target's tables (truncate) or makes sure they
// are empty, and truncates them either way.
func prepareTarget(ctx context.Context, dst pgx.Tx, tables []Table, truncate bool) error {
	if len(tables) == 0 {
		return nil
	}
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = qualified(t.Name)
	}
	if !truncate {
		for i, t := range tables {
			var has bool
			if err := dst.QueryRow(ctx, "SELECT EXISTS (SELECT FROM "+names[i]+")").Scan(&has); err != nil {
				return fmt.Errorf("target: table %s: %w", t.Name, err)
			}
			if has {
				return fmt.Errorf("%w: table %s (set CopyOptions.Truncate to empty a target of one's own)", ErrTargetNotEmpty, t.Name)
			}
		}
	}
	// Empty tables are truncated too: a table truncated in the transaction
	// takes COPY FREEZE, whose rows need no hint bits or freezing later
	// (the first read of a plain COPY's rows, Verify's, writes every page
	// again). One statement for all: foreign keys among them need no CASCADE.
	if _, err := dst.Exec(ctx, "TRUNCATE "+strings.Join(names, ", ")); err != nil {
		return fmt.Errorf("target: truncate: %w", err)
	}
	return nil
}

// liftForcedSecurity turns off FORCE ROW LEVEL SECURITY on the tables that
// have it, and returns the statements that turn it on again.
func liftForcedSecurity(ctx context.Context, dst pgx.Tx, tables []Table) ([]string, error) {
	var again []string
	for _, t := range tables {
		var forced bool
		if err := dst.QueryRow(ctx, "SELECT relforcerowsecurity FROM pg_class WHERE oid = $1::regclass", qualified(t.Name)).Scan(&forced); err != nil {
			return nil, fmt.Errorf("target: table %s: %w", t.Name, err)
		}
		if !forced {
			continue
		}
		if _, err := dst.Exec(ctx, "ALTER TABLE "+qualified(t.Name)+" NO FORCE ROW LEVEL SECURITY"); err != nil {
			return nil, fmt.Errorf("target: table %s: %w", t.Name, err)
		}
		again = append(again, "ALTER TABLE "+qualified(t.Name)+" FORCE ROW LEVEL SECURITY")
	}
	return again, nil
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// clearTenant deletes one tenant's rows from the target's tables, before a
// copy of that tenant's rows: the target's other rows stay. Every table
// must carry tenant_id.
func clearTenant(ctx context.Context, dst pgx.Tx, tables []Table, tenantID string) error {
	if !uuidRE.MatchString(tenantID) {
		return fmt.Errorf("tenant id %q is not a UUID", tenantID)
	}
	// Children first: the reverse of the foreign-key order.
	for i := len(tables) - 1; i >= 0; i-- {
		t := tables[i]
		if !slices.Contains(t.Columns, "tenant_id") {
			return fmt.Errorf("table %s has no tenant_id column: one tenant's rows cannot be told from another's", t.Name)
		}
		if _, err := dst.Exec(ctx, "DELETE FROM "+qualified(t.Name)+" WHERE tenant_id = $1", tenantID); err != nil {
			return fmt.Errorf("target: table %s: deleting the tenant's rows: %w", t.Name, err)
		}
	}
	return nil
}

// copyChunk is how many bytes of rows the copy sends the target at a time.
const copyChunk = 64 << 10

// errTargetStopped ends the source's COPY when the target's has failed.
var errTargetStopped = errors.New("the target stopped reading")

// copyTable streams one table from the source's COPY TO into the target's
// COPY FROM, and counts and hashes the rows it sent.
func copyTable(ctx context.Context, src, dst *pgx.Conn, t Table, opts CopyOptions) (TableProgress, *rowHasher, error) {
	cols := columnList(t.Columns)
	pr, pw := io.Pipe()
	srcErr := make(chan error, 1)
	go func() {
		// The source sends a message per row, and the target's COPY gets a
		// message per Read of the pipe: buffered, a message carries many
		// rows, not one (BenchmarkMoveCopy: 4.9 s for 224 MB before, 3.1 s after).
		buf := bufio.NewWriterSize(pw, copyChunk)
		from := qualified(t.Name) + " (" + cols + ")"
		if opts.TenantID != "" {
			// COPY takes no parameters; the id is a UUID (checked by clearTenant).
			from = "(SELECT " + cols + " FROM " + qualified(t.Name) + " WHERE tenant_id = " + literal(opts.TenantID) + ")"
		}
		_, err := src.PgConn().CopyTo(ctx, buf, "COPY "+from+" TO STDOUT")
		if err == nil {
			err = buf.Flush()
		}
		pw.CloseWithError(err) // nil: the reader sees io.EOF
		srcErr <- err
	}()
	sent := newRowHasher()
	counter := &progressReader{r: io.TeeReader(pr, sent), every: opts.ProgressEvery, report: opts.Progress, p: TableProgress{Table: t.Name}}
	into, freeze := qualified(t.Name), " (FREEZE)" // the table was truncated in this transaction
	if opts.SharedTarget {
		// A pool database's table, shared: its security stays forced, and
		// COPY FROM refuses such a table, so the rows go through a
		// temporary table and an INSERT (allowed by the owner's policy).
		into, freeze = "tp_copy", ""
		if _, err := dst.Exec(ctx, "DROP TABLE IF EXISTS pg_temp.tp_copy; CREATE TEMP TABLE tp_copy (LIKE "+qualified(t.Name)+")"); err != nil {
			return TableProgress{}, nil, fmt.Errorf("target: table %s: %w", t.Name, err)
		}
	}
	tag, err := dst.PgConn().CopyFrom(ctx, counter, "COPY "+into+" ("+cols+") FROM STDIN"+freeze)
	if err == nil && opts.SharedTarget {
		var res []*pgconn.Result
		if res, err = dst.PgConn().Exec(ctx, "INSERT INTO "+qualified(t.Name)+" ("+cols+") SELECT "+cols+" FROM tp_copy; DROP TABLE tp_copy").ReadAll(); err == nil {
			tag = res[0].CommandTag
		}
	}
	pr.CloseWithError(errTargetStopped)
	if sErr := <-srcErr; sErr != nil && !errors.Is(sErr, errTargetStopped) {
		return TableProgress{}, nil, fmt.Errorf("source: reading table %s: %w", t.Name, sErr)
	}
	if err != nil {
		return TableProgress{}, nil, fmt.Errorf("target: writing table %s: %w", t.Name, err)
	}
	p := counter.final(tag.RowsAffected())
	if opts.Progress != nil {
		opts.Progress(p)
	}
	return p, sent, nil
}

// progressReader counts what passes from the source to the target. In COPY's
// text format a raw newline only ends a row (one inside a value is written
// as \n), so counting newlines counts rows.
type progressReader struct {
	r      io.Reader
	every  int64
	report func(TableProgress)

	mu       sync.Mutex // Read runs in pgconn's goroutine, final in Copy's
	p        TableProgress
	reported int64 // bytes at the last report
}

func (r *progressReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.mu.Lock()
	r.p.Bytes += int64(n)
	r.p.Rows += int64(bytes.Count(b[:n], newline))
	var p *TableProgress
	if r.report != nil && r.p.Bytes-r.reported >= r.every {
		r.reported = r.p.Bytes
		cp := r.p
		p = &cp
	}
	r.mu.Unlock()
	if p != nil {
		r.report(*p)
	}
	return n, err
}

var newline = []byte{'\n'}

func (r *progressReader) final(rows int64) TableProgress {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.p.Rows, r.p.Done = rows, true
	return r.p
}

// literal quotes s as an SQL string literal (standard_conforming_strings,
// on since PostgreSQL 9.1).
func literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// wrap prefixes a non-nil *errp with the operation, keeping it matchable
// with errors.Is and errors.As.
func wrap(errp *error, op string) {
	if *errp != nil {
		*errp = fmt.Errorf("mover: %s: %w", op, *errp)
	}
}
