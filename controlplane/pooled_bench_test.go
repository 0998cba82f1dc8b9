package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// BenchmarkPromotionPause promotes a pooled tenant holding 100,000 rows (in
// a pool database shared with another tenant) to a database of its own on
// another server while a client writes to it through the tenant API without
// a pause, in the copy mode (servers at wal_level replica) and the online
// mode (logical, the managed role with REPLICATION), and reports the move's write pause (hold to switch), the longest
// gap the client saw between two acknowledged writes, and the rows copied.
//
//	go test -run '^$' -bench PromotionPause -benchtime 1x -timeout 30m ./controlplane
func BenchmarkPromotionPause(b *testing.B) {
	for _, mode := range []string{"copy", "online"} {
		b.Run(mode, func(b *testing.B) { benchmarkTierMove(b, mode, "promote") })
	}
}

// BenchmarkRepoolPause is BenchmarkPromotionPause for a repool: the tenant's
// 100,000 rows moved into a pool database on the other server (POST
// /tenants/{slug}/move {to}), beside that pool's other rows.
//
//	go test -run '^$' -bench RepoolPause -benchtime 1x -timeout 30m ./controlplane
func BenchmarkRepoolPause(b *testing.B) {
	for _, mode := range []string{"copy", "online"} {
		b.Run(mode, func(b *testing.B) { benchmarkTierMove(b, mode, "repool") })
	}
}

// benchmarkTierMove runs one promotion (kind promote) or repool (kind
// repool) of a pooled tenant of 100,000 rows under writes.
func benchmarkTierMove(b *testing.B, mode, kind string) {
	for range b.N {
		ctx := context.Background()
		var f *fleet
		if mode == "copy" {
			f = setupFleet(b, 2, nil)
		} else {
			f = setupLogicalFleet(b, 2, nil)
		}
		_, err := f.app.store.Pool().Exec(ctx, `INSERT INTO plans (name, max_conns, rate_per_sec, rate_burst, isolation) VALUES ('pooled-fast', 4, 1000, 1000, 'pooled')`)
		require.NoError(b, err)
		status, pool := call(b, "POST", f.admin+"/admin/v1/pools", testToken, map[string]any{"server": "pg-1", "capacity": 10})
		require.Equal(b, http.StatusCreated, status, pool)
		var key string
		var id string
		for _, slug := range []string{"big", "small"} {
			status, tenant := call(b, "POST", f.admin+"/admin/v1/tenants", testToken, map[string]any{"slug": slug, "name": slug, "plan": "pooled-fast"})
			require.Equal(b, http.StatusCreated, status, tenant)
			if slug == "big" {
				id = tenant["id"].(string)
				_, k := call(b, "POST", f.admin+"/admin/v1/tenants/big/keys", testToken, nil)
				key = k["key"].(string)
			}
		}
		poolDSN := f.servers["pg-1"].DSN(pool["name"].(string))
		conn, err := connect(b, poolDSN)
		require.NoError(b, err)
		_, err = conn.Exec(ctx, `INSERT INTO users (tenant_id, email, name) SELECT $1, 'bulk-' || g || '@example.com', repeat('x', 40) FROM generate_series(1, 100000) g`, id)
		require.NoError(b, err)
		_, err = conn.Exec(ctx, `VACUUM ANALYZE users`)
		require.NoError(b, err)
		conn.Close(ctx)
		path := "/promote"
		if kind == "repool" {
			path = "/move"
			status, target := call(b, "POST", f.admin+"/admin/v1/pools", testToken, map[string]any{"server": "pg-2", "capacity": 10})
			require.Equal(b, http.StatusCreated, status, target)
		}

		stop := make(chan struct{})
		var acked, failed, unavailable []string
		var gap time.Duration
		done := make(chan struct{})
		go func() {
			defer close(done)
			acked, failed, unavailable, gap = writeUntil(f.api, key, "w", stop)
		}()
		time.Sleep(500 * time.Millisecond)
		b.ResetTimer()
		status, move := call(b, "POST", f.admin+"/admin/v1/tenants/big"+path, testToken, map[string]any{"to": "pg-2"})
		require.Equal(b, http.StatusAccepted, status, move)
		start := time.Now()
		move = f.waitMove(b, move["id"])
		took := time.Since(start)
		b.StopTimer()
		time.Sleep(500 * time.Millisecond)
		close(stop)
		<-done
		require.Equal(b, mode, move["mode"], move["mode_reason"])
		require.Empty(b, failed)
		require.LessOrEqual(b, len(unavailable), 3, "%v", unavailable)
		require.Equal(b, kind, move["kind"])
		b.Logf("%s: %s of 100,000 rows under writes: %v in all, write pause %v ms, longest client gap %v, %v rows copied, %d writes acknowledged",
			mode, kind, took.Round(time.Millisecond), move["write_pause_ms"], gap.Round(time.Millisecond), move["rows_copied"], len(acked))
		b.ReportMetric(move["write_pause_ms"].(float64), "write-pause-ms")
		b.ReportMetric(float64(gap.Milliseconds()), "client-gap-ms")
		b.ReportMetric(took.Seconds(), kind+"-s")
	}
}

