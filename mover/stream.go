package mover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// LSN is a position in a server's write-ahead log.
type LSN = pglogrepl.LSN

// Stream is the online mode's catch-up applied by tenantplane
// (ApplyStream): a publication of the tenant's tables and a logical
// replication slot on the source, whose pgoutput changes CatchUp applies on
// the target by primary key.
//
// The slot is made with an exported snapshot (Snapshot): a Copy under it
// (CopyOptions.Snapshot) holds exactly the rows committed before the slot's
// ConsistentPoint, and the stream every change after it, so that nothing is
// copied twice or missed. The snapshot lives until the stream's next
// command: Copy must finish before the first CatchUp.
type Stream struct {
	name            string
	conn            *pgconn.PgConn // replication connection to the source
	snapshot        string
	consistentPoint LSN
	started         bool
	applied         LSN // end of the last transaction applied on the target
	serverEnd       LSN // how far the source has sent
	relations       map[uint32]*relation
	changes         *ChangeSet // the rows applied since the snapshot
	// ledger, when set, records in each transaction applied on the target
	// how far the stream has applied, and has it skip what was applied
	// before (a kept source's stream, keep.go); skipping says the
	// transaction in flight is one of those.
	ledger   applyLedger
	skipping bool
	// poll, when set, replaces statusPoll: a catch-up under the fence asks
	// the source more often where it is, as each wait is write pause.
	poll time.Duration
}

type relation struct {
	name    string
	columns []string
	types   []string // format_type on the target, for $n::text::type
	key     []bool   // part of the replica identity
}

// OpenStream creates, on the source tenant database, a publication of its
// tables (Tables) and a logical replication slot (pgoutput), both called
// name, and returns the stream. sourceDSN is a DSN of the source tenant
// database as the admin role, which needs REPLICATION (CheckOnline says);
// sourceAdmin a connection to it. DropStream removes both; the slot holds WAL
// on the source until then.
func OpenStream(ctx context.Context, sourceDSN string, sourceAdmin Querier, name string) (*Stream, error) {
	cfg, err := pgconn.ParseConfig(sourceDSN)
	if err != nil {
		return nil, fmt.Errorf("mover: OpenStream(%q): %w", name, err)
	}
	return OpenStreamConfig(ctx, cfg, sourceAdmin, name)
}

// OpenStreamConfig is OpenStream with a parsed connection configuration of
// the source tenant database (it is copied, not changed).
func OpenStreamConfig(ctx context.Context, source *pgconn.Config, sourceAdmin Querier, name string) (_ *Stream, err error) {
	return openStream(ctx, source, sourceAdmin, name, "")
}

// OpenTenantStream is OpenStreamConfig for one tenant's rows: its
// publication has a row filter (tenant_id = tenantID) on every table, so
// the slot sends only that tenant's changes (a promotion out of a pool
// database). Row filters need PostgreSQL 15 on the source; tenant_id is in
// every table's replica identity (its primary key), as they require.
func OpenTenantStream(ctx context.Context, source *pgconn.Config, sourceAdmin Querier, name, tenantID string) (*Stream, error) {
	if !uuidRE.MatchString(tenantID) {
		return nil, fmt.Errorf("mover: OpenTenantStream(%q): tenant id %q is not a UUID", name, tenantID)
	}
	return openStream(ctx, source, sourceAdmin, name, tenantID)
}

func openStream(ctx context.Context, source *pgconn.Config, sourceAdmin Querier, name, tenantID string) (_ *Stream, err error) {
	defer wrap(&err, fmt.Sprintf("OpenStream(%q)", name))
	if !validSlotName(name) {
		return nil, fmt.Errorf("%q is not a slot name: use 1 to 63 of a-z, 0-9 and _", name)
	}
	if err := ensurePublication(ctx, sourceAdmin, name, tenantID); err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	cfg := source.Copy()
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("source: replication connection: %w", err)
	}
	slot, err := pglogrepl.CreateReplicationSlot(ctx, conn, name, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT"})
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("source: creating replication slot: %w", err)
	}
	point, err := pglogrepl.ParseLSN(slot.ConsistentPoint)
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return &Stream{name: name, conn: conn, snapshot: slot.SnapshotName, consistentPoint: point, applied: point, relations: map[uint32]*relation{}, changes: newChangeSet()}, nil
}

