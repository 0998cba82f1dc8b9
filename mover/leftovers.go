package mover

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/catalog"
)

// Kinds of Leftover.
const (
	KindSlot         = "replication slot"
	KindPublication  = "publication"
	KindSubscription = "subscription"
)

// Leftover is a replication slot, publication or subscription on a server,
// named like a move's (tenantplane_move_<id>), that no open move owns: what
// a move leaves when its process dies between making the object and
// recording it, or when a server was restored from a backup. A forgotten
// slot keeps WAL on its server until the disk fills (up to
// max_slot_wal_keep_size, where that is set).
type Leftover struct {
	Server   string `json:"server"`
	Kind     string `json:"kind"` // KindSlot, KindPublication or KindSubscription
	Name     string `json:"name"`
	Database string `json:"database"` // where it lives ("" for a physical slot)
	Why      string `json:"why"`
	Gone     bool   `json:"removed"`
}

// moveObjectRE matches slotName: only names the mover makes are ever
// reported, so the reconciler never touches anyone else's replication.
var moveObjectRE = regexp.MustCompile(`^tenantplane_move_([0-9]+)$`)

// Leftovers reads every server for replication objects named like a move's
// that no open move owns and returns them; with remove, it drops them (a
// slot in use is freed first: its WAL sender is terminated). An open move's
// objects are never reported: its job drops them, whether it finishes or
// aborts. A slot or publication is an open move's on its source (its
// stream) or its target (its keep's, made before the hold), a subscription
// on its target; a done move whose source is kept in step owns the slot
// and publication of its keep on its target (keep.go).
//
// It stops at the first server that fails, with an error naming it.
func (s *Service) Leftovers(ctx context.Context, remove bool) ([]Leftover, error) {
	servers, err := s.store.ListServers(ctx)
	if err != nil {
		return nil, err
	}
	out := []Leftover{}
	for _, srv := range servers {
		found, err := s.leftoversOn(ctx, srv, remove)
		out = append(out, found...)
		if err != nil {
			return out, catalog.WrapError(catalog.CodeUnavailable, err, "server %q: replication leftovers", srv.Name)
		}
	}
	return out, nil
}

func (s *Service) leftoversOn(ctx context.Context, srv catalog.Server, remove bool) ([]Leftover, error) {
	conn, err := s.connect(ctx, srv.Name, "")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))

	// The server first, then the catalog: a move started in between is in
	// the catalog's answer, so its objects are never taken for leftovers.
	rows, err := conn.Query(ctx, `
		SELECT $1, slot_name::text, coalesce(database::text, '') FROM pg_replication_slots WHERE slot_name ~ $2
		UNION ALL
		SELECT $3, s.subname::text, d.datname::text FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid WHERE s.subname ~ $2
		ORDER BY 1, 2`, KindSlot, moveObjectRE.String(), KindSubscription)
	if err != nil {
		return nil, err
	}
	found, err := pgx.CollectRows(rows, pgx.RowToStructByPos[struct{ Kind, Name, Database string }])
	if err != nil {
		return nil, err
	}
	var all []Leftover
	for _, f := range found {
		all = append(all, Leftover{Server: srv.Name, Kind: f.Kind, Name: f.Name, Database: f.Database})
	}
	// Publications live in the tenant's database: on a move's source (its
	// stream) or target (the keep of its source, keep.go). Look in the
	// databases of the moves off or onto this server: a promotion's source
	// is its pool database, a demotion's the tenant's own database (which
	// its row no longer names), and the other way round for their targets;
	// a repool has a pool database on both sides.
	rows, err = s.store.Pool().Query(ctx, `SELECT db FROM (
			SELECT CASE m.kind WHEN 'promote' THEN 'tp_pool_' || m.pool_id WHEN 'repool' THEN 'tp_pool_' || m.pool_id
				WHEN 'demote' THEN 't_' || replace(t.id::text, '-', '') ELSE t.db_name END AS db
			FROM moves m JOIN tenants t ON t.id = m.tenant_id WHERE m.from_server_id = $1
			UNION
			SELECT CASE m.kind WHEN 'demote' THEN 'tp_pool_' || m.pool_id WHEN 'repool' THEN 'tp_pool_' || m.to_pool_id
				WHEN 'promote' THEN 't_' || replace(t.id::text, '-', '') ELSE t.db_name END
			FROM moves m JOIN tenants t ON t.id = m.tenant_id WHERE m.to_server_id = $1) d
		WHERE db IS NOT NULL ORDER BY 1`, srv.ID)
	if err != nil {
		return nil, catalog.Classify(err, "moves")
	}
	databases, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, catalog.Classify(err, "moves")
	}
	for _, db := range databases {
		pubs, err := s.publications(ctx, conn, srv.Name, db)
		if err != nil {
			return nil, err
		}
		for _, p := range pubs {
			all = append(all, Leftover{Server: srv.Name, Kind: KindPublication, Name: p, Database: db})
		}
	}
	if len(all) == 0 {
		return nil, nil
	}

	type owner struct {
		phase    string
		from, to int64
		kept     bool // done, its source kept in step by a slot on its target
	}
	var ids []int64
	for _, l := range all {
		id, _ := strconv.ParseInt(moveObjectRE.FindStringSubmatch(l.Name)[1], 10, 64)
		ids = append(ids, id)
	}
	owners := map[int64]owner{}
	rows, err = s.store.Pool().Query(ctx, `SELECT id, phase, from_server_id, to_server_id, keep_in_step AND NOT source_dropped
		FROM moves WHERE id = ANY($1)`, ids)
	if err != nil {
		return nil, catalog.Classify(err, "moves")
	}
	for rows.Next() {
		var id int64
		var o owner
		if err := rows.Scan(&id, &o.phase, &o.from, &o.to, &o.kept); err != nil {
			rows.Close()
			return nil, catalog.Classify(err, "moves")
		}
		owners[id] = o
	}
	if err := rows.Err(); err != nil {
		return nil, catalog.Classify(err, "moves")
	}

	// Dropping a slot takes REPLICATION (or a superuser): without it a
	// slot is reported, with how to drop it, and the rest still goes.
	var canDropSlots bool
	if err := conn.QueryRow(ctx, "SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user").Scan(&canDropSlots); err != nil {
		return nil, err
	}
	var out []Leftover
	for i, l := range all {
		o, ok := owners[ids[i]]
		server := o.from
		if l.Kind == KindSubscription {
			server = o.to
		}
		switch {
		case !ok:
			l.Why = fmt.Sprintf("no move %d in the catalog", ids[i])
		case (Move{Phase: o.phase}).Open() && (server == srv.ID || o.to == srv.ID):
			continue // the open move's own (its stream, or its keep's slot made early): its job drops it
		case o.phase == PhaseDone && o.kept && o.to == srv.ID && l.Kind != KindSubscription:
			continue // the keep of its source: the drop job drops it
		case (Move{Phase: o.phase}).Open():
			l.Why = fmt.Sprintf("move %d is open but does not make its %s on this server", ids[i], l.Kind)
		default:
			l.Why = fmt.Sprintf("move %d is %s: it owns no %s any more", ids[i], o.phase, l.Kind)
		}
		if remove && l.Kind == KindSlot && !canDropSlots {
			l.Why += fmt.Sprintf("; the server's admin role lacks REPLICATION, so it cannot drop it: as a superuser, SELECT pg_drop_replication_slot(%s)", literal(l.Name))
		} else if remove {
			if err := s.dropLeftover(ctx, conn, srv.Name, l); err != nil {
				return out, fmt.Errorf("dropping %s %s: %w", l.Kind, l.Name, err)
			}
			l.Gone = true
			s.logger.InfoContext(ctx, "replication leftover removed", "server", srv.Name, "kind", l.Kind, "name", l.Name, "database", l.Database)
		}
		out = append(out, l)
	}
	return out, nil
}

