package mover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
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
}

// CopyResult is what Copy did.
type CopyResult struct {
	Tables           []TableProgress // each table's final report, in the order copied
	SequencesMoved   int             // sequences of the target moved up to the source's
	Rows, Bytes      int64           // over all tables
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
	if err := prepareTarget(ctx, dst, tables, opts.Truncate); err != nil {
		return CopyResult{}, err
	}

	for _, t := range tables {
		p, err := copyTable(ctx, src.Conn(), dst.Conn(), t, opts)
		if err != nil {
			return CopyResult{}, err
		}
		res.Tables = append(res.Tables, p)
		res.Rows += p.Rows
		res.Bytes += p.Bytes
	}

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

// prepareTarget empties the target's tables (truncate) or makes sure they
// are empty.
func prepareTarget(ctx context.Context, dst pgx.Tx, tables []Table, truncate bool) error {
	if len(tables) == 0 {
		return nil
	}
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = qualified(t.Name)
	}
	if truncate {
		// One statement for all: foreign keys among them need no CASCADE.
		if _, err := dst.Exec(ctx, "TRUNCATE "+strings.Join(names, ", ")); err != nil {
			return fmt.Errorf("target: truncate: %w", err)
		}
		return nil
	}
	for i, t := range tables {
		var has bool
		if err := dst.QueryRow(ctx, "SELECT EXISTS (SELECT FROM "+names[i]+")").Scan(&has); err != nil {
			return fmt.Errorf("target: table %s: %w", t.Name, err)
		}
		if has {
			return fmt.Errorf("%w: table %s (set CopyOptions.Truncate to empty a target of one's own)", ErrTargetNotEmpty, t.Name)
		}
	}
	return nil
}

// errTargetStopped ends the source's COPY when the target's has failed.
var errTargetStopped = errors.New("the target stopped reading")

// copyTable streams one table from the source's COPY TO into the target's
// COPY FROM.
func copyTable(ctx context.Context, src, dst *pgx.Conn, t Table, opts CopyOptions) (TableProgress, error) {
	cols := columnList(t.Columns)
	pr, pw := io.Pipe()
	srcErr := make(chan error, 1)
	go func() {
		_, err := src.PgConn().CopyTo(ctx, pw, "COPY "+qualified(t.Name)+" ("+cols+") TO STDOUT")
		pw.CloseWithError(err) // nil: the reader sees io.EOF
		srcErr <- err
	}()
	counter := &progressReader{r: pr, every: opts.ProgressEvery, report: opts.Progress, p: TableProgress{Table: t.Name}}
	tag, err := dst.PgConn().CopyFrom(ctx, counter, "COPY "+qualified(t.Name)+" ("+cols+") FROM STDIN")
	pr.CloseWithError(errTargetStopped)
	if sErr := <-srcErr; sErr != nil && !errors.Is(sErr, errTargetStopped) {
		return TableProgress{}, fmt.Errorf("source: reading table %s: %w", t.Name, sErr)
	}
	if err != nil {
		return TableProgress{}, fmt.Errorf("target: writing table %s: %w", t.Name, err)
	}
	p := counter.final(tag.RowsAffected())
	if opts.Progress != nil {
		opts.Progress(p)
	}
	return p, nil
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