// ensurePublication makes a publication called name of the tables (Tables)
// of the database q is connected to, unless it is there.
func ensurePublication(ctx context.Context, q Querier, name, tenantID string) error {
	var exists bool
	if err := q.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = $1)", name).Scan(&exists); err != nil || exists {
		return err
	}
	tables, err := Tables(ctx, q)
	if err != nil {
		return err
	}
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = qualified(t.Name)
		if tenantID != "" {
			names[i] += " WHERE (tenant_id = " + literal(tenantID) + ")"
		}
	}
	stmt := "CREATE PUBLICATION " + ident(name)
	if len(names) > 0 {
		stmt += " FOR TABLE " + strings.Join(names, ", ")
	}
	_, err = q.Exec(ctx, stmt)
	return err
}

// validSlotName is what PostgreSQL allows a replication slot's name.
func validSlotName(name string) bool {
	if name == "" || len(name) > 63 {
		return false
	}
	for _, r := range name {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '_' {
			return false
		}
	}
	return true
}

// Snapshot is the slot's exported snapshot, for CopyOptions.Snapshot.
func (s *Stream) Snapshot() string { return s.snapshot }

// ConsistentPoint is where the stream starts: the copy holds what was
// committed before it.
func (s *Stream) ConsistentPoint() LSN { return s.consistentPoint }

// Changes is what the stream has applied on the target so far: the keys of
// the rows it wrote, per table (ChangeSet).
func (s *Stream) Changes() *ChangeSet { return s.changes }

// Applied is the end of the last source transaction applied on the target.
func (s *Stream) Applied() LSN { return s.applied }

// Close closes the replication connection; the slot and publication stay
// (DropStream removes them).
func (s *Stream) Close(ctx context.Context) error { return s.conn.Close(ctx) }

// CurrentLSN is the source's current WAL insert position: what CatchUp is
// given once the source is fenced, so that every write the tenant made is
// applied. The insert position, not pg_current_wal_lsn (the write
// position): with synchronous_commit off a committed transaction's commit
// record may not be written yet, and a target taken up to the write
// position would miss it. The insert position can lie past the last record,
// where decoding only gets once more WAL comes, so CurrentLSN then commits
// an empty transaction with an xid of its own: a record past it, which
// takes the stream there within the WAL writer's delay.
func CurrentLSN(ctx context.Context, source Querier) (LSN, error) {
	var lsn LSN
	if err := source.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()").Scan(&lsn); err != nil {
		return 0, err
	}
	_, err := source.Exec(ctx, "SELECT pg_current_xact_id()")
	return lsn, err
}

// Lag is how far the target is behind the source, in bytes of WAL.
type Lag struct {
	Applied, Sent LSN
	Bytes         uint64
}

// statusPoll is how long CatchUp waits for a message before it asks the
// source where it is (a standby status update with a reply requested).
const statusPoll = 100 * time.Millisecond

