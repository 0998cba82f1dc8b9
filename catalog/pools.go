package catalog

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// PoolState is where a pool database is: provisioning until its database
// and role exist on its server, then active; failed with the reason;
// retired once an evacuation emptied its server (no tenant, none taken).
type PoolState string

const (
	PoolProvisioning PoolState = "provisioning"
	PoolActive       PoolState = "active"
	PoolFailed       PoolState = "failed"
	PoolRetired      PoolState = "retired"
)

// PoolDatabase is a database on a server shared by pooled tenants, each
// seeing only its own rows (row-level security). Routers reach it as its
// own login role, which owns nothing there.
type PoolDatabase struct {
	ID            int64     `json:"id"`
	Name          string    `json:"name"`
	ServerID      int64     `json:"-"`
	Server        string    `json:"server"`
	Capacity      int       `json:"capacity"`
	Tenants       int       `json:"tenants"`
	State         PoolState `json:"state"`
	SchemaVersion int64     `json:"schema_version"`
	SchemaDirty   bool      `json:"schema_dirty"`
	LastError     string    `json:"last_error"`
	CreatedAt     time.Time `json:"created_at"`
}

// poolPrefix names pool databases and their roles: tp_pool_<id>.
const poolPrefix = "tp_pool_"

// PoolName is the name of a pool database and of its login role.
func PoolName(id int64) string { return poolPrefix + strconv.FormatInt(id, 10) }

// PoolIDOf is the id in a pool database's name, 0 when it is not one.
func PoolIDOf(name string) int64 {
	rest, ok := strings.CutPrefix(name, poolPrefix)
	if !ok {
		return 0
	}
	id, err := strconv.ParseInt(rest, 10, 64)
	if err != nil || id <= 0 || strconv.FormatInt(id, 10) != rest {
		return 0
	}
	return id
}

func poolAD(id int64) []byte { return []byte("pool-credentials:" + strconv.FormatInt(id, 10)) }

const poolColumns = `p.id, p.server_id, s.name, p.capacity,
	(SELECT count(*) FROM tenants t WHERE t.pool_id = p.id AND t.state <> 'deleted'),
	p.state, p.schema_version, p.schema_dirty, p.last_error, p.created_at`

const poolFrom = ` FROM pool_databases p JOIN servers s ON s.id = p.server_id `

func scanPool(row pgx.Row) (p PoolDatabase, err error) {
	err = row.Scan(&p.ID, &p.ServerID, &p.Server, &p.Capacity, &p.Tenants, &p.State, &p.SchemaVersion, &p.SchemaDirty, &p.LastError, &p.CreatedAt)
	p.Name = PoolName(p.ID)
	return p, err
}

// CreatePoolDatabase records a pool database of capacity tenants on the
// named server, in state provisioning, with a sealed password for its role;
// the provisioner makes it on the server and marks it active.
func (s *Store) CreatePoolDatabase(ctx context.Context, server string, capacity int, actor string) (PoolDatabase, error) {
	if capacity <= 0 || capacity > 100000 {
		return PoolDatabase{}, Errorf(CodeInvalid, "capacity must be from 1 to 100000 tenants")
	}
	var p PoolDatabase
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		var serverID int64
		var state ServerState
		err := tx.QueryRow(ctx, `SELECT id, state FROM servers WHERE name = $1`, server).Scan(&serverID, &state)
		if err == pgx.ErrNoRows {
			return Errorf(CodeNotFound, "server %q not found", server)
		}
		if err != nil {
			return Classify(err, "server "+quote(server))
		}
		if state != ServerActive {
			return Errorf(CodeConflict, "server %q is %s and takes no new pool databases", server, state)
		}
		var id int64
		// The password is sealed bound to the row's id, known once inserted.
		if err := tx.QueryRow(ctx, `INSERT INTO pool_databases (server_id, capacity, credentials_sealed) VALUES ($1, $2, '') RETURNING id`,
			serverID, capacity).Scan(&id); err != nil {
			return Classify(err, "pool database")
		}
		if _, err := tx.Exec(ctx, `UPDATE pool_databases SET credentials_sealed = $2 WHERE id = $1`,
			id, s.cipher.Seal([]byte(newPassword()), poolAD(id))); err != nil {
			return Classify(err, "pool database")
		}
		if p, err = scanPool(tx.QueryRow(ctx, `SELECT `+poolColumns+poolFrom+`WHERE p.id = $1`, id)); err != nil {
			return Classify(err, "pool database")
		}
		return InsertAudit(ctx, tx, AuditEvent{Actor: actor, Action: "pool.created", Subject: p.Name,
			Details: map[string]any{"server": server, "capacity": capacity}})
	})
	return p, err
}

// GetPoolDatabase returns the pool database with that id.
func (s *Store) GetPoolDatabase(ctx context.Context, id int64) (PoolDatabase, error) {
	p, err := scanPool(s.pool.QueryRow(ctx, `SELECT `+poolColumns+poolFrom+`WHERE p.id = $1`, id))
	return p, Classify(err, fmt.Sprintf("pool database %d", id))
}

// ListPoolDatabases returns every pool database, by id.
func (s *Store) ListPoolDatabases(ctx context.Context) ([]PoolDatabase, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+poolColumns+poolFrom+`ORDER BY p.id`)
	if err != nil {
		return nil, Classify(err, "pool databases")
	}
	pools, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (PoolDatabase, error) { return scanPool(row) })
	if pools == nil {
		pools = []PoolDatabase{}
	}
	return pools, Classify(err, "pool databases")
}

