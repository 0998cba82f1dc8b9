package main

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// evacuationJSON is an evacuation as the contract shapes it, with fields
// replaced by over.
func evacuationJSON(t *testing.T, over map[string]any) string {
	t.Helper()
	e := map[string]any{
		"id": 3, "kind": "evacuate", "server": "pg-1", "state": "running", "concurrency": 4, "per_server": 2, "mode": "copy",
		"total": 3, "pending": 3, "moving": 0, "moved": 0, "failed": 0, "skipped": 0, "last_error": "", "actor": "admin",
		"created_at": "2026-03-01T12:00:00Z", "updated_at": "2026-03-01T12:00:00Z", "finished_at": nil,
		"tenants": []map[string]any{
			{"tenant": "acme", "from": "pg-1", "state": "pending", "move_id": nil},
			{"tenant": "globex", "from": "pg-1", "state": "pending", "move_id": nil},
			{"tenant": "initech", "from": "pg-1", "state": "pending", "move_id": nil},
		},
	}
	for k, v := range over {
		e[k] = v
	}
	raw, err := json.Marshal(e)
	require.NoError(t, err)
	return string(raw)
}

func TestServersDrainEvacuateWatchShowsProgressAndFailures(t *testing.T) {
	t.Parallel()
	started := evacuationJSON(t, nil)
	moving := evacuationJSON(t, map[string]any{"pending": 1, "moving": 1, "moved": 1})
	over := evacuationJSON(t, map[string]any{"state": "failed", "pending": 0, "moved": 2, "failed": 1,
		"last_error": "1 of 3 tenants did not move: see each one's error", "finished_at": "2026-03-01T12:01:00Z",
		"tenants": []map[string]any{
			{"tenant": "acme", "from": "pg-1", "to": "pg-2", "state": "moved", "move_id": 7, "phase": "done"},
			{"tenant": "globex", "from": "pg-1", "to": "pg-3", "to_pool": "tp_pool_4", "state": "moved", "move_id": 8, "phase": "done"},
			{"tenant": "initech", "from": "pg-1", "to": "pg-2", "state": "failed", "move_id": 9, "phase": "aborted", "error": "verification failed: table users differs"},
		}})
	admin, url := newCannedAdmin(t, map[string][]cannedAnswer{
		"POST /servers/pg-1/drain": {{http.StatusAccepted, started}},
		"GET /evacuations/3":       {ok(moving), ok(over)},
	})
	stdout, stderr, err := runCLI(t, "", "servers", "drain", "pg-1", "--evacuate", "--concurrency", "4", "--mode", "copy", "--watch", "--interval", "5ms",
		"--admin-url", url, "--token", testToken)
	require.ErrorContains(t, err, "evacuation 3 of pg-1: 1 of 3 tenants did not move", stderr)
	require.Equal(t, []string{`{"evacuate":true,"concurrency":4,"mode":"copy"}`}, admin.sent("POST /servers/pg-1/drain"))
	require.Contains(t, stdout, "Evacuating server pg-1: 3 tenants to move, 4 at once, 2 per target (evacuation 3).\n")
	require.Contains(t, stdout, "evacuation 3 of pg-1 running · moved 1 · failed 0 · moving 1 · pending 1\n")
	require.Contains(t, stdout, "Evacuation 3 of pg-1 is failed: moved 2, failed 1, moving 0, pending 0 of 3 (concurrency 4, 2 per server, mode copy).")
	require.Regexp(t, `initech\s+pg-1\s+pg-2\s+failed\s+9\s+aborted\s+verification failed: table users differs`, stdout)
	require.Regexp(t, `globex\s+pg-1\s+pg-3 \(tp_pool_4\)\s+moved\s+8\s+done`, stdout, "a pooled tenant's target pool database")

	t.Run("on a terminal, a bar of tenants", func(t *testing.T) {
		var e Evacuation
		require.NoError(t, json.Unmarshal([]byte(moving), &e))
		require.Equal(t, "[##########....................] 1/3  evacuation 3 of pg-1 running · moved 1 · failed 0 · moving 1 · pending 1",
			progressLine(e.progress(), 0, 30))
	})

	t.Run("a plain drain sends no body, and refuses the evacuation's flags", func(t *testing.T) {
		admin, url := newCannedAdmin(t, map[string][]cannedAnswer{
			"POST /servers/pg-1/drain": {ok(`{"id": 1, "name": "pg-1", "dsn": "postgres://a@h/p", "capacity": 10, "conn_budget": 5, "state": "draining", "tenants": 4, "created_at": "2026-03-01T12:00:00Z"}`)},
		})
		stdout, _, err := runCLI(t, "", "servers", "drain", "pg-1", "--admin-url", url, "--token", testToken)
		require.NoError(t, err)
		require.Equal(t, "Server pg-1 is draining: it keeps its 4 tenants and takes no new ones.\n", stdout)
		require.Equal(t, []string{""}, admin.sent("POST /servers/pg-1/drain"))
		_, _, err = runCLI(t, "", "servers", "drain", "pg-1", "--concurrency", "2", "--admin-url", url, "--token", testToken)
		require.ErrorContains(t, err, "--concurrency goes with --evacuate")
	})
}