// CatchUp applies the source's changes on target, each source transaction in
// one target transaction, until every transaction that committed before
// until is applied, and reports the lag to progress (may be nil) as it goes.
// It confirms what it applied to the slot, so that the source may recycle
// that WAL. target is the target tenant database as the admin role. The
// first call starts the stream: Copy under Snapshot must be done by then.
func (s *Stream) CatchUp(ctx context.Context, target *pgx.Conn, until LSN, progress func(Lag)) (err error) {
	defer wrap(&err, fmt.Sprintf("CatchUp(%s)", until))
	if !s.started {
		err := pglogrepl.StartReplication(ctx, s.conn, s.name, s.consistentPoint, pglogrepl.StartReplicationOptions{
			Mode:       pglogrepl.LogicalReplication,
			PluginArgs: []string{"proto_version '1'", "publication_names " + literal(s.name)},
		})
		if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		s.started = true
	}
	var tx pgx.Tx
	defer func() {
		if tx != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	for {
		if tx == nil && s.applied >= until {
			return s.confirm(ctx, false)
		}
		poll := statusPoll
		if s.poll > 0 {
			poll = s.poll
		}
		recvCtx, cancel := context.WithTimeout(ctx, poll)
		raw, err := s.conn.ReceiveMessage(recvCtx)
		cancel()
		if err != nil {
			if ctx.Err() == nil && pgconn.Timeout(err) {
				if err := s.confirm(ctx, true); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("source: %w", err)
		}
		switch m := raw.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("source: %w", pgconn.ErrorResponseToPgError(m))
		case *pgproto3.CopyData:
			switch m.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				k, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
				if err != nil {
					return err
				}
				s.serverEnd = max(s.serverEnd, k.ServerWALEnd)
				if tx == nil {
					// Nothing in flight: all the source sent is applied.
					s.applied = max(s.applied, s.serverEnd)
				}
				if progress != nil {
					progress(s.lag())
				}
				if k.ReplyRequested {
					if err := s.confirm(ctx, false); err != nil {
						return err
					}
				}
			case pglogrepl.XLogDataByteID:
				x, err := pglogrepl.ParseXLogData(m.Data[1:])
				if err != nil {
					return err
				}
				// Only keepalives say how far the source has decoded: an
				// XLogData's ServerWALEnd is not that.
				if tx, err = s.apply(ctx, target, tx, x.WALData); err != nil {
					return err
				}
			}
		}
	}
}

func (s *Stream) lag() Lag {
	l := Lag{Applied: s.applied, Sent: s.serverEnd}
	if s.serverEnd > s.applied {
		l.Bytes = uint64(s.serverEnd - s.applied)
	}
	return l
}

// confirm tells the source how far the target has applied.
func (s *Stream) confirm(ctx context.Context, replyRequested bool) error {
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: s.applied, ReplyRequested: replyRequested})
	if err != nil {
		return fmt.Errorf("source: status update: %w", err)
	}
	return nil
}

// apply applies one pgoutput message; tx is the target transaction of the
// source transaction in flight, if any.
func (s *Stream) apply(ctx context.Context, target *pgx.Conn, tx pgx.Tx, data []byte) (pgx.Tx, error) {
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return tx, err
	}
	if s.skipping {
		switch m := msg.(type) {
		case *pglogrepl.CommitMessage:
			s.skipping = false
			s.applied = max(s.applied, m.TransactionEndLSN)
			return nil, nil
		case *pglogrepl.InsertMessage, *pglogrepl.UpdateMessage, *pglogrepl.DeleteMessage, *pglogrepl.TruncateMessage:
			return nil, nil
		}
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		rel, err := describeRelation(ctx, target, m)
		if err != nil {
			return tx, err
		}
		s.relations[m.RelationID] = rel
	case *pglogrepl.BeginMessage:
		if tx, err = target.Begin(ctx); err != nil {
			return nil, fmt.Errorf("target: %w", err)
		}
		if s.ledger == nil { // the ledger's begin sets the formats itself
			if _, err := tx.Exec(ctx, stableFormat); err != nil {
				return tx, fmt.Errorf("target: %w", err)
			}
		} else {
			skip, err := s.ledger.begin(ctx, tx, m.FinalLSN)
			if err != nil {
				return tx, err
			}
			if skip {
				s.skipping = true
				return nil, tx.Rollback(ctx)
			}
		}
	case *pglogrepl.CommitMessage:
		if tx == nil {
			return nil, errors.New("commit without begin in the stream")
		}
		if s.ledger != nil {
			if err := s.ledger.commit(ctx, tx, m.TransactionEndLSN, s.changes); err != nil {
				return tx, err
			}
		}
		if err := tx.Commit(ctx); err != nil {
			return nil, fmt.Errorf("target: %w", err)
		}
		s.applied = max(s.applied, m.TransactionEndLSN)
		if s.ledger != nil {
			return nil, s.ledger.committed(ctx, m.TransactionEndLSN)
		}
		return nil, nil
	case *pglogrepl.InsertMessage:
		rel, err := s.relation(m.RelationID)
		if err != nil {
			return tx, err
		}
		s.changes.record(rel, m.Tuple)
		return tx, execChange(ctx, tx, rel.insert(m.Tuple))
	case *pglogrepl.UpdateMessage:
		rel, err := s.relation(m.RelationID)
		if err != nil {
			return tx, err
		}
		s.changes.record(rel, m.OldTuple)
		s.changes.record(rel, m.NewTuple)
		return tx, execChange(ctx, tx, rel.update(m.OldTuple, m.NewTuple))
	case *pglogrepl.DeleteMessage:
		rel, err := s.relation(m.RelationID)
		if err != nil {
			return tx, err
		}
		s.changes.record(rel, m.OldTuple)
		return tx, execChange(ctx, tx, rel.delete(m.OldTuple))
	case *pglogrepl.TruncateMessage:
		names := make([]string, 0, len(m.RelationIDs))
		for _, id := range m.RelationIDs {
			rel, err := s.relation(id)
			if err != nil {
				return tx, err
			}
			names = append(names, qualified(rel.name))
			s.changes.truncated(rel)
		}
		return tx, execChange(ctx, tx, change{sql: "TRUNCATE " + strings.Join(names, ", ")})
	}
	return tx, nil
}

