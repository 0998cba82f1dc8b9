package mover

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Querier is what the functions that only read or write need: a *pgx.Conn,
// a pgx.Tx or a *pgxpool.Pool.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// DB is a tenant database reached as the server's admin role, where a
// function needs transactions of its own (one snapshot over all tables): a
// *pgx.Conn or a *pgxpool.Pool.
type DB interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// Schema is the only schema a tenant database keeps its tables in.
const Schema = "public"

// migrationsTable is golang-migrate's bookkeeping: the target gets it from
// its own migrations, so it is neither copied nor compared row by row.
const migrationsTable = "schema_migrations"

// Table is a user table of a tenant database.
type Table struct {
	Name string
	// Columns are the columns a COPY carries, in the table's order: all but
	// dropped and generated ones (the target computes those itself).
	Columns []string
	// References are the tables this one has a foreign key to (not itself),
	// except through deferrable constraints, which are checked at commit.
	References []string
}

// ErrForeignKeyCycle is returned when tables reference each other in a
// cycle of foreign keys that are not DEFERRABLE: no order of COPYs loads them.
var ErrForeignKeyCycle = errors.New("a cycle of non-deferrable foreign keys")

// Tables lists the user tables of the database q is connected to, in
// foreign-key dependency order (a referenced table before the tables that
// reference it; otherwise by name): every ordinary table of schema public but
// schema_migrations and tables that belong to an extension.
func Tables(ctx context.Context, q Querier) ([]Table, error) {
	rows, err := q.Query(ctx, `
		SELECT c.oid, c.relname,
			array(SELECT a.attname::text FROM pg_attribute a
				WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
				ORDER BY a.attnum)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname <> $2
			AND NOT EXISTS (SELECT FROM pg_depend d
				WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
		ORDER BY c.relname`, Schema, migrationsTable)
	if err != nil {
		return nil, fmt.Errorf("listing tables: %w", err)
	}
	byOID := map[uint32]*Table{}
	var tables []*Table
	for rows.Next() {
		var oid uint32
		t := &Table{}
		if err := rows.Scan(&oid, &t.Name, &t.Columns); err != nil {
			rows.Close()
			return nil, fmt.Errorf("listing tables: %w", err)
		}
		byOID[oid] = t
		tables = append(tables, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing tables: %w", err)
	}

	rows, err = q.Query(ctx, `
		SELECT DISTINCT conrelid, confrelid FROM pg_constraint
		WHERE contype = 'f' AND NOT condeferrable AND conrelid <> confrelid`)
	if err != nil {
		return nil, fmt.Errorf("listing foreign keys: %w", err)
	}
	for rows.Next() {
		var from, to uint32
		if err := rows.Scan(&from, &to); err != nil {
			rows.Close()
			return nil, fmt.Errorf("listing foreign keys: %w", err)
		}
		if t, ref := byOID[from], byOID[to]; t != nil && ref != nil {
			t.References = append(t.References, ref.Name)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing foreign keys: %w", err)
	}
	for _, t := range tables {
		slices.Sort(t.References)
	}
	return sortByReferences(tables)
}

// sortByReferences orders tables so that each comes after the tables it
// references (Kahn's algorithm, taking the first by name among the ready
// ones, so that the order is the same on every call).
func sortByReferences(tables []*Table) ([]Table, error) {
	pending := map[string]int{} // name -> references not yet placed
	referencedBy := map[string][]string{}
	for _, t := range tables {
		pending[t.Name] = len(t.References)
		for _, ref := range t.References {
			referencedBy[ref] = append(referencedBy[ref], t.Name)
		}
	}
	byName := map[string]*Table{}
	var ready []string
	for _, t := range tables {
		byName[t.Name] = t
		if len(t.References) == 0 {
			ready = append(ready, t.Name)
		}
	}
	sorted := make([]Table, 0, len(tables))
	for len(ready) > 0 {
		slices.Sort(ready)
		name := ready[0]
		ready = ready[1:]
		sorted = append(sorted, *byName[name])
		delete(pending, name)
		for _, child := range referencedBy[name] {
			pending[child]--
			if pending[child] == 0 {
				ready = append(ready, child)
			}
		}
	}
	if len(pending) > 0 {
		stuck := slices.Sorted(maps.Keys(pending))
		return nil, fmt.Errorf("%w among tables %s: make one of the constraints DEFERRABLE", ErrForeignKeyCycle, strings.Join(stuck, ", "))
	}
	return sorted, nil
}

// SchemaMismatchError says how the target's tables differ from the
// source's: the caller built the target at another schema version, or the
// source was changed by hand.
type SchemaMismatchError struct {
	Differences []string // one sentence each, such as "table orders: not on the target"
}

func (e *SchemaMismatchError) Error() string {
	return "the target's tables differ from the source's: " + strings.Join(e.Differences, "; ")
}

// compareTables returns a *SchemaMismatchError when target lacks a table of
// source, has one more, or a table's copied columns differ by name.
func compareTables(source, target []Table) error {
	onTarget := map[string]Table{}
	for _, t := range target {
		onTarget[t.Name] = t
	}
	var diffs []string
	for _, s := range source {
		t, ok := onTarget[s.Name]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("table %s: not on the target", s.Name))
			continue
		}
		delete(onTarget, s.Name)
		if !slices.Equal(sortedCopy(s.Columns), sortedCopy(t.Columns)) {
			diffs = append(diffs, fmt.Sprintf("table %s: columns (%s) on the source, (%s) on the target",
				s.Name, strings.Join(s.Columns, ", "), strings.Join(t.Columns, ", ")))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(onTarget)) {
		diffs = append(diffs, fmt.Sprintf("table %s: on the target only", name))
	}
	if len(diffs) > 0 {
		return &SchemaMismatchError{Differences: diffs}
	}
	return nil
}

func sortedCopy(s []string) []string { return slices.Sorted(slices.Values(s)) }

// qualified is the quoted, schema-qualified name of a relation in Schema.
func qualified(name string) string { return pgx.Identifier{Schema, name}.Sanitize() }

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// columnList is the quoted, comma-separated list of columns.
func columnList(columns []string) string {
	quoted := make([]string, len(columns))
	for i, c := range columns {
		quoted[i] = ident(c)
	}
	return strings.Join(quoted, ", ")
}

// stableFormat makes the text of values the same on both servers whatever
// their configuration, so that COPY reads back what it wrote and row hashes
// compare: dates, intervals and floats print in one fixed way.
const stableFormat = `SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres';
	SET LOCAL TimeZone = 'UTC'; SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'`
