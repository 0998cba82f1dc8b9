package catalog

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// TenantState is where a tenant is in its lifecycle:
// provisioning -> active <-> suspended -> deleting -> deleted, and failed
// (with the reason, retryable) from any step that can fail.
type TenantState string

const (
	TenantProvisioning TenantState = "provisioning"
	TenantActive       TenantState = "active"
	TenantSuspended    TenantState = "suspended"
	TenantDeleting     TenantState = "deleting"
	TenantDeleted      TenantState = "deleted"
	TenantFailed       TenantState = "failed"
)

// TenantStates lists every tenant state, in lifecycle order.
var TenantStates = []TenantState{TenantProvisioning, TenantActive, TenantSuspended, TenantDeleting, TenantDeleted, TenantFailed}

// Valid reports whether s is one of TenantStates.
func (s TenantState) Valid() bool { return slices.Contains(TenantStates, s) }

// TenantChannel is the LISTEN/NOTIFY channel on which every change to a
// tenant (state, credentials, keys) is announced with the tenant's id, and
// a change to a server's limits with ServerChangePrefix and its id.
const TenantChannel = "tenantplane_tenant_changed"

// Tenant is a customer with a database of its own.
type Tenant struct {
	ID            string      `json:"id"`
	Slug          string      `json:"slug"`
	Name          string      `json:"name"`
	Plan          string      `json:"plan"`
	State         TenantState `json:"state"`
	ServerID      int64       `json:"-"`
	Server        string      `json:"server"`
	Database      string      `json:"database"`
	Role          string      `json:"-"`
	SchemaVersion int64       `json:"schema_version"`
	SchemaDirty   bool        `json:"schema_dirty"`
	LastError     string      `json:"last_error"`
	DeleteAfter   *time.Time  `json:"delete_after"`
	// MoveID is the tenant's open move, if it is being moved to another server.
	MoveID *int64 `json:"move_id,omitempty"`
	// Held is set while a move's fence is up: routers hold its requests.
	Held bool `json:"-"`
	// Pool is the pool database a pooled tenant's rows live in (its plan's
	// isolation is pooled), "" for a tenant with a database of its own.
	// Server and ServerID are then the pool database's server; Database and
	// Role are empty: a pooled tenant has neither.
	Pool      string    `json:"pool,omitempty"`
	PoolID    int64     `json:"-"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

var slugRE = regexp.MustCompile(`^[a-z][a-z0-9-]{2,62}$`)

// ValidateSlug checks a tenant slug: 3 to 63 lowercase letters, digits and
// hyphens, starting with a letter.
func ValidateSlug(slug string) error {
	if !slugRE.MatchString(slug) {
		return Errorf(CodeInvalid, "slug %q must be 3 to 63 lowercase letters, digits or hyphens, starting with a letter", slug)
	}
	return nil
}

// NewTenant is what creating a tenant takes.
type NewTenant struct {
	Slug   string
	Name   string
	Plan   string
	Server string // the server to place it on; "" picks the one with the most free capacity
	Actor  string
}

const tenantColumns = `t.id, t.slug, t.name, t.plan, t.state, coalesce(t.server_id, p.server_id, 0), coalesce(s.name, ''),
	coalesce(t.db_name, ''), coalesce(t.db_role, ''), t.schema_version, t.schema_dirty, t.last_error,
	t.delete_after, t.move_id, t.held, coalesce(t.pool_id, 0), t.created_at, t.updated_at`

// tenantFrom joins a tenant to its server: its own, or its pool database's.
const tenantFrom = ` FROM tenants t LEFT JOIN pool_databases p ON p.id = t.pool_id
	LEFT JOIN servers s ON s.id = coalesce(t.server_id, p.server_id) `

func scanTenant(row pgx.Row) (t Tenant, err error) {
	err = row.Scan(&t.ID, &t.Slug, &t.Name, &t.Plan, &t.State, &t.ServerID, &t.Server, &t.Database, &t.Role,
		&t.SchemaVersion, &t.SchemaDirty, &t.LastError, &t.DeleteAfter, &t.MoveID, &t.Held, &t.PoolID, &t.CreatedAt, &t.UpdatedAt)
	if t.PoolID != 0 {
		t.Pool = PoolName(t.PoolID)
	}
	return t, err
}

// CreateTenant records a tenant in state provisioning, placed on a server,
// and calls enqueue in the same transaction so the work that provisions it is
// durable exactly when the tenant is. A tenant of a pooled plan is placed in
// a pool database instead (on the server asked for, or the one with the most
// room) and is active at once: it is this row and nothing else, so enqueue
// is not called. It is idempotent by slug: the same
// request again returns the existing tenant with created false; a different
// request for a taken slug is a CodeConflict error.
func (s *Store) CreateTenant(ctx context.Context, nt NewTenant, enqueue func(ctx context.Context, tx pgx.Tx, t Tenant) error) (t Tenant, created bool, err error) {
	if err := ValidateSlug(nt.Slug); err != nil {
		return Tenant{}, false, err
	}
	if strings.TrimSpace(nt.Name) == "" || len(nt.Name) > 200 || !ValidText(nt.Name) {
		return Tenant{}, false, Errorf(CodeInvalid, "name is required: at most 200 characters of valid UTF-8 text")
	}
	err = s.InTx(ctx, func(tx pgx.Tx) error {
		// One placement at a time, so capacity is never oversubscribed. Each
		// holds the lock for a few milliseconds; a burst of creations queues.
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '60s'`); err != nil {
			return Classify(err, "placement lock")
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('tenantplane.placement'))`); err != nil {
			return Classify(err, "placement lock")
		}
		existing, err := scanTenant(tx.QueryRow(ctx, `SELECT `+tenantColumns+tenantFrom+`WHERE t.slug = $1`, nt.Slug))
		if err == nil {
			if existing.Name != nt.Name || existing.Plan != nt.Plan || (nt.Server != "" && nt.Server != existing.Server) {
				return Errorf(CodeConflict, "slug %q is taken by another tenant", nt.Slug)
			}
			t = existing
			return nil
		} else if err != pgx.ErrNoRows {
			return Classify(err, "tenant")
		}
		var isolation Isolation
		if err := tx.QueryRow(ctx, `SELECT isolation FROM plans WHERE name = $1`, nt.Plan).Scan(&isolation); err != nil {
			if err == pgx.ErrNoRows {
				return Errorf(CodeInvalid, "unknown plan %q", nt.Plan)
			}
			return Classify(err, "plan")
		}
		if isolation == IsolationPooled {
			t, err = createPooledTenant(ctx, tx, nt)
			created = err == nil
			return err
		}
		serverID, err := pickServer(ctx, tx, nt.Server)
		if err != nil {
			return err
		}
		id, err := scanID(tx.QueryRow(ctx, `
			INSERT INTO tenants (slug, name, plan, state, server_id) VALUES ($1, $2, $3, 'provisioning', $4)
			RETURNING id`, nt.Slug, nt.Name, nt.Plan, serverID))
		if err != nil {
			return Classify(err, "tenant "+quote(nt.Slug))
		}
		// Names derive from the id: deterministic, so a retried step finds what
		// an earlier attempt made, and never built from input.
		// The role's password is made and sealed here, once: every attempt
		// at provisioning uses the same one.
		if _, err := tx.Exec(ctx, `UPDATE tenants SET db_name = $2, db_role = $2, credentials_sealed = $3 WHERE id = $1`,
			id, DatabaseName(id), s.cipher.Seal([]byte(newPassword()), tenantAD(id))); err != nil {
			return Classify(err, "tenant")
		}
		if t, err = scanTenant(tx.QueryRow(ctx, `SELECT `+tenantColumns+tenantFrom+`WHERE t.id = $1`, id)); err != nil {
			return Classify(err, "tenant")
		}
		if err := InsertAudit(ctx, tx, AuditEvent{Actor: nt.Actor, Action: "tenant.created", TenantID: id, Subject: nt.Slug,
			ToState: string(TenantProvisioning), Details: map[string]any{"server": t.Server, "plan": t.Plan}}); err != nil {
			return err
		}
		created = true
		if enqueue != nil {
			return enqueue(ctx, tx, t)
		}
		return nil
	})
	return t, created, err
}

func scanID(row pgx.Row) (id string, err error) {
	err = row.Scan(&id)
	return id, err
}

// DatabaseName is the name of a tenant's database and of its login role:
// "t_" and the tenant id without hyphens (34 characters).
func DatabaseName(tenantID string) string {
	return "t_" + strings.ReplaceAll(tenantID, "-", "")
}

func pickServer(ctx context.Context, tx pgx.Tx, name string) (int64, error) {
	var id int64
	var state ServerState
	var free int
	if name != "" {
		err := tx.QueryRow(ctx, `
			SELECT s.id, s.state, s.capacity - (SELECT count(*) FROM tenants t WHERE t.server_id = s.id AND t.state <> 'deleted')
			FROM servers s WHERE s.name = $1`, name).Scan(&id, &state, &free)
		if err == pgx.ErrNoRows {
			return 0, Errorf(CodeInvalid, "unknown server %q (GET /admin/v1/servers lists them)", name)
		}
		if err != nil {
			return 0, Classify(err, "server "+quote(name))
		}
		switch {
		case state != ServerActive:
			return 0, Errorf(CodeConflict, "server %q is %s and takes no new tenants", name, state)
		case free <= 0:
			return 0, Errorf(CodeConflict, "server %q is full", name)
		}
		return id, nil
	}
	err := tx.QueryRow(ctx, `
		SELECT id FROM (
			SELECT s.id, s.name, s.capacity - (SELECT count(*) FROM tenants t WHERE t.server_id = s.id AND t.state <> 'deleted') AS free
			FROM servers s WHERE s.state = 'active'
		) c WHERE free > 0 ORDER BY free DESC, name LIMIT 1`).Scan(&id)
	if err == pgx.ErrNoRows {
		// Not a dependency down (503): nothing changes until an operator acts.
		return 0, Errorf(CodeConflict, "no server has free capacity: register one (POST /admin/v1/servers) or raise a capacity")
	}
	return id, Classify(err, "server")
}

// GetTenant returns the tenant with that slug (deleted ones included).
func (s *Store) GetTenant(ctx context.Context, slug string) (Tenant, error) {
	t, err := scanTenant(s.pool.QueryRow(ctx, `SELECT `+tenantColumns+tenantFrom+`WHERE t.slug = $1`, slug))
	return t, Classify(err, "tenant "+quote(slug))
}

// GetTenantByID returns the tenant with that id.
func (s *Store) GetTenantByID(ctx context.Context, id string) (Tenant, error) {
	t, err := scanTenant(s.pool.QueryRow(ctx, `SELECT `+tenantColumns+tenantFrom+`WHERE t.id = $1`, id))
	return t, Classify(err, "tenant "+quote(id))
}

// TenantFilter selects tenants; zero fields match everything.
type TenantFilter struct {
	State  TenantState // one of TenantStates; another is a CodeInvalid error
	Plan   string      // a plan's name; a name no tenant has matches nothing
	Server string      // a server's name; a name no tenant has matches nothing
	Search string      // a part of the slug or the name, any case; "" matches everything
	Tier   string      // "dedicated" or "pooled"; "" matches both, another is a CodeInvalid error
	Limit  int         // default 100, at most 1000
	Cursor string      // from TenantPage.NextCursor
}

// TenantPage is one page of a tenant listing, ordered by creation.
type TenantPage struct {
	Tenants    []Tenant `json:"tenants"`
	NextCursor string   `json:"next_cursor,omitempty"`
}

// ListTenants returns a page of matching tenants, oldest first.
func (s *Store) ListTenants(ctx context.Context, f TenantFilter) (TenantPage, error) {
	var err error
	if f.Limit, err = CheckLimit(f.Limit); err != nil {
		return TenantPage{}, err
	}
	if f.State != "" && !f.State.Valid() {
		return TenantPage{}, Errorf(CodeInvalid, "state %q is not a tenant state: use %s", f.State, tenantStateList())
	}
	if f.Tier != "" && f.Tier != string(IsolationDedicated) && f.Tier != string(IsolationPooled) {
		return TenantPage{}, Errorf(CodeInvalid, "tier %q is not a tier: use %s or %s", f.Tier, IsolationDedicated, IsolationPooled)
	}
	afterTime, afterID := time.Time{}, ""
	if f.Cursor != "" {
		if afterTime, afterID, err = decodeCursor(f.Cursor); err != nil {
			return TenantPage{}, err
		}
	}
	rows, err := s.pool.Query(ctx, `SELECT `+tenantColumns+tenantFrom+`
		WHERE ($1 = '' OR t.state = $1) AND ($2 = '' OR t.plan = $2) AND ($3 = '' OR s.name = $3)
		  AND ($4 = '' OR (t.created_at, t.id) > ($5, $4::uuid))
		  AND ($7 = '' OR strpos(lower(t.slug), lower($7)) > 0 OR strpos(lower(t.name), lower($7)) > 0)
		  AND ($8 = '' OR ($8 = 'pooled') = (t.pool_id IS NOT NULL))
		ORDER BY t.created_at, t.id LIMIT $6`,
		string(f.State), f.Plan, f.Server, afterID, afterTime, f.Limit+1, f.Search, f.Tier)
	if err != nil {
		return TenantPage{}, Classify(err, "tenants")
	}
	tenants, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Tenant, error) { return scanTenant(row) })
	if err != nil {
		return TenantPage{}, Classify(err, "tenants")
	}
	page := TenantPage{Tenants: tenants}
	if len(tenants) > f.Limit {
		page.Tenants = tenants[:f.Limit]
		last := page.Tenants[f.Limit-1]
		page.NextCursor = encodeCursor(last.CreatedAt, last.ID)
	}
	if page.Tenants == nil {
		page.Tenants = []Tenant{}
	}
	return page, nil
}

// tenantStateList is TenantStates in words: "provisioning, ... or failed".
func tenantStateList() string {
	names := make([]string, len(TenantStates))
	for i, s := range TenantStates {
		names[i] = string(s)
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

func encodeCursor(t time.Time, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(t.UTC().Format(time.RFC3339Nano) + "|" + id))
}

func decodeCursor(c string) (time.Time, string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err == nil {
		if ts, id, ok := strings.Cut(string(raw), "|"); ok {
			if t, err := time.Parse(time.RFC3339Nano, ts); err == nil && uuidRE.MatchString(id) {
				return t, id, nil
			}
		}
	}
	return time.Time{}, "", ErrBadCursor()
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// Transition is a change of a tenant's state.
type Transition struct {
	TenantID string
	From     []TenantState // the states it may leave; others make a CodeConflict error
	To       TenantState
	Actor    string
	Action   string // audit action, e.g. "tenant.suspended"
	Reason   string
	// LastError is stored with the new state ("" clears it).
	LastError string
	// DeleteAfter sets the end of the grace period (state deleting), or clears it.
	DeleteAfter *time.Time
	// Schema, when set, records the tenant database's schema with the change.
	Schema *SchemaState
	// RefuseMoving refuses the change, with a MovingError, while the tenant
	// has an open move. The check and the change are under one row lock, and
	// a move is opened by setting move_id under the same lock, so neither
	// can slip past the other.
	RefuseMoving bool
}

// ErrMoving is in the chain of a MovingError: a caller that retries by
// itself (billing's dunning) tells "not now" from "not in this state".
var ErrMoving = errors.New("tenant has an open move")

// MovingError is the CodeConflict refusal of a change an open move would be
// at odds with (suspend, resume, delete, restore, rotate credentials).
func MovingError(slug string, moveID int64) error {
	return WrapError(CodeConflict, ErrMoving, "tenant %q is being moved (move %d): wait for it to finish, or cancel it with tenantplane moves cancel %d",
		slug, moveID, moveID)
}

// SchemaState is a tenant database's golang-migrate version and dirty flag.
type SchemaState struct {
	Version int64
	Dirty   bool
}

// TransitionTenant moves a tenant from one of tr.From to tr.To, records the
// audit event and announces the change on TenantChannel, all in one
// transaction. A tenant in another state is a CodeConflict error naming it.
func (s *Store) TransitionTenant(ctx context.Context, tr Transition) (t Tenant, err error) {
	err = s.InTx(ctx, func(tx pgx.Tx) error {
		t, err = s.TransitionTenantTx(ctx, tx, tr)
		return err
	})
	return t, err
}

// TransitionTenantTx is TransitionTenant inside the caller's transaction, so
// the caller can queue the work the new state needs atomically with it.
func (s *Store) TransitionTenantTx(ctx context.Context, tx pgx.Tx, tr Transition) (Tenant, error) {
	var (
		from   TenantState
		slug   string
		moveID *int64
	)
	err := tx.QueryRow(ctx, `SELECT state, slug, move_id FROM tenants WHERE id = $1 FOR UPDATE`, tr.TenantID).Scan(&from, &slug, &moveID)
	if err != nil {
		return Tenant{}, Classify(err, "tenant")
	}
	if tr.RefuseMoving && moveID != nil {
		return Tenant{}, MovingError(slug, *moveID)
	}
	if !containsState(tr.From, from) {
		return Tenant{}, Errorf(CodeConflict, "tenant is %s; %s needs it to be %s", from, strings.TrimPrefix(tr.Action, "tenant."), joinStates(tr.From))
	}
	_, err = tx.Exec(ctx, `
		UPDATE tenants SET state = $2, last_error = $3, delete_after = $4, updated_at = now(), state_changed_at = now()
		WHERE id = $1`, tr.TenantID, tr.To, tr.LastError, tr.DeleteAfter)
	if err != nil {
		return Tenant{}, Classify(err, "tenant")
	}
	if tr.Schema != nil {
		if _, err := tx.Exec(ctx, `UPDATE tenants SET schema_version = $2, schema_dirty = $3 WHERE id = $1`,
			tr.TenantID, tr.Schema.Version, tr.Schema.Dirty); err != nil {
			return Tenant{}, Classify(err, "tenant")
		}
	}
	t, err := scanTenant(tx.QueryRow(ctx, `SELECT `+tenantColumns+tenantFrom+`WHERE t.id = $1`, tr.TenantID))
	if err != nil {
		return Tenant{}, Classify(err, "tenant")
	}
	if err := InsertAudit(ctx, tx, AuditEvent{Actor: tr.Actor, Action: tr.Action, TenantID: tr.TenantID, Subject: t.Slug,
		FromState: string(from), ToState: string(tr.To), Reason: tr.Reason}); err != nil {
		return Tenant{}, err
	}
	return t, notifyTenant(ctx, tx, tr.TenantID)
}

func notifyTenant(ctx context.Context, q Querier, tenantID string) error {
	_, err := q.Exec(ctx, `SELECT pg_notify($1, $2)`, TenantChannel, tenantID)
	return Classify(err, "notify")
}

func containsState(states []TenantState, s TenantState) bool {
	for _, x := range states {
		if x == s {
			return true
		}
	}
	return false
}

func joinStates(states []TenantState) string {
	parts := make([]string, len(states))
	for i, s := range states {
		parts[i] = string(s)
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return strings.Join(parts[:len(parts)-1], ", ") + " or " + parts[len(parts)-1]
}

// TenantCredentials returns the tenant's login role and its password. Never
// log or return them.
func (s *Store) TenantCredentials(ctx context.Context, tenantID string) (role, password string, err error) {
	var sealed []byte
	err = s.pool.QueryRow(ctx, `SELECT coalesce(db_role, ''), credentials_sealed FROM tenants WHERE id = $1`, tenantID).Scan(&role, &sealed)
	if err != nil {
		return "", "", Classify(err, "tenant")
	}
	if sealed == nil {
		return role, "", Errorf(CodeNotFound, "tenant has no credentials yet")
	}
	plain, err := s.cipher.Open(sealed, tenantAD(tenantID))
	return role, string(plain), err
}

// RotateTenantCredentials gives an active or suspended tenant's role a new
// password; a tenant with an open move is refused (MovingError): the move
// gives the tenant a fresh role on its new server. apply sets it on the
// tenant's server while the tenant's row is locked; the new sealed password, the audit event and the announcement on
// TenantChannel (routers open new pools with it) commit only if apply
// succeeded. Should the catalog fail after apply, the role has a password the
// catalog does not know, and rotating again repairs it.
func (s *Store) RotateTenantCredentials(ctx context.Context, tenantID, actor, reason string,
	apply func(ctx context.Context, role, password string) error) (t Tenant, err error) {
	err = s.InTx(ctx, func(tx pgx.Tx) error {
		var (
			state      TenantState
			role, slug string
			moveID     *int64
		)
		err := tx.QueryRow(ctx, `SELECT state, coalesce(db_role, ''), slug, move_id FROM tenants WHERE id = $1 FOR UPDATE`, tenantID).
			Scan(&state, &role, &slug, &moveID)
		if err != nil {
			return Classify(err, "tenant")
		}
		if moveID != nil {
			return MovingError(slug, *moveID)
		}
		if state != TenantActive && state != TenantSuspended {
			return Errorf(CodeConflict, "tenant is %s; rotating credentials needs it to be active or suspended", state)
		}
		password := newPassword()
		if err := apply(ctx, role, password); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE tenants SET credentials_sealed = $2, updated_at = now() WHERE id = $1`,
			tenantID, s.cipher.Seal([]byte(password), tenantAD(tenantID))); err != nil {
			return Classify(err, "tenant")
		}
		if t, err = scanTenant(tx.QueryRow(ctx, `SELECT `+tenantColumns+tenantFrom+`WHERE t.id = $1`, tenantID)); err != nil {
			return Classify(err, "tenant")
		}
		if err := InsertAudit(ctx, tx, AuditEvent{Actor: actor, Action: "tenant.credentials_rotated", TenantID: tenantID,
			Subject: t.Slug, FromState: string(state), ToState: string(state), Reason: reason}); err != nil {
			return err
		}
		return notifyTenant(ctx, tx, tenantID)
	})
	return t, err
}