func (s *Stream) relation(id uint32) (*relation, error) {
	rel, ok := s.relations[id]
	if !ok {
		return nil, fmt.Errorf("change to relation %d before its description in the stream", id)
	}
	return rel, nil
}

// describeRelation looks up on the target the types of a source relation's
// columns, so that each value's text is cast to its column's type.
func describeRelation(ctx context.Context, target *pgx.Conn, m *pglogrepl.RelationMessage) (*relation, error) {
	if m.Namespace != Schema {
		return nil, fmt.Errorf("stream: relation %s.%s is outside schema %s", m.Namespace, m.RelationName, Schema)
	}
	rel := &relation{name: m.RelationName}
	types := map[string]string{}
	rows, err := target.Query(ctx, `SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
		WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped`, qualified(m.RelationName))
	if err != nil {
		return nil, fmt.Errorf("target: table %s: %w", m.RelationName, err)
	}
	for rows.Next() {
		var n, t string
		if err := rows.Scan(&n, &t); err != nil {
			rows.Close()
			return nil, err
		}
		types[n] = t
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("target: table %s: %w", m.RelationName, err)
	}
	for _, c := range m.Columns {
		t, ok := types[c.Name]
		if !ok {
			return nil, &SchemaMismatchError{Differences: []string{fmt.Sprintf("table %s: column %s not on the target", m.RelationName, c.Name)}}
		}
		rel.columns = append(rel.columns, c.Name)
		rel.types = append(rel.types, t)
		rel.key = append(rel.key, c.Flags&1 != 0)
	}
	return rel, nil
}

type change struct {
	sql  string
	args []any
}

func execChange(ctx context.Context, tx pgx.Tx, c change) error {
	if tx == nil {
		return errors.New("change outside a transaction in the stream")
	}
	tag, err := tx.Exec(ctx, c.sql, c.args...)
	if err != nil {
		return fmt.Errorf("target: %s: %w", c.sql, err)
	}
	if !strings.HasPrefix(c.sql, "TRUNCATE") && tag.RowsAffected() != 1 {
		return fmt.Errorf("target: %s changed %d rows, not 1: %w", c.sql, tag.RowsAffected(), errDrift)
	}
	return nil
}

