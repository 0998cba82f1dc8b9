// Package catalog is tenantplane's source of truth: the catalog database that maps
// tenants to their own databases on a fleet of PostgreSQL servers.
//
// It owns the catalog schema (golang-migrate SQL files embedded in migrations/),
// a typed store over pgx, the error categories every other package uses, and the
// cipher that keeps credentials encrypted at rest. It imports none of the
// project's other packages; everything else imports it.
//
//	if err := catalog.Migrate(ctx, dsn); err != nil { ... }
//	key, _ := catalog.ParseKey(os.Getenv("TENANTPLANE_SECRET_KEY"))
//	cipher, _ := catalog.NewCipher(key)
//	store, err := catalog.Open(ctx, dsn, cipher)
//	defer store.Close()
//	srv, err := store.CreateServer(ctx, catalog.NewServer{Name: "pg-1", DSN: dsn, Capacity: 500})
package catalog