// newPassword returns a random password for a tenant role: 24 bytes, hex.
func newPassword() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func tenantAD(id string) []byte { return []byte("tenant-credentials:" + id) }

// SetTenantSchema records the schema version and dirty flag read from the
// tenant's database.
func (s *Store) SetTenantSchema(ctx context.Context, tenantID string, version int64, dirty bool) error {
	_, err := s.pool.Exec(ctx, `UPDATE tenants SET schema_version = $2, schema_dirty = $3, updated_at = now() WHERE id = $1`,
		tenantID, version, dirty)
	return Classify(err, "tenant")
}

// KnownDatabases returns the names of the databases the catalog knows on a
// server (every tenant not yet deleted), for the reconciler: with the
// targets of moves under way to it and the sources that done moves keep
// there for a revert, which no tenant row places on it.
func (s *Store) KnownDatabases(ctx context.Context, serverID int64) (map[string]bool, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT db_name FROM tenants WHERE server_id = $1 AND state <> 'deleted' AND db_name IS NOT NULL
		UNION
		-- A promotion's target and a demotion's kept source are the tenant's
		-- own database, which its row names only while it is dedicated.
		SELECT CASE WHEN m.kind = 'move' THEN t.db_name ELSE 't_' || replace(t.id::text, '-', '') END
		FROM moves m JOIN tenants t ON t.id = m.tenant_id
		WHERE (t.db_name IS NOT NULL OR m.kind <> 'move') AND (
			(m.to_server_id = $1 AND m.phase NOT IN ('done', 'aborted', 'reverted'))
			OR (m.from_server_id = $1 AND m.phase = 'done' AND NOT m.source_dropped))`, serverID)
	if err != nil {
		return nil, Classify(err, "tenants")
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, Classify(err, "tenants")
	}
	known := make(map[string]bool, len(names))
	for _, n := range names {
		known[n] = true
	}
	return known, nil
}

// TenantsBelowAccessLayout lists a server's tenants whose database may have
// an older ownership and grant layout than layout: every tenant not deleted
// whose row says so.
func (s *Store) TenantsBelowAccessLayout(ctx context.Context, serverID int64, layout int) ([]Tenant, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+tenantColumns+tenantFrom+`
		WHERE t.server_id = $1 AND t.access_layout < $2 AND t.state <> 'deleted' AND t.db_name IS NOT NULL
		ORDER BY t.created_at, t.id`, serverID, layout)
	if err != nil {
		return nil, Classify(err, "tenants")
	}
	ts, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Tenant, error) { return scanTenant(r) })
	return ts, Classify(err, "tenants")
}

// SetTenantAccessLayout records that a tenant's database has been brought
// to layout, with an audit event. It reports false, and records nothing,
// when the row had that layout already (another replica converted it).
func (s *Store) SetTenantAccessLayout(ctx context.Context, tenantID string, layout int, actor string) (bool, error) {
	changed := false
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		var from int
		err := tx.QueryRow(ctx, `UPDATE tenants t SET access_layout = $2 FROM (SELECT id, access_layout FROM tenants WHERE id = $1 FOR UPDATE) old
			WHERE t.id = old.id AND old.access_layout < $2 RETURNING old.access_layout`, tenantID, layout).Scan(&from)
		if err == pgx.ErrNoRows {
			return nil
		}
		if err != nil {
			return Classify(err, "tenant")
		}
		changed = true
		return InsertAudit(ctx, tx, AuditEvent{Actor: actor, Action: "tenant.access_converted", TenantID: tenantID,
			Details: map[string]any{"from_layout": from, "to_layout": layout}})
	})
	return changed, err
}
