package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
)

// tenantsOn creates n active tenants prefix-00 ... on server, concurrently.
func (f *fleet) tenantsOn(t *testing.T, prefix, server string, n int) {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			slug := fmt.Sprintf("%s-%02d", prefix, i)
			status, body := call(t, "POST", f.admin+"/admin/v1/tenants?wait=true", testToken,
				map[string]any{"slug": slug, "name": "Tenant " + slug, "plan": "pro", "server": server})
			if status != http.StatusCreated {
				t.Errorf("creating tenant %s: %d %v", slug, status, body)
			}
		})
	}
	wg.Wait()
	require.False(t, t.Failed())
}

func (f *fleet) setCapacity(t *testing.T, server string, capacity int) {
	t.Helper()
	status, body := call(t, "PATCH", f.admin+"/admin/v1/servers/"+server, testToken, map[string]any{"capacity": capacity})
	require.Equal(t, http.StatusOK, status, body)
}

// serverStates returns each server's state and tenant count.
func (f *fleet) serverStates(t *testing.T) (map[string]string, map[string]int) {
	t.Helper()
	status, body := call(t, "GET", f.admin+"/admin/v1/servers", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	states, tenants := map[string]string{}, map[string]int{}
	for _, s := range body["servers"].([]any) {
		s := s.(map[string]any)
		states[s["name"].(string)] = s["state"].(string)
		tenants[s["name"].(string)] = int(s["tenants"].(float64))
	}
	return states, tenants
}

func (f *fleet) evacuation(t *testing.T, id any) map[string]any {
	t.Helper()
	status, body := call(t, "GET", fmt.Sprintf("%s/admin/v1/evacuations/%v", f.admin, id), testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	return body
}

func count(e map[string]any, field string) int { return int(e[field].(float64)) }

// checkBounds fails when an evacuation has more moves under way than its
// concurrency, or more into one target than its per-server bound.
func checkBounds(t *testing.T, e map[string]any) {
	t.Helper()
	require.LessOrEqual(t, count(e, "moving"), count(e, "concurrency"), "moves under way")
	into := map[string]int{}
	for _, r := range e["tenants"].([]any) {
		r := r.(map[string]any)
		if r["state"] == "moving" {
			into[r["to"].(string)]++
		}
	}
	for to, n := range into {
		require.LessOrEqual(t, n, count(e, "per_server"), "moves under way into %s", to)
	}
}

// waitEvacuation polls an evacuation, checking its bounds each time, until
// until says so.
func (f *fleet) waitEvacuation(t *testing.T, id any, limit time.Duration, until func(e map[string]any) bool) map[string]any {
	t.Helper()
	var e map[string]any
	require.Eventually(t, func() bool {
		e = f.evacuation(t, id)
		checkBounds(t, e)
		return until(e)
	}, limit, 50*time.Millisecond, "evacuation %v: %v", id, e)
	return e
}

func finished(e map[string]any) bool { return e["finished_at"] != nil }

// TestEvacuateTwentyTenantsUnderTraffic evacuates pg-1's 20 tenants onto
// pg-2 (capacity 12) and pg-3 (capacity 8) in copy mode while three of
// them take numbered inserts through the tenant API: every tenant moves,
// neither target goes past its capacity, the bounds hold throughout, a
// pause starts no move until the resume, no request fails (the routers hold
// them while a fence is up) and every acknowledged insert is on the
// tenant's new server once; pg-1 ends empty.
func TestEvacuateTwentyTenantsUnderTraffic(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 3, map[string]string{"TENANTPLANE_MOVE_WORKERS": "4"}) // the evacuation's concurrency
	f.setCapacity(t, "pg-2", 12)
	f.setCapacity(t, "pg-3", 8) // 20 tenants: exactly full
	keys := make([]string, 3)
	for i := range keys {
		_, keys[i] = f.tenantWithKey(t, fmt.Sprintf("busy-%d", i), "pro", "pg-1")
	}
	f.tenantsOn(t, "quiet", "pg-1", 17)

	type writer struct {
		slug   string
		acked  []string
		failed []string
		cut    int // writes cut by the fence, retried
		maxGap time.Duration
	}
	writers := make([]*writer, len(keys))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wr := &writer{slug: fmt.Sprintf("busy-%d", w)}
		writers[w] = wr
		wg.Go(func() {
			last := time.Now()
			for n := 0; ; {
				select {
				case <-stop:
					return
				default:
				}
				email := fmt.Sprintf("w%d-%05d@example.com", w, n)
				status, body, err := try("POST", f.api+"/v1/users", keys[w], `{"email": "`+email+`"}`)
				if err == nil && (status == http.StatusCreated || status == http.StatusConflict) {
					wr.acked = append(wr.acked, email)
					wr.maxGap = max(wr.maxGap, time.Since(last))
					last = time.Now()
					n++
					time.Sleep(25 * time.Millisecond) // under the plan's rate limit
					continue
				}
				if err == nil && fenceCut(status, body) {
					wr.cut++
					time.Sleep(20 * time.Millisecond)
					continue
				}
				wr.failed = append(wr.failed, fmt.Sprintf("%s: %d %v %s", email, status, err, body))
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	time.Sleep(200 * time.Millisecond)

	began := time.Now()
	status, e := call(t, "POST", f.admin+"/admin/v1/servers/pg-1/drain", testToken,
		map[string]any{"evacuate": true, "concurrency": 4, "per_server": 2, "mode": "copy"})
	require.Equal(t, http.StatusAccepted, status, e)
	require.EqualValues(t, 20, e["total"])
	id := e["id"]
	states, _ := f.serverStates(t)
	require.Equal(t, "evacuating", states["pg-1"])

	status, refused := call(t, "POST", f.admin+"/admin/v1/servers/pg-1/drain", testToken, map[string]any{"evacuate": true})
	require.Equal(t, http.StatusConflict, status, refused)
	status, refused = call(t, "POST", f.admin+"/admin/v1/servers/pg-1/drain", testToken, nil)
	require.Equal(t, http.StatusConflict, status, "a plain drain of an evacuating server: %v", refused)

	// Pause: once the answer is in, no move starts; those under way finish.
	f.waitEvacuation(t, id, 60*time.Second, func(e map[string]any) bool { return count(e, "moved") >= 4 })
	status, e = call(t, "POST", fmt.Sprintf("%s/admin/v1/evacuations/%v/pause", f.admin, id), testToken, nil)
	require.Equal(t, http.StatusOK, status, e)
	require.Equal(t, "paused", e["state"])
	started := count(e, "moved") + count(e, "failed") + count(e, "moving")
	f.waitEvacuation(t, id, 30*time.Second, func(e map[string]any) bool { return count(e, "moving") == 0 })
	time.Sleep(time.Second)
	e = f.evacuation(t, id)
	require.Equal(t, started, count(e, "moved")+count(e, "failed"), "no move started while paused: %v", e)
	require.Positive(t, count(e, "pending"))
	status, e = call(t, "POST", fmt.Sprintf("%s/admin/v1/evacuations/%v/pause", f.admin, id), testToken, nil)
	require.Equal(t, http.StatusConflict, status, e)
	status, e = call(t, "POST", fmt.Sprintf("%s/admin/v1/evacuations/%v/resume", f.admin, id), testToken, nil)
	require.Equal(t, http.StatusOK, status, e)
	require.Equal(t, "running", e["state"])

	e = f.waitEvacuation(t, id, 120*time.Second, finished)
	took := time.Since(began)
	require.Equal(t, "done", e["state"], e)
	require.EqualValues(t, 20, e["moved"], e)
	require.EqualValues(t, 0, e["failed"], e)
	time.Sleep(200 * time.Millisecond) // writes flowing after it
	close(stop)
	wg.Wait()

	states, tenants := f.serverStates(t)
	require.Equal(t, "empty", states["pg-1"])
	require.Zero(t, tenants["pg-1"])
	require.LessOrEqual(t, tenants["pg-2"], 12, "pg-2's capacity")
	require.LessOrEqual(t, tenants["pg-3"], 8, "pg-3's capacity")
	require.Equal(t, 20, tenants["pg-2"]+tenants["pg-3"])
	status, body := call(t, "POST", f.admin+"/admin/v1/tenants?wait=true", testToken, map[string]any{"slug": "late", "name": "Late", "plan": "pro", "server": "pg-1"})
	require.NotEqual(t, http.StatusCreated, status, "an empty server takes no tenant: %v", body)

	for _, wr := range writers {
		require.Empty(t, wr.failed, "%s: no request fails beyond the held window", wr.slug)
		require.LessOrEqual(t, wr.cut, maxFenceCuts, "%s: writes cut by the fence", wr.slug)
		require.NotEmpty(t, wr.acked)
		_, tenant := call(t, "GET", f.admin+"/admin/v1/tenants/"+wr.slug, testToken, nil)
		target := f.servers[tenant["server"].(string)].DSN(tenant["database"].(string))
		require.EqualValues(t, len(wr.acked), query[int64](t, target, `SELECT count(*) FROM users`), "%s: every acknowledged insert, once", wr.slug)
		require.EqualValues(t, len(wr.acked), query[int64](t, target, `SELECT count(DISTINCT email) FROM users WHERE email = ANY($1)`, wr.acked))
		require.Less(t, wr.maxGap, 5*time.Second)
		t.Logf("%s: %d inserts through the move to %s, longest gap %v", wr.slug, len(wr.acked), tenant["server"], wr.maxGap.Round(time.Millisecond))
	}
	t.Logf("evacuation of 20 tenants (paused about a second): %v; pg-2 %d, pg-3 %d", took.Round(time.Millisecond), tenants["pg-2"], tenants["pg-3"])
}

// TestEvacuationFinishesAfterARestart stops the App mid-evacuation and
// starts another on the same catalog: it carries on from the ledger and
// the moves, moves every tenant once, and leaves pg-1 empty. Then tenants
// that cannot move (the online mode cannot run here) are each reported
// with the reason, and their server ends draining.
func TestEvacuationFinishesAfterARestart(t *testing.T) {
	t.Parallel()
	env := map[string]string{"TENANTPLANE_SECRET_KEY": catalog.NewKey()}
	f := setupFleet(t, 3, env)
	f.tenantsOn(t, "evac", "pg-1", 6)

	status, e := call(t, "POST", f.admin+"/admin/v1/servers/pg-1/drain", testToken,
		map[string]any{"evacuate": true, "concurrency": 1, "mode": "copy"})
	require.Equal(t, http.StatusAccepted, status, e)
	id := e["id"]
	f.waitEvacuation(t, id, 60*time.Second, func(e map[string]any) bool { return count(e, "moved") >= 2 })
	f.redeploy(t, env)
	atRestart := f.evacuation(t, id)
	require.Less(t, count(atRestart, "moved"), 6, "the restart came mid-evacuation: %v", atRestart)

	e = f.waitEvacuation(t, id, 90*time.Second, finished)
	require.Equal(t, "done", e["state"], e)
	require.EqualValues(t, 6, e["moved"], e)
	states, tenants := f.serverStates(t)
	require.Equal(t, "empty", states["pg-1"])
	require.Equal(t, 6, tenants["pg-2"]+tenants["pg-3"])
	// Every tenant moved once: one move each, by the evacuation.
	moves := map[string]int{}
	status, page := call(t, "GET", f.admin+"/admin/v1/moves", testToken, nil)
	require.Equal(t, http.StatusOK, status)
	for _, m := range page["moves"].([]any) {
		m := m.(map[string]any)
		if m["actor"] == fmt.Sprintf("evacuation:%v", id) && m["phase"] == "done" {
			moves[m["tenant"].(string)]++
		}
	}
	require.Len(t, moves, 6)
	for slug, n := range moves {
		require.Equal(t, 1, n, slug)
	}
	t.Logf("moved %v before the restart, %d in all", atRestart["moved"], len(moves))

	// pg-2's tenants without a mode: the online mode cannot run on these
	// servers, so each one fails with the reason, the evacuation goes on
	// through all of them, and pg-2 ends draining, not empty.
	_, tenants = f.serverStates(t)
	status, e = call(t, "POST", f.admin+"/admin/v1/servers/pg-2/drain", testToken, map[string]any{"evacuate": true, "concurrency": 2})
	require.Equal(t, http.StatusAccepted, status, e)
	e = f.waitEvacuation(t, e["id"], 30*time.Second, finished)
	require.Equal(t, "failed", e["state"], e)
	require.Equal(t, tenants["pg-2"], count(e, "failed"), e)
	require.Contains(t, e["last_error"], "did not move")
	for _, r := range e["tenants"].([]any) {
		require.Contains(t, r.(map[string]any)["error"], "wal_level", "each tenant's reason: %v", r)
	}
	states, _ = f.serverStates(t)
	require.Equal(t, "draining", states["pg-2"])

	status, page = call(t, "GET", f.admin+"/admin/v1/evacuations?limit=1", testToken, nil)
	require.Equal(t, http.StatusOK, status, page)
	list := page["evacuations"].([]any)
	require.Len(t, list, 1)
	require.Equal(t, "pg-2", list[0].(map[string]any)["server"], "newest first")
	require.Equal(t, tenants["pg-2"], count(list[0].(map[string]any), "failed"))
	require.Nil(t, list[0].(map[string]any)["tenants"], "lists carry counts, not tenants")
	_, page = call(t, "GET", f.admin+"/admin/v1/evacuations?cursor="+page["next_cursor"].(string), testToken, nil)
	require.Equal(t, "pg-1", page["evacuations"].([]any)[0].(map[string]any)["server"])
	require.Nil(t, page["next_cursor"])
}

// TestRebalance builds an uneven fleet (pg-1 six tenants, one of them
// busy, pg-2 one, pg-3 none with room for two): the dry run proposes moves
// that lower the spread, within pg-3's capacity, and starts nothing; the
// real run carries the plan out.
func TestRebalance(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 3, nil)
	f.setCapacity(t, "pg-3", 2)
	f.tenantsOn(t, "heavy", "pg-1", 6)
	f.tenantsOn(t, "light", "pg-2", 1)
	// An hour's traffic as the router's flushes record it.
	conn, err := connect(t, f.app.cfg.DatabaseURL)
	require.NoError(t, err)
	_, err = conn.Exec(context.Background(), `INSERT INTO usage (tenant_id, meter, bucket, quantity)
		SELECT id, 'api_calls', date_trunc('hour', now()), CASE WHEN slug = 'heavy-00' THEN 5000 ELSE 100 END FROM tenants`)
	require.NoError(t, err)
	conn.Close(context.Background())

	status, dry := call(t, "POST", f.admin+"/admin/v1/servers/rebalance", testToken, map[string]any{"dry_run": true})
	require.Equal(t, http.StatusOK, status, dry)
	require.Nil(t, dry["evacuation"])
	plan := dry["plan"].(map[string]any)
	moves := plan["moves"].([]any)
	require.NotEmpty(t, moves, plan)
	require.Less(t, plan["spread_after"].(float64), plan["spread_before"].(float64), plan)
	for _, s := range plan["servers"].([]any) {
		s := s.(map[string]any)
		require.LessOrEqual(t, s["tenants_after"].(float64), s["capacity"].(float64), "capacity of %v", s["server"])
	}
	for _, m := range moves {
		m := m.(map[string]any)
		require.NotEqual(t, m["from"], m["to"])
		require.NotEmpty(t, m["why"])
	}
	_, page := call(t, "GET", f.admin+"/admin/v1/moves", testToken, nil)
	require.Empty(t, page["moves"], "a dry run moves nothing")
	t.Logf("plan: %d moves, spread %v -> %v", len(moves), plan["spread_before"], plan["spread_after"])

	status, real := call(t, "POST", f.admin+"/admin/v1/servers/rebalance", testToken, map[string]any{"mode": "copy"})
	require.Equal(t, http.StatusAccepted, status, real)
	require.Equal(t, len(moves), len(real["plan"].(map[string]any)["moves"].([]any)), "the same plan")
	ev := real["evacuation"].(map[string]any)
	require.Equal(t, "rebalance", ev["kind"])
	ev = f.waitEvacuation(t, ev["id"], 60*time.Second, finished)
	require.Equal(t, "done", ev["state"], ev)
	require.EqualValues(t, len(moves), ev["moved"])
	for _, m := range real["plan"].(map[string]any)["moves"].([]any) {
		m := m.(map[string]any)
		_, tenant := call(t, "GET", f.admin+"/admin/v1/tenants/"+m["tenant"].(string), testToken, nil)
		require.Equal(t, m["to"], tenant["server"])
	}
	_, tenants := f.serverStates(t)
	require.LessOrEqual(t, tenants["pg-3"], 2)
	status, again := call(t, "POST", f.admin+"/admin/v1/servers/rebalance", testToken, map[string]any{"dry_run": true})
	require.Equal(t, http.StatusOK, status)
	require.LessOrEqual(t, again["plan"].(map[string]any)["spread_before"].(float64), plan["spread_after"].(float64)+5,
		"the fleet is about as even as planned: %v", again["plan"])
}

// TestEvacuationRoutesAnswerTheEdgeCases holds the fleet routes to the rules
// every admin route keeps: the token, a malformed id is 404, bad input 400
// with nothing started, an unknown server 404.
func TestEvacuationRoutesAnswerTheEdgeCases(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	v1 := b.admin + "/admin/v1"
	for _, path := range []string{"/evacuations/x", "/evacuations/0", "/evacuations/99999999999999999999"} {
		for _, tc := range []struct{ method, suffix string }{{"GET", ""}, {"POST", "/pause"}, {"POST", "/resume"}, {"POST", "/cancel"}} {
			status, resp := call(t, tc.method, v1+path+tc.suffix, testToken, nil)
			require.Equal(t, http.StatusNotFound, status, "%s %s%s: %v", tc.method, path, tc.suffix, resp)
		}
	}
	status, resp := call(t, "GET", v1+"/evacuations/12", testToken, nil)
	require.Equal(t, http.StatusNotFound, status, resp)
	for _, tc := range []struct{ method, path string }{
		{"POST", "/servers/pg-1/drain"}, {"POST", "/servers/rebalance"}, {"GET", "/evacuations/1"}, {"POST", "/evacuations/1/pause"},
	} {
		status, resp := call(t, tc.method, v1+tc.path, "", nil)
		require.Equal(t, http.StatusUnauthorized, status, "%s %s: %v", tc.method, tc.path, resp)
	}
	for _, body := range []map[string]any{
		{"evacuate": true, "concurrency": 65}, {"evacuate": true, "per_server": -1}, {"evacuate": true, "mode": "fast"},
		{"concurrency": 2}, {"evacuate": true, "unknown": 1},
	} {
		status, resp := call(t, "POST", v1+"/servers/pg-1/drain", testToken, body)
		require.Equal(t, http.StatusBadRequest, status, "%v: %v", body, resp)
	}
	status, resp = call(t, "POST", v1+"/servers/nowhere/drain", testToken, map[string]any{"evacuate": true})
	require.Equal(t, http.StatusNotFound, status, resp)
	status, resp = call(t, "POST", v1+"/servers/rebalance", testToken, map[string]any{"dry_run": true, "mode": "fast"})
	require.Equal(t, http.StatusBadRequest, status, resp)
	status, resp = call(t, "POST", v1+"/servers/rebalance", testToken, nil)
	require.Equal(t, http.StatusOK, status, "an empty fleet: nothing to do: %v", resp)
	require.Empty(t, resp["plan"].(map[string]any)["moves"])
	require.Nil(t, resp["evacuation"])
}

// TestCancelEvacuationLetsMovesUnderWayFinish cancels an evacuation with a
// move under way: no move starts after the answer, the one under way
// finishes, the tenants not started are skipped and stay, and the server
// ends draining.
func TestCancelEvacuationLetsMovesUnderWayFinish(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 2, nil)
	f.tenantsOn(t, "stay", "pg-1", 4)
	status, e := call(t, "POST", f.admin+"/admin/v1/servers/pg-1/drain", testToken, map[string]any{"evacuate": true, "concurrency": 1, "mode": "copy"})
	require.Equal(t, http.StatusAccepted, status, e)
	id := e["id"]
	f.waitEvacuation(t, id, 30*time.Second, func(e map[string]any) bool { return count(e, "moving") == 1 })
	status, e = call(t, "POST", fmt.Sprintf("%s/admin/v1/evacuations/%v/cancel", f.admin, id), testToken, nil)
	require.Equal(t, http.StatusOK, status, e)
	require.Equal(t, "cancelled", e["state"])
	started := count(e, "moved") + count(e, "moving") + count(e, "failed")
	e = f.waitEvacuation(t, id, 30*time.Second, finished)
	require.Equal(t, "cancelled", e["state"], e)
	require.Equal(t, started, count(e, "moved")+count(e, "failed"), "the moves under way finished, none started: %v", e)
	require.Equal(t, 4-started, count(e, "skipped"), e)
	require.Positive(t, count(e, "skipped"))
	status, e = call(t, "POST", fmt.Sprintf("%s/admin/v1/evacuations/%v/resume", f.admin, id), testToken, nil)
	require.Equal(t, http.StatusConflict, status, e)
	states, tenants := f.serverStates(t)
	require.Equal(t, "draining", states["pg-1"])
	require.Equal(t, 4-started, tenants["pg-1"])
	require.Equal(t, started, tenants["pg-2"])
}