// publications lists the move-named publications of database db on the
// server (none when it is gone).
func (s *Service) publications(ctx context.Context, conn *pgx.Conn, server, db string) ([]string, error) {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1 AND datallowconn)", db).Scan(&exists); err != nil {
		return nil, err
	}
	if !exists {
		return nil, nil
	}
	dbConn, err := s.connect(ctx, server, db)
	if err != nil {
		return nil, fmt.Errorf("database %s: %w", db, err)
	}
	defer dbConn.Close(context.WithoutCancel(ctx))
	rows, err := dbConn.Query(ctx, "SELECT pubname::text FROM pg_publication WHERE pubname ~ $1 ORDER BY 1", moveObjectRE.String())
	if err != nil {
		return nil, fmt.Errorf("database %s: %w", db, err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// dropLeftover drops one leftover: conn is the server's admin connection.
func (s *Service) dropLeftover(ctx context.Context, conn *pgx.Conn, server string, l Leftover) error {
	switch l.Kind {
	case KindSlot:
		return dropSlot(ctx, conn, l.Name)
	case KindPublication:
		dbConn, err := s.connect(ctx, server, l.Database)
		if err != nil {
			return err
		}
		defer dbConn.Close(context.WithoutCancel(ctx))
		_, err = dbConn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+ident(l.Name))
		return err
	case KindSubscription:
		// Detached from its slot first, so that dropping it does not reach
		// out to its publisher (which may be gone): the slot there, if any,
		// is a leftover of its own.
		dbConn, err := s.connect(ctx, server, l.Database)
		if err != nil {
			return err
		}
		defer dbConn.Close(context.WithoutCancel(ctx))
		for _, stmt := range []string{
			"ALTER SUBSCRIPTION " + ident(l.Name) + " DISABLE",
			"ALTER SUBSCRIPTION " + ident(l.Name) + " SET (slot_name = NONE)",
			"DROP SUBSCRIPTION IF EXISTS " + ident(l.Name),
		} {
			if _, err := dbConn.Exec(ctx, stmt); err != nil {
				return err
			}
		}
		return nil
	}
	return errors.New("unknown kind " + l.Kind)
}

// dropSlot drops a replication slot, terminating the WAL sender that holds
// it if any (a leftover's holder is a stream nobody will finish), and
// waiting a bounded while for it to let go.
func dropSlot(ctx context.Context, conn *pgx.Conn, name string) error {
	deadline := time.Now().Add(slotReleaseWait)
	for {
		var pid int32
		var exists bool
		err := conn.QueryRow(ctx, "SELECT count(*) > 0, coalesce(max(active_pid), 0) FROM pg_replication_slots WHERE slot_name = $1", name).Scan(&exists, &pid)
		if err != nil {
			return err
		}
		if !exists {
			return nil
		}
		if pid == 0 {
			_, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", name)
			return err
		}
		if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replication slot %s is still in use (pid %d) after %s", name, pid, slotReleaseWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
