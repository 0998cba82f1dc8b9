package mover

import (
	"strings"

	"github.com/jackc/pglogrepl"
)

// maxChangedKeys bounds the keys a Stream records (ChangeSet): past it the
// set is marked overflowed and recording stops, and the move verifies every
// row in its fence instead. A var for the tests.
var maxChangedKeys = 1_000_000

// ChangeSet is what a Stream applied on the target since its snapshot: per
// table, the replica-identity values of every row it inserted, updated (old
// and new key) or deleted, and the tables it cannot name rows of (a
// truncate, a table without a replica identity, a NULL or unsent key
// value), whose rows are all to be verified.
type ChangeSet struct {
	tables   map[string]*changedTable
	keys     int
	overflow bool
	// journal, when set, collects what was added since the last drain, for
	// a kept source's ledger to store with the rows (keep.go).
	journal *changeJournal
}

type changedTable struct {
	cols  []string // the key's columns, in the relation's order
	types []string // their types on the target (format_type)
	keys  map[string][]string
	full  bool
}

func newChangeSet() *ChangeSet { return &ChangeSet{tables: map[string]*changedTable{}} }

// Overflowed says whether more keys were written than the set records.
func (c *ChangeSet) Overflowed() bool { return c.overflow }

// Keys is how many distinct keys the set holds (0 for a nil set).
func (c *ChangeSet) Keys() int {
	if c == nil {
		return 0
	}
	return c.keys
}

func (c *ChangeSet) table(rel *relation) *changedTable {
	t, ok := c.tables[rel.name]
	if !ok {
		t = &changedTable{keys: map[string][]string{}}
		for i, k := range rel.key {
			if k {
				t.cols = append(t.cols, rel.columns[i])
				t.types = append(t.types, rel.types[i])
			}
		}
		t.full = len(t.cols) == 0
		c.tables[rel.name] = t
		c.journal.touch(rel.name)
	}
	return t
}

// truncated marks a table's rows as all to be verified.
func (c *ChangeSet) truncated(rel *relation) {
	if c.overflow {
		return
	}
	t := c.table(rel)
	t.full, t.keys = true, nil
	c.journal.touch(rel.name)
}

// record adds the key of tuple tup of rel.
func (c *ChangeSet) record(rel *relation, tup *pglogrepl.TupleData) {
	if c.overflow || tup == nil {
		return
	}
	t := c.table(rel)
	if t.full {
		return
	}
	vals := make([]string, 0, len(t.cols))
	var j int
	for i, k := range rel.key {
		if !k {
			continue
		}
		if j >= len(t.cols) || t.cols[j] != rel.columns[i] || i >= len(tup.Columns) || tup.Columns[i].DataType != pglogrepl.TupleDataTypeText {
			// The relation changed, or a NULL or unsent key: no row to name.
			t.full, t.keys = true, nil
			c.journal.touch(rel.name)
			return
		}
		vals = append(vals, string(tup.Columns[i].Data))
		j++
	}
	if j != len(t.cols) {
		t.full, t.keys = true, nil
		c.journal.touch(rel.name)
		return
	}
	id := strings.Join(vals, "\x00")
	if _, ok := t.keys[id]; ok {
		return
	}
	if c.keys >= maxChangedKeys {
		c.overflow, c.tables = true, nil
		return
	}
	t.keys[id] = vals
	c.keys++
	c.journal.add(rel.name, vals)
}

// tableOf is the table's changes, nil if none (or c is nil).
func (c *ChangeSet) tableOf(name string) *changedTable {
	if c == nil {
		return nil
	}
	return c.tables[name]
}
