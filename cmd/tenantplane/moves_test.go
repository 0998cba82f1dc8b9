package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// cannedAdmin is an admin API that answers canned JSON shaped like the move
// contract: for each "METHOD /path", its answers in turn, the last one
// forever after. It records the bodies it was sent.
type cannedAdmin struct {
	mu      sync.Mutex
	answers map[string][]cannedAnswer
	calls   map[string]int
	bodies  map[string][]string
}

type cannedAnswer struct {
	status int
	body   string
}

func newCannedAdmin(t *testing.T, answers map[string][]cannedAnswer) (*cannedAdmin, string) {
	t.Helper()
	c := &cannedAdmin{answers: answers, calls: map[string]int{}, bodies: map[string][]string{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Method + " " + strings.TrimPrefix(r.URL.RequestURI(), "/admin/v1")
		raw, _ := io.ReadAll(r.Body)
		c.mu.Lock()
		list, ok := c.answers[key]
		i := c.calls[key]
		c.calls[key]++
		c.bodies[key] = append(c.bodies[key], string(raw))
		c.mu.Unlock()
		if !ok || r.Header.Get("Authorization") != "Bearer "+testToken {
			http.Error(w, "unexpected request "+key, http.StatusTeapot)
			return
		}
		a := list[min(i, len(list)-1)]
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.status)
		_, _ = io.WriteString(w, a.body)
	}))
	t.Cleanup(srv.Close)
	return c, srv.URL
}

func (c *cannedAdmin) sent(key string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bodies[key]
}

// moveJSON is a move as the contract shapes it, with fields replaced by over.
func moveJSON(t *testing.T, over map[string]any) string {
	t.Helper()
	m := map[string]any{
		"id": 12, "tenant": "acme", "tenant_id": "0b5e5f0e-8f8e-4a55-9a4e-0d5f00c0ffee", "from": "pg-1", "to": "pg-2",
		"mode": "online", "mode_reason": "both servers have wal_level=logical and the source role may replicate",
		"phase": "pending", "rows_copied": 0, "bytes_copied": 0, "lag_bytes": 0, "write_pause_ms": nil, "keep_until": nil,
		"cancel_requested": false, "last_error": "", "actor": "admin",
		"created_at": "2026-03-01T12:00:00Z", "updated_at": "2026-03-01T12:00:00Z", "finished_at": nil,
	}
	for k, v := range over {
		m[k] = v
	}
	raw, err := json.Marshal(m)
	require.NoError(t, err)
	return string(raw)
}

func ok(body string) cannedAnswer { return cannedAnswer{http.StatusOK, body} }

func TestTenantsMoveWatchShowsPhasesAndEndsWithTheWritePause(t *testing.T) {
	t.Parallel()
	pending := moveJSON(t, nil)
	copying := moveJSON(t, map[string]any{"phase": "copying", "rows_copied": 1234567, "bytes_copied": 52428800})
	catchingUp := moveJSON(t, map[string]any{"phase": "catching_up", "rows_copied": 2000000, "bytes_copied": 209715200, "lag_bytes": 8192})
	done := moveJSON(t, map[string]any{"phase": "done", "rows_copied": 2000000, "bytes_copied": 209715200, "write_pause_ms": 312,
		"keep_until": "2026-03-02T12:00:00Z", "finished_at": "2026-03-01T12:03:00Z"})
	admin, url := newCannedAdmin(t, map[string][]cannedAnswer{
		"POST /tenants/acme/move": {{http.StatusAccepted, pending}},
		"GET /moves/12":           {ok(copying), ok(catchingUp), ok(done)},
	})
	stdout, stderr, err := runCLI(t, "", "tenants", "move", "acme", "--to", "pg-2", "--watch", "--interval", "5ms", "--admin-url", url, "--token", testToken)
	require.NoError(t, err, stderr)
	require.Equal(t, []string{`{"mode":"","to":"pg-2"}`}, admin.sent("POST /tenants/acme/move"))
	require.Contains(t, stdout, "Moving tenant acme from pg-1 to pg-2, online mode (move 12). Both servers have wal_level=logical and the source role may replicate.\n")
	require.Contains(t, stdout, "move 12 copying · 1,234,567 rows · 50 MiB copied · lag 0 B\n")
	require.Contains(t, stdout, "move 12 catching_up · 2,000,000 rows · 200 MiB copied · lag 8.0 KiB\n")
	require.Contains(t, stdout, "move 12 done · 2,000,000 rows · 200 MiB copied · lag 0 B · write pause 312ms\n")
	require.Contains(t, stdout, "Move 12 is done: tenant acme moved from pg-1 to pg-2, online mode; 2,000,000 rows, 200 MiB copied; writes paused 312ms")
	require.Contains(t, stdout, "The source is kept until 2026-03-02T12:00:00Z; to go back: tenantplane moves revert 12\n")
	require.NotContains(t, stdout, "/s", "a move's phases have no rate")
	require.NotContains(t, stdout, "\r", "not a terminal: plain lines")

	t.Run("on a terminal, a bar of phases", func(t *testing.T) {
		var m Move
		require.NoError(t, json.Unmarshal([]byte(catchingUp), &m))
		require.Equal(t, "[##########....................] 2/6  move 12 catching_up · 2,000,000 rows · 200 MiB copied · lag 8.0 KiB",
			progressLine(m.progress(), 0, 30))
	})
}

