// Package provisioner manages tenant databases on a fleet of PostgreSQL
// servers: it registers servers, and creates, suspends and deletes the
// database and login role of each tenant, from a template database at the
// newest tenant schema (built with migrations.Migrate) or a warm pool of
// ready clones.
//
// It works through the catalog (the source of truth) and talks to each
// server with that server's admin DSN, which needs CREATEDB and CREATEROLE
// but not superuser. Its work is durable: each tenant's provisioning and
// deletion is a River job, registered into the process's one job client
// (Config.Jobs) and inserted in the transaction of the change that asks
// for it. See Example for a provisioner that runs on its own.
//
// Migration runs over the tenant databases are package fanout's.
package provisioner
