package controlplane

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/internal/faulttest"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// soakSample is one sample of the process under soak.
type soakSample struct {
	at         time.Duration
	heap       uint64 // live heap after a GC
	goroutines int
	conns      int64 // tenantplane's connections on the catalog and both servers
}

// BenchmarkSoak runs mixed tenant and admin traffic against one App for
// TENANTPLANE_SOAK (default 10m) while seeded network faults come and go on
// the wires to the catalog and to one of two tenant servers (a fault for 3 s
// out of every 10). Heap, goroutines and open connections are sampled every
// 5 s; their medians over the last quarter must stay within 50 % of the
// first quarter's (goroutines and connections with a slack of 20): flat.
// TENANTPLANE_SOAK_HEAPPROFILE names a file for the heap profile at the end.
//
//	TENANTPLANE_SOAK=10m go test -run '^$' -bench BenchmarkSoak -benchtime 1x -timeout 30m ./controlplane
func BenchmarkSoak(b *testing.B) {
	duration := 10 * time.Minute
	if s := os.Getenv("TENANTPLANE_SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		require.NoError(b, err)
		duration = d
	}
	seed := faulttest.Seed(b)
	r := rand.New(rand.NewPCG(seed, 1))
	catalogProxy, catalogDSN := faulttest.ProxyDSN(b, "catalog", pgtest.NewDB(b))
	f := &fleet{testBundle: setupEnvLogs(b, catalogDSN, map[string]string{"TENANTPLANE_USAGE_FLUSH_INTERVAL": "1s"}, &syncWriter{discard: true}), servers: map[string]*pgtest.Server{}}
	faulty, steady := pgtest.NewServer(b), pgtest.NewServer(b)
	serverProxy := faulttest.NewProxy(b, "pg-faulty", faulty.Addr())
	for name, dsn := range map[string]string{"pg-faulty": serverProxy.DSN(faulty.ManagedDSN(b, "postgres")), "pg-steady": steady.ManagedDSN(b, "postgres")} {
		status, body := call(b, "POST", f.admin+"/admin/v1/servers", testToken, map[string]any{"name": name, "dsn": dsn, "capacity": 100})
		require.Equal(b, http.StatusCreated, status, body)
	}
	var keys []string
	for i := range 8 {
		server := []string{"pg-faulty", "pg-steady"}[i%2]
		_, k := f.tenantWithKey(b, fmt.Sprintf("soak-%d", i), "enterprise", server)
		keys = append(keys, k)
	}
	// conns counts tenantplane's connections on the catalog's cluster and on
	// each tenant server, in that order.
	conns := func() (each [3]int64) {
		for i, dsn := range []string{pgtest.Shared(b).DSN("postgres"), faulty.DSN("postgres"), steady.DSN("postgres")} {
			each[i] = query[int64](b, dsn, `SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'tenantplane%'`)
		}
		return each
	}

	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), duration)
		var requests, errors5xx, ok atomic.Int64
		var wg sync.WaitGroup
		// Tenant traffic: reads and writes on every tenant.
		for w := range 6 {
			wg.Go(func() {
				for i := 0; ctx.Err() == nil; i++ {
					k := keys[(w+i)%len(keys)]
					method, body := "GET", ""
					if i%4 == 0 {
						method, body = "POST", fmt.Sprintf(`{"email": "s%d-%d@example.com"}`, w, i)
					}
					status, _, err := try(method, f.api+"/v1/users?limit=5", k, body)
					requests.Add(1)
					if err == nil && status < 300 {
						ok.Add(1)
					}
					time.Sleep(10 * time.Millisecond)
				}
			})
		}
		// Admin traffic: lists, keys issued and revoked, usage.
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				slug := fmt.Sprintf("soak-%d", i%8)
				for _, path := range []string{"/admin/v1/tenants", "/admin/v1/tenants/" + slug, "/admin/v1/usage", "/admin/v1/servers"} {
					status, _, _ := try("GET", f.admin+path, testToken, "")
					requests.Add(1)
					if status >= 500 && status != http.StatusServiceUnavailable {
						errors5xx.Add(1)
					}
				}
				status, _, _ := try("POST", f.admin+"/admin/v1/tenants/"+slug+"/keys", testToken, "")
				requests.Add(1)
				if status >= 500 && status != http.StatusServiceUnavailable {
					errors5xx.Add(1)
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
		// Faults: 3 s of one, on one wire, out of every 10.
		wg.Go(func() {
			proxies := []*faulttest.Proxy{catalogProxy, serverProxy}
			for ctx.Err() == nil {
				p := proxies[r.IntN(len(proxies))]
				fault := faulttest.Each()[r.IntN(len(faulttest.Each()))]
				remove := p.Add(b, fault)
				select {
				case <-ctx.Done():
				case <-time.After(3 * time.Second):
				}
				remove()
				select {
				case <-ctx.Done():
				case <-time.After(7 * time.Second):
				}
			}
		})
		var samples []soakSample
		start := time.Now()
		tick := time.NewTicker(5 * time.Second)
		for ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-tick.C:
				runtime.GC()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				each := conns()
				s := soakSample{at: time.Since(start), heap: ms.HeapAlloc, goroutines: runtime.NumGoroutine(), conns: each[0] + each[1] + each[2]}
				samples = append(samples, s)
				// To stderr: a benchmark's log keeps only its first ten lines.
				fmt.Fprintf(os.Stderr, "soak %6s heap %6.1f MiB  goroutines %5d  conns %3d (catalog %d, pg-faulty %d, pg-steady %d)  requests %d (%d ok)\n",
					s.at.Round(time.Second), float64(s.heap)/(1<<20), s.goroutines, s.conns, each[0], each[1], each[2], requests.Load(), ok.Load())
			}
		}
		tick.Stop()
		wg.Wait()
		cancel()
		if path := os.Getenv("TENANTPLANE_SOAK_HEAPPROFILE"); path != "" { // what the heap holds at the end
			out, err := os.Create(path)
			require.NoError(b, err)
			runtime.GC()
			require.NoError(b, pprof.WriteHeapProfile(out))
			require.NoError(b, out.Close())
		}
		require.GreaterOrEqual(b, len(samples), 4, "too short a soak to judge: at least 20 s")
		q := len(samples) / 4
		first, last := samples[:q], samples[len(samples)-q:]
		med := func(ss []soakSample, v func(soakSample) float64) float64 {
			xs := make([]float64, len(ss))
			for i, s := range ss {
				xs[i] = v(s)
			}
			slices.Sort(xs)
			return xs[len(xs)/2]
		}
		for _, m := range []struct {
			name  string
			v     func(soakSample) float64
			slack float64
		}{
			{"heap_MiB", func(s soakSample) float64 { return float64(s.heap) / (1 << 20) }, 0},
			{"goroutines", func(s soakSample) float64 { return float64(s.goroutines) }, 20},
			{"conns", func(s soakSample) float64 { return float64(s.conns) }, 20},
		} {
			a, z := med(first, m.v), med(last, m.v)
			b.ReportMetric(a, m.name+"_first")
			b.ReportMetric(z, m.name+"_last")
			if z > a*1.5+m.slack {
				b.Errorf("%s grew over the soak: median %.1f in the first quarter, %.1f in the last", m.name, a, z)
			}
		}
		b.ReportMetric(float64(requests.Load()), "requests")
		b.ReportMetric(float64(ok.Load()), "tenant_2xx")
		require.Zero(b, errors5xx.Load(), "admin calls answered a 5xx other than 503")
	}
}
