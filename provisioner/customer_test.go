package provisioner

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
)

// testCustomers is the provisioner's Customers as a test sees it: each call
// records the tenant and the state the catalog had it in at that moment,
// and fail, when set, decides the call's outcome (n counts calls from 1).
// Billing's implementation is tested against stripe-mock (billing and
// controlplane tests); here it is the provisioner's use of it that counts.
type testCustomers struct {
	store *catalog.Store
	fail  func(n int) error

	mu    sync.Mutex
	calls []customerCall
}

type customerCall struct {
	TenantID string
	State    catalog.TenantState // the tenant's state in the catalog when called
}

func (c *testCustomers) EnsureCustomer(ctx context.Context, t catalog.Tenant) error {
	now, err := c.store.GetTenantByID(ctx, t.ID)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.calls = append(c.calls, customerCall{TenantID: t.ID, State: now.State})
	n := len(c.calls)
	c.mu.Unlock()
	if c.fail != nil {
		return c.fail(n)
	}
	return nil
}

func (c *testCustomers) callsFor(tenantID string) []customerCall {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []customerCall
	for _, call := range c.calls {
		if call.TenantID == tenantID {
			out = append(out, call)
		}
	}
	return out
}

// auditActions lists a tenant's audit actions, oldest first.
func auditActions(t *testing.T, store *catalog.Store, tenantID string) []string {
	t.Helper()
	events, err := store.ListAudit(context.Background(), catalog.AuditFilter{TenantID: tenantID})
	require.NoError(t, err)
	var out []string
	for _, e := range events {
		out = append(out, e.Action)
	}
	return out
}

// TestProvisioningEnsuresTheCustomerBeforeActivation: with Customers set,
// each tenant's customer is ensured once, while it is still provisioning,
// on the template path and from the warm pool alike; the audit trail is
// what it was without it.
func TestProvisioningEnsuresTheCustomerBeforeActivation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		warm int
	}{{"template", -1}, {"warm pool", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := context.Background()
			customers := &testCustomers{store: b.store}
			cfg := b.cfg
			cfg.WarmPoolSize, cfg.Customers = tc.warm, customers
			var reached []string
			var mu sync.Mutex
			cfg.afterStep = func(_ context.Context, _, step string) error {
				mu.Lock()
				defer mu.Unlock()
				reached = append(reached, step)
				return nil
			}
			p := b.start(t, cfg)
			if tc.warm > 0 {
				require.Eventually(t, func() bool { return len(warmDatabases(t, b)) == tc.warm },
					30*time.Second, 20*time.Millisecond, "the warm pool never filled")
			}

			tenant, _, err := p.CreateTenant(ctx, TenantSpec{Slug: "billed", Plan: "basic"}, "test")
			require.NoError(t, err)
			waitState(t, b.store, "billed", catalog.TenantActive)

			require.Equal(t, []customerCall{{TenantID: tenant.ID, State: catalog.TenantProvisioning}}, customers.callsFor(tenant.ID),
				"the customer is ensured once, before the tenant is active")
			mu.Lock()
			want := []string{"picked", "role", "database", "schema", "customer"}
			if tc.warm > 0 {
				want = []string{"picked", "customer"} // the warm database needs no role, database or schema step
			}
			require.Equal(t, want, reached)
			mu.Unlock()
			require.Equal(t, []string{"tenant.created", "tenant.activated"}, auditActions(t, b.store, tenant.ID))
		})
	}
}

// TestCustomerFailureFailsTheTenant: a failed customer step fails the
// tenant like any failed step (the reason in last_error and the audit
// log, the job done: no retry hammers the billing provider), and the
// operator's retry finishes it, ensuring the customer again.
func TestCustomerFailureFailsTheTenant(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	customers := &testCustomers{store: b.store, fail: func(n int) error {
		if n == 1 {
			return errors.New("customer.create: Stripe answered 500: an outage")
		}
		return nil
	}}
	cfg := b.cfg
	cfg.Customers = customers
	p := b.start(t, cfg)

	tenant, _, err := p.CreateTenant(ctx, TenantSpec{Slug: "unbilled", Plan: "basic"}, "test")
	require.NoError(t, err)
	failed := waitState(t, b.store, "unbilled", catalog.TenantFailed)
	const reason = "provision failed: creating the billing customer: customer.create: Stripe answered 500: an outage"
	require.Equal(t, reason, failed.LastError)
	events, err := b.store.ListAudit(ctx, catalog.AuditFilter{TenantID: tenant.ID, Action: "tenant.failed"})
	require.NoError(t, err)
	require.Len(t, events, 1)
	require.Equal(t, reason, events[0].Reason)
	require.Eventually(t, func() bool { return provisionJob(t, b.store, tenant.ID).State == "completed" },
		10*time.Second, 20*time.Millisecond, "a failed tenant's job is done: the operator retries it")
	require.Len(t, customers.callsFor(tenant.ID), 1)

	_, err = p.Retry(ctx, "unbilled", "test", "the outage is over")
	require.NoError(t, err)
	active := waitState(t, b.store, "unbilled", catalog.TenantActive)
	require.Empty(t, active.LastError)
	require.Equal(t, []customerCall{
		{TenantID: tenant.ID, State: catalog.TenantProvisioning},
		{TenantID: tenant.ID, State: catalog.TenantProvisioning},
	}, customers.callsFor(tenant.ID))
	require.Equal(t, []string{"tenant.created", "tenant.failed", "tenant.retried", "tenant.activated"}, auditActions(t, b.store, tenant.ID))
	dbs, roles := serverObjects(t, b)
	require.Equal(t, []string{active.Database}, dbs)
	require.Equal(t, []string{active.Role}, roles)
}

// TestCrashAroundTheCustomerStepIsFinishedAfterRestart stops a provisioner
// right before the customer step (after "schema") and right after it
// ("customer": the customer made, the tenant not yet active), and shows a
// restarted one finishes both tenants, activated once each, ensuring the
// customer again (which the implementation answers from what it stored).
func TestCrashAroundTheCustomerStepIsFinishedAfterRestart(t *testing.T) {
	t.Parallel()
	b := setup(t)
	steps := []string{"schema", "customer"}
	customers := &testCustomers{store: b.store}

	crashing := b.cfg
	crashing.WarmPoolSize, crashing.Customers = -1, customers
	ids := stopMidProvisioning(t, b, crashing, steps)
	require.Empty(t, customers.callsFor(ids["schema"]), "stopped before the customer step")
	require.Len(t, customers.callsFor(ids["customer"]), 1, "stopped after the customer step")

	restart := b.cfg
	restart.Customers = customers
	b.start(t, restart)
	for _, step := range steps {
		tenant := waitState(t, b.store, "crash-after-"+step, catalog.TenantActive)
		for _, call := range customers.callsFor(tenant.ID) {
			require.Equal(t, catalog.TenantProvisioning, call.State, "%s: ensured before activation", step)
		}
		require.Equal(t, []string{"tenant.created", "tenant.activated"}, auditActions(t, b.store, tenant.ID), step)
	}
	require.Len(t, customers.callsFor(ids["schema"]), 1, "the restart ensures the customer")
	require.Len(t, customers.callsFor(ids["customer"]), 2, "the restart ensures it again, which finds it made")
	dbs, roles := serverObjects(t, b)
	require.Len(t, dbs, len(steps))
	require.Len(t, roles, len(steps))
}

// warmDatabases lists the warm pool's databases on the test's server.
func warmDatabases(t *testing.T, b *testBundle) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, b.server.DSN("postgres"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1`, warmPrefix)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}