// BenchmarkEvacuatePooled empties a server whose one pool database holds 20
// pooled tenants of 1,000 rows each (servers at wal_level replica: each
// repool in the copy mode) into a pool database on the other server, with
// concurrency 4 (4 move workers, 4 into the target), and reports the
// evacuation's wall time and its longest and median write pause.
//
//	go test -run '^$' -bench EvacuatePooled -benchtime 1x -timeout 30m ./controlplane
func BenchmarkEvacuatePooled(b *testing.B) {
	for range b.N {
		ctx := context.Background()
		f := setupFleet(b, 2, map[string]string{"TENANTPLANE_MOVE_WORKERS": "4"})
		status, pool := call(b, "POST", f.admin+"/admin/v1/pools", testToken, map[string]any{"server": "pg-1", "capacity": 50})
		require.Equal(b, http.StatusCreated, status, pool)
		for i := range 20 {
			status, tenant := call(b, "POST", f.admin+"/admin/v1/tenants", testToken, map[string]any{"slug": fmt.Sprintf("small-%02d", i), "name": "small", "plan": "free"})
			require.Equal(b, http.StatusCreated, status, tenant)
		}
		conn, err := connect(b, f.servers["pg-1"].DSN(pool["name"].(string)))
		require.NoError(b, err)
		_, err = conn.Exec(ctx, `INSERT INTO users (tenant_id, email) SELECT t, 'bulk-' || g || '@example.com' FROM generate_series(1, 1000) g,
			unnest($1::uuid[]) t`, tenantIDs(b, f))
		require.NoError(b, err)
		conn.Close(ctx)
		status, target := call(b, "POST", f.admin+"/admin/v1/pools", testToken, map[string]any{"server": "pg-2", "capacity": 50})
		require.Equal(b, http.StatusCreated, status, target)

		b.ResetTimer()
		start := time.Now()
		status, e := call(b, "POST", f.admin+"/admin/v1/servers/pg-1/drain", testToken,
			map[string]any{"evacuate": true, "concurrency": 4, "per_server": 4})
		require.Equal(b, http.StatusAccepted, status, e)
		e = f.waitEvacuation(b, e["id"], 5*time.Minute, finished)
		took := time.Since(start)
		b.StopTimer()
		require.Equal(b, "done", e["state"], e)
		require.EqualValues(b, 20, e["moved"], e)
		var pauses []float64
		_, page := call(b, "GET", f.admin+"/admin/v1/moves?limit=100", testToken, nil)
		for _, m := range page["moves"].([]any) {
			m := m.(map[string]any)
			require.Equal(b, "repool", m["kind"])
			require.Equal(b, "copy", m["mode"])
			pauses = append(pauses, m["write_pause_ms"].(float64))
		}
		require.Len(b, pauses, 20)
		slices.Sort(pauses)
		b.Logf("evacuation of 20 pooled tenants (1,000 rows each) from one pool: %v; write pause median %v ms, longest %v ms",
			took.Round(time.Millisecond), pauses[len(pauses)/2], pauses[len(pauses)-1])
		b.ReportMetric(took.Seconds(), "evacuation-s")
		b.ReportMetric(pauses[len(pauses)-1], "max-write-pause-ms")
		b.ReportMetric(pauses[len(pauses)/2], "p50-write-pause-ms")
	}
}

// tenantIDs is every tenant's id.
func tenantIDs(b *testing.B, f *fleet) []string {
	_, page := call(b, "GET", f.admin+"/admin/v1/tenants?limit=100", testToken, nil)
	var ids []string
	for _, t := range page["tenants"].([]any) {
		ids = append(ids, t.(map[string]any)["id"].(string))
	}
	return ids
}
