package provisioner_test

import (
	"context"
	"fmt"
	"log"
	"testing"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/provisioner"
)

// A provisioner on its own: a catalog, one tenant server, one tenant. In
// tenantplane, controlplane does this, and passes the process's one job
// registry (Config.Jobs); here the provisioner makes and runs its own.
func Example() {
	ctx := context.Background()
	tb := &exampleTB{}
	defer tb.cleanup()

	// The catalog, and a tenant server whose admin role has CREATEDB and
	// CREATEROLE, not superuser (the test harness gives both).
	catalogDSN := pgtest.NewDB(tb, pgtest.WithTemplate("catalog-"+pgtest.HashFS(catalog.Migrations()), catalog.Migrate))
	serverDSN := pgtest.Shared(tb).ManagedDSN(tb, "postgres")

	key, err := catalog.ParseKey(catalog.NewKey()) // TENANTPLANE_SECRET_KEY in tenantplane
	if err != nil {
		log.Fatal(err)
	}
	cipher, err := catalog.NewCipher(key)
	if err != nil {
		log.Fatal(err)
	}
	store, err := catalog.Open(ctx, catalogDSN, cipher, catalog.StoreConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()

	p, err := provisioner.New(store, provisioner.Config{WarmPoolSize: -1})
	if err != nil {
		log.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer p.Stop(ctx)

	if _, err := p.RegisterServer(ctx, provisioner.ServerSpec{Name: "pg-1", DSN: serverDSN, Capacity: 500}, "example"); err != nil {
		log.Fatal(err)
	}
	tenant, _, err := p.CreateTenant(ctx, provisioner.TenantSpec{Slug: "acme", Plan: "basic"}, "example")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(tenant.Slug, tenant.State)
	tenant, err = p.WaitSettled(ctx, "acme") // a River job makes the role and the database
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(tenant.Slug, tenant.State, "on", tenant.Server)

	// Output:
	// acme provisioning
	// acme active on pg-1
}

// exampleTB is the little of testing.TB that the harness uses, for an
// example (which has no *testing.T): it fails by panicking and runs the
// harness's cleanups when the example ends.
type exampleTB struct {
	testing.TB // nil: calling anything else panics
	cleanups   []func()
}

func (*exampleTB) Helper()                      {}
func (*exampleTB) Name() string                 { return "Example" }
func (*exampleTB) Failed() bool                 { return false }
func (*exampleTB) Logf(string, ...any)          {}
func (*exampleTB) Log(...any)                   {}
func (*exampleTB) Fatalf(f string, args ...any) { panic(fmt.Sprintf(f, args...)) }
func (*exampleTB) Errorf(f string, args ...any) { panic(fmt.Sprintf(f, args...)) }
func (tb *exampleTB) Cleanup(f func())          { tb.cleanups = append(tb.cleanups, f) }

func (tb *exampleTB) cleanup() {
	for i := len(tb.cleanups) - 1; i >= 0; i-- {
		tb.cleanups[i]()
	}
}
