package main

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPoolsAndTierCommands(t *testing.T) {
	t.Parallel()
	pool := `{"id": 3, "name": "tp_pool_3", "server": "pg-1", "capacity": 500, "tenants": 0, "state": "active", "schema_version": 2,
		"schema_dirty": false, "last_error": "", "created_at": "2026-03-01T12:00:00Z"}`
	promote := moveJSON(t, map[string]any{"kind": "promote", "pool": "tp_pool_3", "mode": "copy", "to": "pg-2"})
	demote := moveJSON(t, map[string]any{"kind": "demote", "pool": "tp_pool_3", "mode": "online", "from": "pg-2", "to": "pg-1"})
	admin, url := newCannedAdmin(t, map[string][]cannedAnswer{
		"POST /pools":                {{http.StatusCreated, pool}},
		"GET /pools":                 {ok(`{"pools": [` + pool + `]}`)},
		"POST /tenants/acme/promote": {{http.StatusAccepted, promote}},
		"POST /tenants/acme/demote":  {{http.StatusAccepted, demote}},
	})
	cli := func(args ...string) string {
		t.Helper()
		stdout, stderr, err := runCLI(t, "", append(args, "--admin-url", url, "--token", testToken)...)
		require.NoError(t, err, stderr)
		return stdout
	}
	require.Equal(t, "Pool database tp_pool_3 on pg-1 is active: room for 500 tenants.\n", cli("pools", "create", "pg-1", "--capacity", "500"))
	require.Equal(t, []string{`{"capacity":500,"server":"pg-1"}`}, admin.sent("POST /pools"))
	require.Equal(t, "ID  NAME       SERVER  STATE   TENANTS  CAPACITY  SCHEMA\n3   tp_pool_3  pg-1    active  0        500       2\n", cli("pools", "list"))

	out := cli("tenants", "promote", "acme", "--to", "pg-2")
	require.Contains(t, out, "Promoting tenant acme from pool database tp_pool_3 on pg-1 to a database of its own on pg-2 (move 12).")
	require.Equal(t, []string{`{"to":"pg-2"}`}, admin.sent("POST /tenants/acme/promote"))
	out = cli("tenants", "demote", "acme")
	require.Contains(t, out, "Demoting tenant acme from its database on pg-2 into pool database tp_pool_3 on pg-1 (move 12).")
	require.Equal(t, []string{`{}`}, admin.sent("POST /tenants/acme/demote"))
}

func TestTenantsSetPlan(t *testing.T) {
	t.Parallel()
	tenant := `{"id": "0b5e5f0e-8f8e-4a55-9a4e-0d5f00c0ffee", "slug": "acme", "name": "Acme Inc", "plan": "enterprise", "state": "active",
		"server": "pg-1", "database": "t_acme", "schema_version": 3, "schema_dirty": false, "last_error": "", "delete_after": null,
		"created_at": "2026-03-01T10:00:00Z", "updated_at": "2026-03-01T10:00:00Z"}`
	promote := moveJSON(t, map[string]any{"kind": "promote", "pool": "tp_pool_3", "mode": "copy", "to": "pg-2", "plan": "pro", "from_plan": "free"})
	admin, url := newCannedAdmin(t, map[string][]cannedAnswer{
		"PATCH /tenants/acme": {ok(tenant), {http.StatusAccepted, `{"tenant": ` + tenant + `, "move": ` + promote + `}`}},
		"POST /moves/12/revert": {{http.StatusAccepted, moveJSON(t, map[string]any{"id": 13, "kind": "demote", "pool": "tp_pool_3", "mode": "copy",
			"mode_reason": "", "from": "pg-2", "to": "pg-1", "reverts": 12, "plan": "free", "from_plan": "pro"})}},
	})
	cli := func(args ...string) string {
		t.Helper()
		stdout, stderr, err := runCLI(t, "", append(args, "--admin-url", url, "--token", testToken)...)
		require.NoError(t, err, stderr)
		return stdout
	}
	out := cli("tenants", "set-plan", "acme", "enterprise")
	require.Contains(t, out, "enterprise")
	require.Contains(t, out, "acme")
	out = cli("tenants", "set-plan", "acme", "pro")
	require.Contains(t, out, "Promoting tenant acme from pool database tp_pool_3 on pg-1 to a database of its own on pg-2 (move 12). It takes plan pro (now free) when it switches.")
	require.Equal(t, []string{`{"plan":"enterprise"}`, `{"plan":"pro"}`}, admin.sent("PATCH /tenants/acme"))

	out = cli("moves", "revert", "12")
	require.Contains(t, out, "Reverting move 12: Demoting tenant acme from its database on pg-2 into pool database tp_pool_3 on pg-1 (move 13). It takes plan free (now pro) when it switches.")
}
