package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
)

// fenceCut says whether an answer is a write cut by a move's fence: one
// still running when the hold's wait for transactions in flight ran out
// (mover.Config.HoldWait, 1 s) has its session ended, and the router
// answers 503, to retry (the writers retry the same insert, so one that
// landed after all answers 409 and counts once). Only a loaded machine runs
// a single insert that long, so a test allows a few (maxFenceCuts).
func fenceCut(status int, body string) bool {
	return status == http.StatusServiceUnavailable && strings.Contains(body, "a move's fence")
}

const maxFenceCuts = 2

// TestMoveUnderWritesThroughTwoReplicas moves a tenant from pg-1 to pg-2
// while two tenantplane instances on one catalog each take a client's
// numbered inserts through the tenant API. Online mode cannot run on these
// servers (wal_level = replica), so a move without a mode is refused naming
// the reason, and one in copy mode goes through: every acknowledged insert
// is on the target exactly once, no request fails (the routers hold them
// while the fence is up; a write the fence cuts is retried, see fenceCut),
// nothing is written on the source after the fence, and the longest gap a
// client sees is the write pause.
func TestMoveUnderWritesThroughTwoReplicas(t *testing.T) {
	t.Parallel()
	secret := catalog.NewKey()
	env := map[string]string{"TENANTPLANE_SECRET_KEY": secret}
	f := setupFleet(t, 2, env)
	tenant, key := f.tenantWithKey(t, "moving", "pro", "pg-1")
	second := setupEnv(t, f.app.cfg.DatabaseURL, env)

	// Two clients, one per instance, each numbering its inserts. A 409 on a
	// retry means the insert before it landed after all: it counts once.
	type writer struct {
		api    string
		acked  []string
		maxGap time.Duration
		failed []string
		cut    int // writes cut by the fence, retried
	}
	writers := []*writer{{api: f.api}, {api: second.api}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w, wr := range writers {
		wg.Go(func() {
			last := time.Now()
			for n := 0; n < 5000; {
				select {
				case <-stop:
					return
				default:
				}
				email := fmt.Sprintf("w%d-%04d@example.com", w, n)
				status, body, err := try("POST", wr.api+"/v1/users", key, `{"email": "`+email+`"}`)
				switch {
				case err == nil && (status == http.StatusCreated || status == http.StatusConflict):
					wr.acked = append(wr.acked, email)
					wr.maxGap = max(wr.maxGap, time.Since(last))
					last = time.Now()
					n++
					time.Sleep(15 * time.Millisecond) // under the plan's rate limit
				case err == nil && fenceCut(status, body):
					wr.cut++
					time.Sleep(20 * time.Millisecond)
				default:
					wr.failed = append(wr.failed, fmt.Sprintf("%s: %d %v %s", email, status, err, body))
					time.Sleep(20 * time.Millisecond)
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond) // writes flowing before the move

	status, refused := call(t, "POST", f.admin+"/admin/v1/tenants/moving/move", testToken, map[string]any{"to": "pg-2"})
	require.Equal(t, http.StatusConflict, status, refused)
	require.Contains(t, refused["error"].(map[string]any)["message"], "wal_level")
	require.Contains(t, refused["error"].(map[string]any)["message"], "mode copy")

	status, move := call(t, "POST", f.admin+"/admin/v1/tenants/moving/move", testToken, map[string]any{"to": "pg-2", "mode": "copy"})
	require.Equal(t, http.StatusAccepted, status, move)
	id := move["id"]
	require.Eventually(t, func() bool {
		_, move = call(t, "GET", fmt.Sprintf("%s/admin/v1/moves/%v", f.admin, id), testToken, nil)
		return move["phase"] == "done" || move["phase"] == "aborted"
	}, 90*time.Second, 50*time.Millisecond, "the move never finished: %v", move)
	require.Equal(t, "done", move["phase"], move)
	time.Sleep(300 * time.Millisecond) // writes flowing after it
	close(stop)
	wg.Wait()

	_, moved := call(t, "GET", f.admin+"/admin/v1/tenants/moving", testToken, nil)
	require.Equal(t, "pg-2", moved["server"])
	db := tenant["database"].(string)
	target, source := f.servers["pg-2"].DSN(db), f.servers["pg-1"].DSN(db)
	total := 0
	for w, wr := range writers {
		require.Empty(t, wr.failed, "writer %d: no request fails beyond the held window", w)
		require.LessOrEqual(t, wr.cut, maxFenceCuts, "writer %d: writes cut by the fence", w)
		require.NotEmpty(t, wr.acked)
		total += len(wr.acked)
		for _, email := range wr.acked {
			require.EqualValues(t, 1, query[int64](t, target, `SELECT count(*) FROM users WHERE email = $1`, email), "writer %d: %s on the target once", w, email)
		}
		require.Less(t, wr.maxGap, 5*time.Second, "writer %d: the longest pause a client saw", w)
		t.Logf("writer %d through instance %d: %d inserts, longest gap %v", w, w+1, len(wr.acked), wr.maxGap.Round(time.Millisecond))
	}
	require.EqualValues(t, total, query[int64](t, target, `SELECT count(*) FROM users`), "and nothing else")
	// The source, kept fenced for a revert, has nothing written after the
	// fence: its newest row is older than every row that is on the target only.
	onSource := query[int64](t, source, `SELECT count(*) FROM users`)
	require.Less(t, onSource, int64(total), "writes went on after the fence, to the target")
	newestOnSource := query[time.Time](t, source, `SELECT max(created_at) FROM users`)
	var sourceEmails []string
	conn, err := connect(t, source)
	require.NoError(t, err)
	rows, err := conn.Query(context.Background(), `SELECT email FROM users`)
	require.NoError(t, err)
	for rows.Next() {
		var e string
		require.NoError(t, rows.Scan(&e))
		sourceEmails = append(sourceEmails, e)
	}
	require.NoError(t, rows.Err())
	conn.Close(context.Background())
	oldestTargetOnly := query[time.Time](t, target, `SELECT min(created_at) FROM users WHERE email <> ALL($1)`, sourceEmails)
	require.True(t, newestOnSource.Before(oldestTargetOnly), "no write reached the source after the fence")
	require.NotNil(t, move["write_pause_ms"])
	t.Logf("move %v: write pause %v ms, %v rows copied", id, move["write_pause_ms"], move["rows_copied"])
}