func TestTenantsMoveWithoutWatchAndItsFlags(t *testing.T) {
	t.Parallel()
	started := moveJSON(t, map[string]any{"mode": "copy", "mode_reason": "asked for"})
	refused := `{"error": {"code": "conflict", "message": "server pg-1 has wal_level=replica: an online move needs wal_level=logical; a copy move would hold writes about 40s (--mode copy)"}}`
	admin, url := newCannedAdmin(t, map[string][]cannedAnswer{
		"POST /tenants/acme/move":   {{http.StatusAccepted, started}},
		"POST /tenants/globex/move": {{http.StatusConflict, refused}},
	})
	cli := func(args ...string) (string, error) {
		stdout, _, err := runCLI(t, "", append(args, "--admin-url", url, "--token", testToken)...)
		return stdout, err
	}
	stdout, err := cli("tenants", "move", "acme", "--to", "pg-2", "--mode", "copy")
	require.NoError(t, err)
	require.Equal(t, "Moving tenant acme from pg-1 to pg-2, copy mode (move 12). Asked for.\nFollow it with: tenantplane moves show 12 --watch\n", stdout)
	require.Equal(t, []string{`{"mode":"copy","to":"pg-2"}`}, admin.sent("POST /tenants/acme/move"))

	stdout, err = cli("tenants", "move", "acme", "--to", "pg-2", "--json")
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &m), "--json prints the answer")
	require.Equal(t, float64(12), m["id"])

	_, err = cli("tenants", "move", "globex", "--to", "pg-2")
	var apiErr *APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusConflict, apiErr.Status)
	require.Contains(t, err.Error(), "a copy move would hold writes about 40s (--mode copy)")

	_, err = cli("tenants", "move", "acme", "--to", "pg-2", "--mode", "fast")
	require.EqualError(t, err, `--mode must be online or copy, got "fast"`)
	_, err = cli("tenants", "move", "acme")
	require.ErrorContains(t, err, `required flag(s) "to" not set`)
	require.Len(t, admin.sent("POST /tenants/acme/move"), 2, "bad flags call nothing")
}

