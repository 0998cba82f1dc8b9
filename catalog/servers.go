package catalog

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// ServerState says whether a server takes new tenants.
type ServerState string

const (
	ServerActive   ServerState = "active"   // accepts new tenant databases
	ServerDraining ServerState = "draining" // keeps its tenants, takes no new ones
	// ServerEvacuating: an evacuation is moving its tenants off (mover);
	// it takes no new ones.
	ServerEvacuating ServerState = "evacuating"
	// ServerEmpty: an evacuation finished and left no tenant on it; it
	// takes no new ones.
	ServerEmpty ServerState = "empty"
)

// Server is a PostgreSQL server that holds tenant databases. Its admin DSN is
// sealed in the catalog; DSNRedacted is safe to show.
type Server struct {
	ID          int64       `json:"id"`
	Name        string      `json:"name"`
	DSNRedacted string      `json:"dsn"`
	Capacity    int         `json:"capacity"`
	ConnBudget  int         `json:"conn_budget"`
	State       ServerState `json:"state"`
	// Tenants counts the tenants with a database of their own on it that
	// are not deleted: what Capacity limits (placement, moves). Pooled
	// tenants have no database of their own and count against their pool
	// database's capacity instead: PoolDatabases and PooledTenants say how
	// many of those it holds.
	Tenants       int       `json:"tenants"`
	PoolDatabases int       `json:"pool_databases"`
	PooledTenants int       `json:"pooled_tenants"`
	CreatedAt     time.Time `json:"created_at"`
}

// NewServer is what registering a server takes. DSN is the admin DSN in
// plaintext; the store seals it.
type NewServer struct {
	Name       string
	DSN        string
	Capacity   int
	ConnBudget int
	Actor      string // who registered it, for the audit log
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

// ValidateServerName checks a server name: lowercase letters, digits and
// hyphens, starting with a letter, at most 63 characters.
func ValidateServerName(name string) error {
	if !nameRE.MatchString(name) {
		return Errorf(CodeInvalid, "server name %q must be 1 to 63 lowercase letters, digits or hyphens, starting with a letter", name)
	}
	return nil
}

func serverAD(name string) []byte { return []byte("server-dsn:" + name) }

// CreateServer registers a server and records an audit event. A taken name is
// a CodeConflict error.
func (s *Store) CreateServer(ctx context.Context, ns NewServer) (Server, error) {
	if err := ValidateServerName(ns.Name); err != nil {
		return Server{}, err
	}
	if ns.Capacity <= 0 || ns.ConnBudget <= 0 {
		return Server{}, Errorf(CodeInvalid, "capacity and connection budget must be positive")
	}
	redacted, err := RedactDSN(ns.DSN)
	if err != nil {
		return Server{}, err
	}
	sealed := s.cipher.Seal([]byte(ns.DSN), serverAD(ns.Name))
	var srv Server
	err = s.InTx(ctx, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `
			INSERT INTO servers (name, dsn_sealed, dsn_redacted, capacity, conn_budget)
			VALUES ($1, $2, $3, $4, $5)
			RETURNING id, name, dsn_redacted, capacity, conn_budget, state, created_at`,
			ns.Name, sealed, redacted, ns.Capacity, ns.ConnBudget,
		).Scan(&srv.ID, &srv.Name, &srv.DSNRedacted, &srv.Capacity, &srv.ConnBudget, &srv.State, &srv.CreatedAt)
		if err != nil {
			return Classify(err, "server "+quote(ns.Name))
		}
		return InsertAudit(ctx, tx, AuditEvent{Actor: ns.Actor, Action: "server.registered", Subject: ns.Name})
	})
	return srv, err
}

const serverColumns = `s.id, s.name, s.dsn_redacted, s.capacity, s.conn_budget, s.state,
	(SELECT count(*) FROM tenants t WHERE t.server_id = s.id AND t.state <> 'deleted'),
	(SELECT count(*) FROM pool_databases p WHERE p.server_id = s.id),
	(SELECT count(*) FROM tenants t JOIN pool_databases p ON p.id = t.pool_id WHERE p.server_id = s.id AND t.state <> 'deleted'),
	s.created_at`

func scanServer(row pgx.Row) (srv Server, err error) {
	err = row.Scan(&srv.ID, &srv.Name, &srv.DSNRedacted, &srv.Capacity, &srv.ConnBudget, &srv.State, &srv.Tenants,
		&srv.PoolDatabases, &srv.PooledTenants, &srv.CreatedAt)
	return srv, err
}

// ListServers returns every registered server, by name.
func (s *Store) ListServers(ctx context.Context) ([]Server, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+serverColumns+` FROM servers s ORDER BY s.name`)
	if err != nil {
		return nil, Classify(err, "servers")
	}
	servers, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Server, error) { return scanServer(row) })
	return servers, Classify(err, "servers")
}

// ListServersPage returns a page of servers by name: at most limit
// (CheckLimit's bounds) after cursor, and the next page's cursor.
func (s *Store) ListServersPage(ctx context.Context, limit int, cursor string) ([]Server, string, error) {
	limit, err := CheckLimit(limit)
	if err != nil {
		return nil, "", err
	}
	after := ""
	if parts, err := DecodeCursor(cursor, 1); err != nil {
		return nil, "", err
	} else if parts != nil {
		after = parts[0]
	}
	rows, err := s.pool.Query(ctx, `SELECT `+serverColumns+` FROM servers s WHERE s.name > $1 ORDER BY s.name LIMIT $2`, after, limit+1)
	if err != nil {
		return nil, "", Classify(err, "servers")
	}
	servers, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Server, error) { return scanServer(row) })
	if err != nil {
		return nil, "", Classify(err, "servers")
	}
	next := ""
	if len(servers) > limit {
		servers = servers[:limit]
		next = EncodeCursor(servers[limit-1].Name)
	}
	if servers == nil {
		servers = []Server{}
	}
	return servers, next, nil
}

