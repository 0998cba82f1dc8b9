package provisioner

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
)

// TestLifecycleRefusedWhileMoving: while a tenant has an open move, every
// lifecycle change an operator can ask for is refused with 409 naming the
// move, and changes nothing; once the move is closed each works again. Keys
// are not refused: a leaked key must be revocable during a move too.
func TestLifecycleRefusedWhileMoving(t *testing.T) {
	t.Parallel()
	b := setup(t)
	p := b.start(t, b.cfg)
	ctx := context.Background()
	_, _, err := p.CreateTenant(ctx, TenantSpec{Slug: "acme", Plan: "basic"}, "test")
	require.NoError(t, err)
	tenant := waitState(t, b.store, "acme", catalog.TenantActive)
	role, password, err := b.store.TenantCredentials(ctx, tenant.ID)
	require.NoError(t, err)

	// The move the mover would open: a ledger row, named by the tenant.
	// The target is a placeholder row, draining so that nothing is placed on it.
	var moveID int64
	require.NoError(t, b.store.Pool().QueryRow(ctx, `
		WITH target AS (
			INSERT INTO servers (name, dsn_sealed, dsn_redacted, capacity, conn_budget, state)
			VALUES ('pg-2', '\x00', 'postgres://placeholder', 1, 1, 'draining') RETURNING id)
		INSERT INTO moves (tenant_id, from_server_id, to_server_id, mode, phase)
		SELECT $1, $2, target.id, 'online', 'copying' FROM target RETURNING id`, tenant.ID, tenant.ServerID).Scan(&moveID))
	setMove := func(id *int64) {
		t.Helper()
		_, err := b.store.Pool().Exec(ctx, `UPDATE tenants SET move_id = $2 WHERE id = $1`, tenant.ID, id)
		require.NoError(t, err)
	}
	setMove(&moveID)
	want := fmt.Sprintf(`tenant "acme" is being moved (move %d): wait for it to finish, or cancel it with tenantplane moves cancel %d`, moveID, moveID)

	refused := func(name string, call func() (catalog.Tenant, error)) {
		t.Helper()
		before, err := b.store.GetTenant(ctx, "acme")
		require.NoError(t, err)
		_, err = call()
		require.Error(t, err, name)
		require.Equal(t, catalog.CodeConflict, catalog.CodeOf(err), "%s: %v", name, err)
		require.Equal(t, want, catalog.MessageOf(err), name)
		require.ErrorIs(t, err, catalog.ErrMoving, "%s: a caller that retries by itself can tell it", name)
		after, err := b.store.GetTenant(ctx, "acme")
		require.NoError(t, err)
		require.Equal(t, before, after, "%s: a refused change changes nothing", name)
	}
	suspend := func() (catalog.Tenant, error) { return p.Suspend(ctx, "acme", "test", "") }
	resume := func() (catalog.Tenant, error) { return p.Resume(ctx, "acme", "test", "") }
	del := func() (catalog.Tenant, error) { return p.Delete(ctx, "acme", "test", "") }
	restore := func() (catalog.Tenant, error) { return p.Restore(ctx, "acme", "test", "") }
	rotate := func() (catalog.Tenant, error) { return p.RotateCredentials(ctx, "acme", "test", "") }

	// Active and moving: each call is refused whatever state it needs.
	for name, call := range map[string]func() (catalog.Tenant, error){
		"suspend": suspend, "resume": resume, "delete": del, "restore": restore, "rotate": rotate,
	} {
		refused(name, call)
	}
	_, samePassword, err := b.store.TenantCredentials(ctx, tenant.ID)
	require.NoError(t, err)
	require.Equal(t, password, samePassword, "a refused rotation keeps the password")
	conn, err := pgx.Connect(ctx, withUser(b.server.DSN(tenant.Database), role, password))
	require.NoError(t, err, "nor is the role's password changed on the server")
	require.NoError(t, conn.Close(ctx))

	// Keys go on during a move.
	key, _, err := b.store.CreateAPIKey(ctx, tenant.ID, "test")
	require.NoError(t, err)
	require.NoError(t, b.store.RevokeAPIKey(ctx, tenant.ID, key.ID, "test"))

	// The move closed, each works again; refused again while the next move is open.
	closeMove := func() {
		t.Helper()
		_, err := b.store.Pool().Exec(ctx, `UPDATE moves SET phase = 'aborted', finished_at = now() WHERE id = $1`, moveID)
		require.NoError(t, err)
		setMove(nil)
	}
	closeMove()
	for _, step := range []struct {
		name string
		call func() (catalog.Tenant, error)
		want catalog.TenantState
	}{
		{"suspend", suspend, catalog.TenantSuspended},
		{"resume", resume, catalog.TenantActive},
		{"rotate", rotate, catalog.TenantActive},
		{"delete", del, catalog.TenantDeleting},
		{"restore", restore, catalog.TenantActive},
	} {
		got, err := step.call()
		require.NoError(t, err, step.name)
		require.Equal(t, step.want, got.State, step.name)
		require.Nil(t, got.MoveID, step.name)
	}
	_, newPassword, err := b.store.TenantCredentials(ctx, tenant.ID)
	require.NoError(t, err)
	require.NotEqual(t, password, newPassword)
}