// value is the expression and argument of column i's value in t.
func (r *relation) value(t *pglogrepl.TupleData, i int, args *[]any) string {
	col := t.Columns[i]
	if col.DataType == pglogrepl.TupleDataTypeNull {
		return "NULL"
	}
	*args = append(*args, string(col.Data))
	return fmt.Sprintf("$%d::text::%s", len(*args), r.types[i])
}

func (r *relation) insert(t *pglogrepl.TupleData) change {
	var args []any
	cols := make([]string, 0, len(t.Columns))
	vals := make([]string, 0, len(t.Columns))
	for i := range t.Columns {
		cols = append(cols, ident(r.columns[i]))
		vals = append(vals, r.value(t, i, &args))
	}
	// COPY and the stream write identity columns the source generated.
	return change{sql: "INSERT INTO " + qualified(r.name) + " (" + strings.Join(cols, ", ") + ") OVERRIDING SYSTEM VALUE VALUES (" + strings.Join(vals, ", ") + ")", args: args}
}

// update changes the row whose key is old's (sent when the key changed) or
// else t's. A key column that kept its value is not set: an identity column
// GENERATED ALWAYS may not be, even to its own value.
func (r *relation) update(old, t *pglogrepl.TupleData) change {
	key := t
	if old != nil {
		key = old
	}
	var args []any
	var sets []string
	for i, col := range t.Columns {
		if col.DataType == pglogrepl.TupleDataTypeToast {
			continue // unchanged, and not sent
		}
		if r.key[i] && (old == nil || bytes.Equal(old.Columns[i].Data, col.Data) && old.Columns[i].DataType == col.DataType) {
			continue
		}
		sets = append(sets, ident(r.columns[i])+" = "+r.value(t, i, &args))
	}
	where := r.where(key, &args)
	if len(sets) == 0 {
		// Nothing changed but the row must be there all the same.
		return change{sql: "SELECT FROM " + qualified(r.name) + " WHERE " + where, args: args}
	}
	return change{sql: "UPDATE " + qualified(r.name) + " SET " + strings.Join(sets, ", ") + " WHERE " + where, args: args}
}

func (r *relation) delete(key *pglogrepl.TupleData) change {
	var args []any
	return change{sql: "DELETE FROM " + qualified(r.name) + " WHERE " + r.where(key, &args), args: args}
}

// where matches the row by its replica identity's columns.
func (r *relation) where(key *pglogrepl.TupleData, args *[]any) string {
	var conds []string
	for i := range key.Columns {
		if !r.key[i] {
			continue
		}
		if key.Columns[i].DataType == pglogrepl.TupleDataTypeNull {
			conds = append(conds, ident(r.columns[i])+" IS NULL") // REPLICA IDENTITY FULL
			continue
		}
		conds = append(conds, ident(r.columns[i])+" = "+r.value(key, i, args))
	}
	return strings.Join(conds, " AND ")
}

// slotReleaseWait bounds how long DropStream waits for a closed stream's
// slot to be released.
const slotReleaseWait = 10 * time.Second

// DropStream removes the stream's slot and publication from the source; what
// is already gone is no error. A slot in use (its stream not closed) cannot
// be dropped.
func DropStream(ctx context.Context, sourceAdmin Querier, name string) (err error) {
	defer wrap(&err, fmt.Sprintf("DropStream(%q)", name))
	// A stream just closed leaves its slot active until its WAL sender has
	// exited: wait for that, a bounded while.
	deadline := time.Now().Add(slotReleaseWait)
	for {
		var active bool
		err := sourceAdmin.QueryRow(ctx, "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1", name).Scan(&active)
		if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		if !active {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("source: replication slot %s is still in use after %s", name, slotReleaseWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	if _, err := sourceAdmin.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", name); err != nil {
		return fmt.Errorf("source: dropping slot: %w", err)
	}
	if _, err := sourceAdmin.Exec(ctx, "DROP PUBLICATION IF EXISTS "+ident(name)); err != nil {
		return fmt.Errorf("source: dropping publication: %w", err)
	}
	return nil
}