// GetServer returns the server of that name.
func (s *Store) GetServer(ctx context.Context, name string) (Server, error) {
	srv, err := scanServer(s.pool.QueryRow(ctx, `SELECT `+serverColumns+` FROM servers s WHERE s.name = $1`, name))
	return srv, Classify(err, "server "+quote(name))
}

// ServerDSN returns the plaintext admin DSN of a server. Never log or return it.
func (s *Store) ServerDSN(ctx context.Context, name string) (string, error) {
	var sealed []byte
	err := s.pool.QueryRow(ctx, `SELECT dsn_sealed FROM servers WHERE name = $1`, name).Scan(&sealed)
	if err != nil {
		return "", Classify(err, "server "+quote(name))
	}
	dsn, err := s.cipher.Open(sealed, serverAD(name))
	return string(dsn), err
}

// UpdateServerDSN replaces a server's admin DSN (its password changed, or it moved).
func (s *Store) UpdateServerDSN(ctx context.Context, name, dsn, actor string) error {
	redacted, err := RedactDSN(dsn)
	if err != nil {
		return err
	}
	return s.InTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE servers SET dsn_sealed = $2, dsn_redacted = $3, updated_at = now() WHERE name = $1`,
			name, s.cipher.Seal([]byte(dsn), serverAD(name)), redacted)
		if err != nil {
			return Classify(err, "server "+quote(name))
		}
		if tag.RowsAffected() == 0 {
			return Errorf(CodeNotFound, "server %q not found", name)
		}
		return InsertAudit(ctx, tx, AuditEvent{Actor: actor, Action: "server.dsn_updated", Subject: name})
	})
}

// SetServerState marks a server active or draining (no new placements).
func (s *Store) SetServerState(ctx context.Context, name string, state ServerState, actor string) (Server, error) {
	if state != ServerActive && state != ServerDraining {
		return Server{}, Errorf(CodeInvalid, "unknown server state %q", state)
	}
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		var from ServerState
		if err := tx.QueryRow(ctx, `SELECT state FROM servers WHERE name = $1 FOR UPDATE`, name).Scan(&from); err != nil {
			return Classify(err, "server "+quote(name))
		}
		if from == ServerEvacuating {
			return Errorf(CodeConflict, "server %q is being evacuated: pause or cancel its evacuation first", name)
		}
		if _, err := tx.Exec(ctx, `UPDATE servers SET state = $2, updated_at = now() WHERE name = $1`, name, state); err != nil {
			return Classify(err, "server "+quote(name))
		}
		return InsertAudit(ctx, tx, AuditEvent{Actor: actor, Action: "server." + string(state), Subject: name,
			FromState: string(from), ToState: string(state)})
	})
	if err != nil {
		return Server{}, err
	}
	return s.GetServer(ctx, name)
}

// ServerUpdate is a change to a server's limits; nil fields stay as they are.
type ServerUpdate struct {
	Capacity   *int `json:"capacity"`
	ConnBudget *int `json:"conn_budget"`
}

// ServerChangePrefix starts the payload that announces a change to a server
// on TenantChannel ("server:<id>"): routers apply its new connection budget.
// Tenant ids are UUIDs, so the two never clash on the one channel.
const ServerChangePrefix = "server:"

// ServerChanged reports whether a TenantChannel payload announces a change
// to a server, and which.
func ServerChanged(payload string) (int64, bool) {
	raw, ok := strings.CutPrefix(payload, ServerChangePrefix)
	if !ok {
		return 0, false
	}
	id, err := strconv.ParseInt(raw, 10, 64)
	return id, err == nil
}

// UpdateServer changes a server's capacity and connection budget, records an
// audit event and announces the change on TenantChannel, in one
// transaction: every router applies the new budget as the change commits.
// A smaller capacity than the tenants it holds only stops new placements.
func (s *Store) UpdateServer(ctx context.Context, name string, u ServerUpdate, actor string) (Server, error) {
	if u.Capacity == nil && u.ConnBudget == nil {
		return Server{}, Errorf(CodeInvalid, "nothing to change: send capacity and/or conn_budget")
	}
	if (u.Capacity != nil && *u.Capacity <= 0) || (u.ConnBudget != nil && *u.ConnBudget <= 0) {
		return Server{}, Errorf(CodeInvalid, "capacity and conn_budget must be positive")
	}
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		var id int64
		var capacity, budget int
		err := tx.QueryRow(ctx, `
			UPDATE servers SET capacity = coalesce($2, capacity), conn_budget = coalesce($3, conn_budget), updated_at = now()
			WHERE name = $1 RETURNING id, capacity, conn_budget`, name, u.Capacity, u.ConnBudget).Scan(&id, &capacity, &budget)
		if err != nil {
			return Classify(err, "server "+quote(name))
		}
		if err := InsertAudit(ctx, tx, AuditEvent{Actor: actor, Action: "server.updated", Subject: name,
			Reason: fmt.Sprintf("capacity %d, conn_budget %d", capacity, budget)}); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `SELECT pg_notify($1, $2)`, TenantChannel, ServerChangePrefix+strconv.FormatInt(id, 10))
		return Classify(err, "notify")
	})
	if err != nil {
		return Server{}, err
	}
	return s.GetServer(ctx, name)
}