// SetPoolState records where a pool database's provisioning got to, and its
// schema when it became active.
func (s *Store) SetPoolState(ctx context.Context, id int64, state PoolState, lastError string, schema *SchemaState) error {
	_, err := s.pool.Exec(ctx, `UPDATE pool_databases SET state = $2, last_error = $3, updated_at = now(),
		schema_version = coalesce($4, schema_version), schema_dirty = coalesce($5, schema_dirty) WHERE id = $1`,
		id, state, lastError, schemaVersion(schema), schemaDirty(schema))
	return Classify(err, fmt.Sprintf("pool database %d", id))
}

// SetPoolSchema records the schema version read from a pool database.
func (s *Store) SetPoolSchema(ctx context.Context, id int64, version int64, dirty bool) error {
	return s.SetPoolState(ctx, id, PoolActive, "", &SchemaState{Version: version, Dirty: dirty})
}

func schemaVersion(s *SchemaState) *int64 {
	if s == nil {
		return nil
	}
	return &s.Version
}

func schemaDirty(s *SchemaState) *bool {
	if s == nil {
		return nil
	}
	return &s.Dirty
}

// PoolCredentials returns the login role of a pool database and its
// password. Never log or return them.
func (s *Store) PoolCredentials(ctx context.Context, id int64) (role, password string, err error) {
	var sealed []byte
	if err := s.pool.QueryRow(ctx, `SELECT credentials_sealed FROM pool_databases WHERE id = $1`, id).Scan(&sealed); err != nil {
		return "", "", Classify(err, fmt.Sprintf("pool database %d", id))
	}
	plain, err := s.cipher.Open(sealed, poolAD(id))
	return PoolName(id), string(plain), err
}

// createPooledTenant places a pooled tenant in the pool database with the
// most room (on nt.Server when given), active at once: no database, no
// role, no job. The caller holds the placement lock, so no pool fills past
// its capacity (which counts the moves under way into it too).
func createPooledTenant(ctx context.Context, tx pgx.Tx, nt NewTenant) (Tenant, error) {
	var poolID int64
	err := tx.QueryRow(ctx, `
		SELECT id FROM (
			SELECT p.id, p.capacity - (SELECT count(*) FROM tenants t WHERE t.pool_id = p.id AND t.state <> 'deleted')
				-- a demotion or repool under way into it has its place already
				- (SELECT count(*) FROM moves m WHERE m.phase NOT IN ('done', 'aborted', 'reverted')
					AND (m.kind = 'demote' AND m.pool_id = p.id OR m.kind = 'repool' AND m.to_pool_id = p.id)) AS free
			FROM pool_databases p JOIN servers s ON s.id = p.server_id
			WHERE p.state = 'active' AND s.state = 'active' AND ($1 = '' OR s.name = $1)
		) c WHERE free > 0 ORDER BY free DESC, id LIMIT 1`, nt.Server).Scan(&poolID)
	if err == pgx.ErrNoRows {
		where := ""
		if nt.Server != "" {
			where = " on server " + quote(nt.Server)
		}
		return Tenant{}, Errorf(CodeConflict, "no pool database%s has room for a pooled tenant: add one (POST /admin/v1/pools, tenantplane pools create SERVER)", where)
	}
	if err != nil {
		return Tenant{}, Classify(err, "pool databases")
	}
	id, err := scanID(tx.QueryRow(ctx, `
		INSERT INTO tenants (slug, name, plan, state, pool_id, schema_version, schema_dirty)
		SELECT $1, $2, $3, 'active', p.id, p.schema_version, p.schema_dirty FROM pool_databases p WHERE p.id = $4
		RETURNING id`, nt.Slug, nt.Name, nt.Plan, poolID))
	if err != nil {
		return Tenant{}, Classify(err, "tenant "+quote(nt.Slug))
	}
	t, err := scanTenant(tx.QueryRow(ctx, `SELECT `+tenantColumns+tenantFrom+`WHERE t.id = $1`, id))
	if err != nil {
		return Tenant{}, Classify(err, "tenant")
	}
	if err := InsertAudit(ctx, tx, AuditEvent{Actor: nt.Actor, Action: "tenant.created", TenantID: id, Subject: nt.Slug,
		ToState: string(TenantActive), Details: map[string]any{"server": t.Server, "pool": t.Pool, "plan": t.Plan}}); err != nil {
		return Tenant{}, err
	}
	return t, nil
}

// EnsureTenantCredentials seals a password for a tenant's own login role if
// it has none yet: a pooled tenant's, as its promotion to a database of its
// own begins (q is the caller's transaction).
func (s *Store) EnsureTenantCredentials(ctx context.Context, q Querier, tenantID string) error {
	_, err := q.Exec(ctx, `UPDATE tenants SET credentials_sealed = $2 WHERE id = $1 AND credentials_sealed IS NULL`,
		tenantID, s.cipher.Seal([]byte(newPassword()), tenantAD(tenantID)))
	return Classify(err, "tenant")
}

// PoolTenantIDs returns the ids of a pool database's active and suspended
// tenants: the ones whose rows there are sampled and billed.
func (s *Store) PoolTenantIDs(ctx context.Context, poolID int64) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT id::text FROM tenants WHERE pool_id = $1 AND state IN ('active', 'suspended') ORDER BY id`, poolID)
	if err != nil {
		return nil, Classify(err, "tenants")
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return ids, Classify(err, "tenants")
}
