package controlplane

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// A replication slot named like a move's that no move owns is an orphan of
// kind "replication slot": reported; left, with how to drop it, while the
// server's admin role may not drop slots; removed once it may.
func TestOrphansIncludeMoveReplicationLeftovers(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	super := f.servers["pg-1"].DSN("postgres")
	query[any](t, super, "SELECT pg_create_physical_replication_slot('tenantplane_move_999')")
	query[any](t, super, "SELECT pg_create_physical_replication_slot('someone_elses')")
	t.Cleanup(func() { query[any](t, super, "SELECT pg_drop_replication_slot('someone_elses')") })
	want := map[string]any{"server": "pg-1", "kind": "replication slot", "name": "tenantplane_move_999",
		"why": "no move 999 in the catalog", "removed": false}

	status, body := call(t, "GET", f.admin+"/admin/v1/orphans", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, []any{want}, body["orphans"])

	status, body = call(t, "DELETE", f.admin+"/admin/v1/orphans", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	refused := map[string]any{}
	for k, v := range want {
		refused[k] = v
	}
	refused["why"] = want["why"].(string) + "; the server's admin role lacks REPLICATION, so it cannot drop it: as a superuser, SELECT pg_drop_replication_slot('tenantplane_move_999')"
	require.Equal(t, []any{refused}, body["orphans"])

	conn, err := connect(t, super)
	require.NoError(t, err)
	_, err = conn.Exec(context.Background(), "ALTER ROLE "+pgtest.ManagedRole+" REPLICATION")
	require.NoError(t, err)
	require.NoError(t, conn.Close(context.Background()))
	status, body = call(t, "DELETE", f.admin+"/admin/v1/orphans", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	want["removed"] = true
	require.Equal(t, []any{want}, body["orphans"])
	require.Equal(t, []string{"someone_elses"}, query[[]string](t, super, "SELECT array_agg(slot_name::text) FROM pg_replication_slots"))
	status, body = call(t, "GET", f.admin+"/admin/v1/orphans", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Empty(t, body["orphans"])
}
