package controlplane

import (
	"context"
	"net/http"
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
		b.Run(mode, func(b *testing.B) { benchmarkPromotion(b, mode) })
	}
}

func benchmarkPromotion(b *testing.B, mode string) {
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
		status, move := call(b, "POST", f.admin+"/admin/v1/tenants/big/promote", testToken, map[string]any{"to": "pg-2"})
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
		b.Logf("%s: promotion of 100,000 rows under writes: %v in all, write pause %v ms, longest client gap %v, %v rows copied, %d writes acknowledged",
			mode, took.Round(time.Millisecond), move["write_pause_ms"], gap.Round(time.Millisecond), move["rows_copied"], len(acked))
		b.ReportMetric(move["write_pause_ms"].(float64), "write-pause-ms")
		b.ReportMetric(float64(gap.Milliseconds()), "client-gap-ms")
		b.ReportMetric(took.Seconds(), "promotion-s")
	}
}