func TestMovesListShowCancelRevert(t *testing.T) {
	t.Parallel()
	done := moveJSON(t, map[string]any{"phase": "done", "rows_copied": 1500, "bytes_copied": 2048, "write_pause_ms": 87,
		"keep_until": "2026-03-02T12:00:00Z", "finished_at": "2026-03-01T12:03:00Z"})
	aborted := moveJSON(t, map[string]any{"id": 11, "tenant": "globex", "phase": "aborted", "mode": "copy",
		"last_error": "table users: 1000 rows on the source, 999 on the target", "finished_at": "2026-03-01T11:00:00Z"})
	copying := moveJSON(t, map[string]any{"id": 13, "tenant": "initech", "phase": "copying", "rows_copied": 10, "bytes_copied": 100})
	cancelling := moveJSON(t, map[string]any{"id": 13, "tenant": "initech", "phase": "copying", "cancel_requested": true})
	cancelled := moveJSON(t, map[string]any{"id": 13, "tenant": "initech", "phase": "aborted", "cancel_requested": true})
	revert := moveJSON(t, map[string]any{"id": 14, "from": "pg-2", "to": "pg-1", "reverts": 12, "phase": "pending"})
	_, url := newCannedAdmin(t, map[string][]cannedAnswer{
		"GET /moves":            {ok(`{"moves": [` + copying + `, ` + done + `], "next_cursor": "c2"}`)},
		"GET /moves?cursor=c2":  {ok(`{"moves": [` + aborted + `]}`)},
		"GET /moves/12":         {ok(done)},
		"POST /moves/13/cancel": {ok(cancelling)},
		"GET /moves/13":         {ok(cancelling), ok(cancelled)},
		"POST /moves/12/revert": {{http.StatusAccepted, revert}},
		"POST /moves/14/cancel": {{http.StatusConflict, `{"error": {"code": "conflict", "message": "move 14 has switched: revert it instead"}}`}},
		"GET /moves/99":         {{http.StatusNotFound, `{"error": {"code": "not_found", "message": "move \"99\" not found"}}`}},
	})
	cli := func(args ...string) (string, error) {
		stdout, _, err := runCLI(t, "", append(args, "--admin-url", url, "--token", testToken)...)
		return stdout, err
	}

	stdout, err := cli("moves", "list")
	require.NoError(t, err)
	require.Equal(t, ""+
		"MOVE  TENANT   FROM  TO    MODE    PHASE    ROWS   BYTES    WRITE_PAUSE  CREATED               FINISHED              LAST_ERROR\n"+
		"13    initech  pg-1  pg-2  online  copying  10     100 B    -            2026-03-01T12:00:00Z  -                     -\n"+
		"12    acme     pg-1  pg-2  online  done     1,500  2.0 KiB  87ms         2026-03-01T12:00:00Z  2026-03-01T12:03:00Z  -\n"+
		"11    globex   pg-1  pg-2  copy    aborted  0      0 B      -            2026-03-01T12:00:00Z  2026-03-01T11:00:00Z  table users: 1000 rows on the source, 999 on the target\n",
		stdout, "every page, then a table")
	stdout, err = cli("moves", "list", "--json")
	require.NoError(t, err)
	var page map[string][]map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &page))
	require.Len(t, page["moves"], 3)

	stdout, err = cli("moves", "show", "12")
	require.NoError(t, err)
	require.Equal(t, ""+
		"MOVE:         12\n"+
		"TENANT:       acme\n"+
		"FROM:         pg-1\n"+
		"TO:           pg-2\n"+
		"MODE:         online (both servers have wal_level=logical and the source role may replicate)\n"+
		"PHASE:        done\n"+
		"COPIED:       1,500 rows, 2.0 KiB\n"+
		"LAG:          0 B\n"+
		"WRITE_PAUSE:  87ms\n"+
		"KEEP_UNTIL:   2026-03-02T12:00:00Z\n"+
		"BY:           admin\n"+
		"CREATED:      2026-03-01T12:00:00Z\n"+
		"FINISHED:     2026-03-01T12:03:00Z\n", stdout)

	stdout, err = cli("moves", "cancel", "13", "--watch", "--interval", "5ms")
	require.EqualError(t, err, "move 13 of tenant initech aborted: cancelled; the tenant stays on pg-1")
	require.Contains(t, stdout, "Cancelling move 13 of tenant initech (copying); it rolls back, the tenant stays on pg-1.\n")
	require.Contains(t, stdout, "move 13 copying (cancelling) · 0 rows · 0 B copied · lag 0 B\n")
	require.Contains(t, stdout, "Move 13 aborted: tenant initech stays on pg-1")

	stdout, err = cli("moves", "revert", "12")
	require.NoError(t, err)
	require.Equal(t, "Reverting move 12: moving tenant acme from pg-2 to pg-1, online mode (move 14). "+
		"Both servers have wal_level=logical and the source role may replicate.\nFollow it with: tenantplane moves show 14 --watch\n", stdout)

	_, err = cli("moves", "cancel", "14")
	require.EqualError(t, err, "move 14 has switched: revert it instead (conflict, HTTP 409)")
	_, err = cli("moves", "show", "99")
	require.EqualError(t, err, `move "99" not found (not_found, HTTP 404)`)

	stdout, err = cli("moves", "show", "12", "--watch", "--json", "--interval", "5ms")
	require.NoError(t, err)
	var final map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &final), "--json --watch prints the final answer only")
	require.Equal(t, "done", final["phase"])
}

func TestWriteMovesEmptyAndTenantShowsItsMove(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	require.NoError(t, writeMoves(&b, nil))
	require.Equal(t, "No moves; start one with: tenantplane tenants move SLUG --to SERVER --watch\n", b.String())

	var tn Tenant
	require.NoError(t, json.Unmarshal([]byte(`{"slug": "acme", "state": "active", "move_id": 12}`), &tn))
	b.Reset()
	require.NoError(t, writeTenant(&b, tn))
	require.Contains(t, b.String(), "MOVING:    move 12; follow it with: tenantplane moves show 12 --watch\n")
}

func TestMovesShowCountsReadably(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	require.NoError(t, writeMoves(&b, []Move{{ID: "7", Tenant: "acme", Phase: "done", RowsCopied: 1234567, BytesCopied: 1536}}))
	require.Contains(t, b.String(), "1,234,567")
	require.Contains(t, b.String(), "1.5 KiB")
}
