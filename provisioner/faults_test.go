package provisioner

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/faulttest"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// TestProvisioningUnderNetworkFaults provisions a tenant on a server whose
// wire carries each network fault in turn (latency, a hang, resets, a slow
// bandwidth, a sliced stream), and one on a healthy server meanwhile: the
// healthy server's tenant is made whatever happens; a slowed wire still
// makes its tenant; a hung or resetting one fails it, within the server
// timeout, with an error naming the server and what went wrong; once the
// wire is clean again a retry makes it. After every round nothing is
// orphaned on either server. It runs alone: it checks that no goroutine is
// left running once the provisioner has stopped.
func TestProvisioningUnderNetworkFaults(t *testing.T) {
	pgtest.Shared(t)
	faulttest.VerifyNoLeaks(t)
	_ = faulttest.Seed(t) // the schedule is fixed; the seed is printed for the record
	b := setup(t)         // pg-1: healthy
	ctx := context.Background()
	faulty := pgtest.NewServer(t)
	proxy := faulttest.NewProxy(t, "pg-faulty", faulty.Addr())
	cfg := b.cfg
	cfg.WarmPoolSize, cfg.ServerTimeout, cfg.ConnectTimeout = -1, 4*time.Second, 2*time.Second
	p := b.start(t, cfg)
	_, err := p.RegisterServer(ctx, ServerSpec{Name: "pg-faulty", DSN: proxy.DSN(faulty.ManagedDSN(t, "postgres"))}, "test")
	require.NoError(t, err)
	// Each server's template is built before the faults: a first tenant each.
	for _, server := range []string{"pg-1", "pg-faulty"} {
		tn, _, err := p.CreateTenant(ctx, TenantSpec{Slug: "first-on-" + server, Plan: "basic", Server: server}, "test")
		require.NoError(t, err)
		tn, err = p.WaitSettled(ctx, tn.Slug)
		require.NoError(t, err)
		require.Equal(t, catalog.TenantActive, tn.State, tn.LastError)
	}

	for _, fault := range faulttest.Each() {
		remove := proxy.Add(t, fault)
		onFaulty, _, err := p.CreateTenant(ctx, TenantSpec{Slug: "faulty-" + fault.Name, Plan: "basic", Server: "pg-faulty"}, "test")
		require.NoError(t, err)
		onHealthy, _, err := p.CreateTenant(ctx, TenantSpec{Slug: "healthy-" + fault.Name, Plan: "basic", Server: "pg-1"}, "test")
		require.NoError(t, err)
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		healthy, err := p.WaitSettled(wctx, onHealthy.Slug)
		require.NoError(t, err)
		require.Equal(t, catalog.TenantActive, healthy.State, "%s on the other server: %s", fault.Name, healthy.LastError)
		start := time.Now()
		got, err := p.WaitSettled(wctx, onFaulty.Slug)
		cancel()
		require.NoError(t, err, "%s: the tenant settles", fault.Name)
		t.Logf("%s: the tenant on the faulty server is %s after %v: %s", fault.Name, got.State, time.Since(start).Round(time.Millisecond), got.LastError)
		switch fault.Name {
		case "hang", "reset":
			require.Equal(t, catalog.TenantFailed, got.State, fault.Name)
			require.Contains(t, got.LastError, "pg-faulty", "%s: the error names the server", fault.Name)
			want := map[string]string{"hang": "did not answer within 4s", "reset": "the connection was lost"}[fault.Name]
			require.Contains(t, got.LastError, want, "%s: the error says what went wrong", fault.Name)
			remove()
			_, err = p.Retry(ctx, got.Slug, "test", "the wire is clean again")
			require.NoError(t, err)
			wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			got, err = p.WaitSettled(wctx, got.Slug)
			cancel()
			require.NoError(t, err)
			require.Equal(t, catalog.TenantActive, got.State, "%s: retried once the wire is clean: %s", fault.Name, got.LastError)
		default:
			require.Equal(t, catalog.TenantActive, got.State, "%s: a slow wire still makes the tenant: %s", fault.Name, got.LastError)
			remove()
		}
		orphans, err := p.Reconcile(ctx, false)
		require.NoError(t, err)
		var found []string
		for _, o := range orphans {
			found = append(found, fmt.Sprintf("%s %s %s (%s)", o.Server, o.Kind, o.Name, o.Why))
		}
		require.Empty(t, found, "%s: nothing orphaned:\n%s", fault.Name, strings.Join(found, "\n"))
	}
}
