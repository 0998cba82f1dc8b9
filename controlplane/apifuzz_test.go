package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/apifuzz"
	"github.com/tenantplane/tenantplane/internal/faulttest"
	"github.com/tenantplane/tenantplane/router"
)

// fuzzBundle is a running App with what the fuzzer's valid requests name.
type fuzzBundle struct {
	*fleet
	key      string              // fuzz-a's API key
	userIDs  []string            // users of fuzz-a
	eventsID string              // the tenant only usage events are posted for
	params   map[string][]string // path parameter values that exist
}

func setupFuzz(t testing.TB) *fuzzBundle {
	t.Helper()
	f := setupFleet(t, 1, map[string]string{"STRIPE_WEBHOOK_SECRET": "whsec_fuzz_0123456789"})
	_, key := f.tenantWithKey(t, "fuzz-a", "enterprise", "")
	f.tenantWithKey(t, "fuzz-b", "pro", "")
	events, _ := f.tenantWithKey(t, "events-only", "pro", "")
	b := &fuzzBundle{fleet: f, key: key, eventsID: events["id"].(string)}
	for i := range 3 {
		status, u := call(t, "POST", f.api+"/v1/users", key, map[string]any{"email": fmt.Sprintf("f%d@example.com", i), "name": "f"})
		require.Equal(t, http.StatusCreated, status, u)
		b.userIDs = append(b.userIDs, u["id"].(string))
	}
	_, keys := call(t, "GET", f.admin+"/admin/v1/tenants/fuzz-a/keys", testToken, nil)
	var keyIDs []string
	for _, k := range keys["keys"].([]any) {
		keyIDs = append(keyIDs, k.(map[string]any)["id"].(string))
	}
	b.params = map[string][]string{
		"slug": {"fuzz-a", "fuzz-b"}, "name": {"pg-1", "pro", "basic"}, "hostname": {"api.fuzz.test"},
		"key_id": keyIDs, "id": append(keyIDs, "1", "2"),
	}
	return b
}

// targets are both APIs, the tenant API's first (the admin API's fuzz may
// suspend or delete the tenants it uses).
func (b *fuzzBundle) targets() []apifuzz.Target {
	return []apifuzz.Target{{
		Name: "tenant", Doc: router.OpenAPIDocument(), BaseURL: b.api,
		Header: func(_ string, req *http.Request) { req.Header.Set("Authorization", "Bearer "+b.key) },
		Param: func(_, name string) []string {
			if name == "id" {
				return b.userIDs
			}
			return nil
		},
	}, {
		Name: "admin", Doc: openAPI, BaseURL: b.admin,
		Header: func(_ string, req *http.Request) { req.Header.Set("Authorization", "Bearer "+testToken) },
		Param:  func(_, name string) []string { return b.params[name] },
		Fix:    b.fix,
	}}
}

// fix keeps generated bodies on loopback and on the tenants the invariants read.
func (b *fuzzBundle) fix(op string, body any) any {
	switch op {
	case "POST /admin/v1/servers":
		if m, ok := body.(map[string]any); ok {
			// Nothing listens there: registration fails, fast, on loopback.
			m["dsn"] = "postgres://fuzz:fuzz@127.0.0.1:1/postgres?connect_timeout=2"
		}
	case "POST /admin/v1/usage/events":
		if events, ok := body.([]any); ok {
			for _, e := range events {
				if m, ok := e.(map[string]any); ok {
					m["tenant"] = "events-only"
					m["meter"] = catalog.MeterAPICalls
					m["timestamp"] = time.Now().UTC().Add(-time.Minute).Format(time.RFC3339)
				}
			}
		}
	}
	return body
}

// fuzz runs both targets and fails the test on any finding, then checks the
// catalog's invariants.
func (b *fuzzBundle) fuzz(t testing.TB, seed uint64, perOp int) {
	t.Helper()
	ctx := context.Background()
	for _, tgt := range b.targets() {
		rep, err := apifuzz.Run(ctx, tgt, apifuzz.Config{Seed: seed, PerOperation: perOp})
		require.NoError(t, err)
		t.Logf("%s API: %d requests, by status %v", tgt.Name, rep.Requests, rep.ByStatus)
		for _, f := range rep.Findings {
			t.Errorf("%s API, seed %d: %s", tgt.Name, seed, f)
		}
	}
	b.checkInvariants(t)
}

// checkInvariants: every tenant settles (none left provisioning), nothing
// is orphaned, each usage event accepted is counted once, and the hourly
// usage adds up to the monthly totals.
func (b *fuzzBundle) checkInvariants(t testing.TB) {
	t.Helper()
	dsn := b.app.cfg.DatabaseURL
	require.Eventually(t, func() bool {
		return query[int64](t, dsn, `SELECT count(*) FROM tenants WHERE state = 'provisioning'`) == 0
	}, 90*time.Second, 200*time.Millisecond, "every tenant settles")
	status, body := call(t, "GET", b.admin+"/admin/v1/orphans", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Empty(t, body["orphans"], "nothing orphaned")
	// events-only's key never reached the tenant API: its api_calls are its events.
	require.Eventually(t, func() bool {
		return query[int64](t, dsn, `SELECT coalesce(sum(quantity), 0) FROM usage_periods WHERE tenant_id = $1 AND meter = 'api_calls'`, b.eventsID) ==
			query[int64](t, dsn, `SELECT coalesce(sum(quantity), 0) FROM usage_events WHERE tenant_id = $1`, b.eventsID)
	}, 10*time.Second, 100*time.Millisecond, "each accepted usage event counted once")
	require.Zero(t, query[int64](t, dsn, `
		SELECT count(*) FROM usage_periods p
		JOIN meters m ON m.name = p.meter AND m.aggregation = 'sum'
		WHERE p.quantity <> (SELECT coalesce(sum(u.quantity), 0) FROM usage u
			WHERE u.tenant_id = p.tenant_id AND u.meter = p.meter
			AND u.bucket >= p.period AND u.bucket < p.period + interval '1 month')`), "hourly usage adds up to the monthly totals")
}

// TestAPIFuzz sends both APIs a short seeded pass of valid and broken
// requests built from their OpenAPI documents (internal/apifuzz): no 5xx,
// no answer the document does not describe, the catalog's invariants hold
// after. make bench runs a long pass (BenchmarkAPIFuzz).
func TestAPIFuzz(t *testing.T) {
	t.Parallel()
	seed := faulttest.Seed(t)
	b := setupFuzz(t)
	b.fuzz(t, seed, 6)
}

// BenchmarkAPIFuzz is the long pass: TENANTPLANE_FUZZ_PER_OP requests per
// operation (default 150).
func BenchmarkAPIFuzz(b *testing.B) {
	perOp := faulttest.EnvInt(b, "TENANTPLANE_FUZZ_PER_OP", 150)
	seed := faulttest.Seed(b)
	f := setupFuzz(b)
	for b.Loop() {
		f.fuzz(b, seed, perOp)
	}
}
