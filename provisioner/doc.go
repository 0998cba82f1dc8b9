// Package provisioner manages tenant databases on a fleet of PostgreSQL
// servers: it registers servers, and creates, migrates, suspends and deletes
// the database and login role of each tenant.
//
// It works through the catalog (the source of truth) and talks to each
// server with that server's admin DSN, which needs CREATEDB and CREATEROLE
// but not superuser.
//
//	p := provisioner.New(store, provisioner.Config{Logger: logger})
//	srv, err := p.RegisterServer(ctx, provisioner.ServerSpec{Name: "pg-1", DSN: dsn, Capacity: 500})
package provisioner
