package catalog

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// MaxHostnames bounds a tenant's custom hostnames, so their list needs no pages.
const MaxHostnames = 100

// Hostname is a custom hostname of a tenant.
type Hostname struct {
	Hostname  string    `json:"hostname"`
	CreatedAt time.Time `json:"created_at"`
}

var hostnameRE = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`)

// NormalizeHostname lowercases a DNS name and drops a trailing dot; a name
// that is not one of at least two labels (no port, scheme, wildcard or
// address) is CodeInvalid.
func NormalizeHostname(raw string) (string, error) {
	h := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(raw)), ".")
	if len(h) > 253 || !hostnameRE.MatchString(h) {
		return "", Errorf(CodeInvalid, "hostname %s is not a DNS name such as api.acme.com (no scheme, port, path or wildcard)", quote(raw))
	}
	return h, nil
}

// AddTenantHostname gives a tenant a custom hostname (NormalizeHostname's),
// unique across tenants (CodeConflict), and announces it on TenantChannel.
func (s *Store) AddTenantHostname(ctx context.Context, tenantID, hostname, actor string) (Hostname, error) {
	h := Hostname{}
	var err error
	if h.Hostname, err = NormalizeHostname(hostname); err != nil {
		return Hostname{}, err
	}
	err = s.InTx(ctx, func(tx pgx.Tx) error {
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM tenant_hostnames WHERE tenant_id = $1`, tenantID).Scan(&n); err != nil {
			return Classify(err, "hostnames")
		}
		if n >= MaxHostnames {
			return Errorf(CodeConflict, "the tenant has %d hostnames, the most it may have", n)
		}
		err := tx.QueryRow(ctx, `INSERT INTO tenant_hostnames (hostname, tenant_id) VALUES ($1, $2) RETURNING created_at`, h.Hostname, tenantID).Scan(&h.CreatedAt)
		if err != nil {
			return Classify(err, "hostname "+quote(h.Hostname))
		}
		if err := InsertAudit(ctx, tx, AuditEvent{Actor: actor, Action: "tenant.hostname_added", TenantID: tenantID, Subject: h.Hostname,
			Details: map[string]any{"hostname": h.Hostname}}); err != nil {
			return err
		}
		return notifyTenant(ctx, tx, tenantID)
	})
	return h, err
}

// ListTenantHostnames returns a tenant's custom hostnames, oldest first.
func (s *Store) ListTenantHostnames(ctx context.Context, tenantID string) ([]Hostname, error) {
	rows, err := s.pool.Query(ctx, `SELECT hostname, created_at FROM tenant_hostnames WHERE tenant_id = $1 ORDER BY created_at, hostname`, tenantID)
	if err != nil {
		return nil, Classify(err, "hostnames")
	}
	hs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Hostname])
	if hs == nil {
		hs = []Hostname{}
	}
	return hs, Classify(err, "hostnames")
}

// RemoveTenantHostname takes a custom hostname from a tenant (one it does
// not have is CodeNotFound) and announces it on TenantChannel.
func (s *Store) RemoveTenantHostname(ctx context.Context, tenantID, hostname, actor string) error {
	h := strings.TrimSuffix(strings.ToLower(hostname), ".")
	return s.InTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM tenant_hostnames WHERE hostname = $1 AND tenant_id = $2`, h, tenantID)
		if err != nil {
			return Classify(err, "hostname")
		}
		if tag.RowsAffected() == 0 {
			return Errorf(CodeNotFound, "hostname %s not found", quote(hostname))
		}
		if err := InsertAudit(ctx, tx, AuditEvent{Actor: actor, Action: "tenant.hostname_removed", TenantID: tenantID, Subject: h,
			Details: map[string]any{"hostname": h}}); err != nil {
			return err
		}
		return notifyTenant(ctx, tx, tenantID)
	})
}

// HostnameTenant returns the id of the tenant with that custom hostname
// (already normalized), or "" when none has it.
func (s *Store) HostnameTenant(ctx context.Context, hostname string) (string, error) {
	var id string
	err := s.pool.QueryRow(ctx, `SELECT tenant_id FROM tenant_hostnames WHERE hostname = $1`, hostname).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return id, Classify(err, "hostname")
}