func TestEvacuationsPauseAndRebalanceDryRun(t *testing.T) {
	t.Parallel()
	plan := `{"plan": {"measure": "load score", "spread_before": 91.96, "spread_after": 27.68,
		"moves": [{"tenant": "heavy-00", "from": "pg-1", "to": "pg-3", "score": 48.2, "bytes": 7000000, "calls": 5000, "why": "heavy-00's 48.2 points lower the spread from 92.0 to 43.8"}],
		"servers": [{"server": "pg-1", "state": "active", "capacity": 100, "tenants_before": 6, "tenants_after": 5, "score_before": 91.96, "score_after": 43.75},
		            {"server": "pg-3", "state": "active", "capacity": 2, "tenants_before": 0, "tenants_after": 1, "score_before": 0, "score_after": 48.2}]}}`
	admin, url := newCannedAdmin(t, map[string][]cannedAnswer{
		"POST /servers/rebalance":    {ok(plan)},
		"GET /evacuations":           {ok(`{"evacuations": [` + evacuationJSON(t, map[string]any{"tenants": nil}) + `], "next_cursor": "c2"}`)},
		"GET /evacuations?cursor=c2": {ok(`{"evacuations": [` + evacuationJSON(t, map[string]any{"id": 2, "kind": "rebalance", "server": nil, "state": "done", "tenants": nil}) + `]}`)},
		"POST /evacuations/3/pause":  {ok(evacuationJSON(t, map[string]any{"state": "paused", "pending": 2, "moved": 1}))},
	})
	stdout, _, err := runCLI(t, "", "servers", "rebalance", "--dry-run", "--admin-url", url, "--token", testToken)
	require.NoError(t, err)
	require.Equal(t, []string{`{"dry_run":true}`}, admin.sent("POST /servers/rebalance"))
	require.Regexp(t, `heavy-00\s+pg-1\s+pg-3\s+48.2\s+heavy-00's 48.2 points`, stdout)
	require.Regexp(t, `pg-3\s+active\s+0 -> 1\s+2\s+0.0\s+48.2`, stdout)
	require.Contains(t, stdout, "Spread: 92.0 -> 27.7 points. A dry run: nothing moved")

	stdout, _, err = runCLI(t, "", "evacuations", "list", "--admin-url", url, "--token", testToken)
	require.NoError(t, err)
	require.Regexp(t, `(?m)^3\s+evacuate\s+pg-1\s+running\s+0\s+0\s+0\s+3\s+3\s`, stdout)
	require.Regexp(t, `(?m)^2\s+rebalance\s+-\s+done\s`, stdout)

	stdout, _, err = runCLI(t, "", "evacuations", "pause", "3", "--admin-url", url, "--token", testToken)
	require.NoError(t, err)
	require.Equal(t, "Evacuation 3 of pg-1 is paused: moved 1, failed 0, moving 0, pending 2 of 3.\n", stdout)
}
