package catalog

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// ForceTenantSchema records an operator's forced schema version for a
// tenant, with its audit event, after the provisioner set it in the
// tenant's database.
func (s *Store) ForceTenantSchema(ctx context.Context, tenantID string, fromVersion int64, fromDirty bool, version int64, actor, reason string) (Tenant, error) {
	var t Tenant
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE tenants SET schema_version = $2, schema_dirty = false, updated_at = now() WHERE id = $1`, tenantID, version); err != nil {
			return Classify(err, "tenant")
		}
		var err error
		if t, err = scanTenant(tx.QueryRow(ctx, `SELECT `+tenantColumns+tenantFrom+`WHERE t.id = $1`, tenantID)); err != nil {
			return Classify(err, "tenant")
		}
		return InsertAudit(ctx, tx, AuditEvent{Actor: actor, Action: "tenant.schema_forced", TenantID: tenantID, Subject: t.Slug, Reason: reason,
			Details: map[string]any{"from_version": fromVersion, "from_dirty": fromDirty, "version": version}})
	})
	return t, err
}
