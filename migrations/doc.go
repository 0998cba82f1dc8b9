// Package migrations is the tenant schema: the golang-migrate SQL files every
// tenant database is built from, embedded in the binary, and the migrator
// that applies them. A directory given at run time
// (TENANTPLANE_TENANT_MIGRATIONS) replaces the embedded set.
//
//	src, err := migrations.Load(os.Getenv("TENANTPLANE_TENANT_MIGRATIONS")) // "" = embedded
//	fmt.Println(src.Latest(), src.Hash())
//
// Migrate takes one tenant database to a version, a step per transaction
// (each file commits with the version it records), under golang-migrate's
// advisory lock; the provisioner builds its templates with it and fan-out
// migrates tenant databases with it. Force clears a dirty database's flag
// after an operator's repair.
//
//	conn, err := pgx.ParseConfig(adminDSN) // the server's admin role
//	conn.Database = "t_0123"
//	out, err := migrations.Migrate(ctx, conn, src, src.Latest(), migrations.Limits{})
package migrations
