// Package migrations is the tenant schema: the golang-migrate SQL files every
// tenant database is built from, embedded in the binary. A directory given at
// run time (TENANTPLANE_TENANT_MIGRATIONS) replaces the embedded set.
//
//	src, err := migrations.Load(os.Getenv("TENANTPLANE_TENANT_MIGRATIONS")) // "" = embedded
//	fmt.Println(src.Latest(), src.Hash())
package migrations
