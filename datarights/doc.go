// Package datarights carries out what a tenant's data is owed: scheduled
// backups and their restore, exports on request (the right to data
// portability) and erasure with a record of it (the right to erasure).
//
// Backups are pg_dump -Fc of each tenant database, streamed to
// Config.BackupDir, each with its size, SHA-256 and schema version in the
// catalog (backups). Each plan states how often its tenants are backed up
// and how long a backup is kept (plans.backup_interval, backup_retention);
// a tenant's backups fall at a point of that interval of its own (a hash of
// its id), so the fleet's backups are spread over it, and at most
// Config.PerServer run on one server at once. A restore (restores) puts a
// backup into a new tenant, or back into its own tenant with the tenant
// suspended meanwhile. An export (exports) is a zip of one JSON-lines file
// per table, a manifest and, on request, a pg_dump, streamed row by row
// from one snapshot and never held in memory. An erasure (erasures) drops
// the tenant's database and role on every server, removes its backups,
// exports, archives, API keys and Stripe customer, keeps what tax law needs
// (invoices, usage totals), and records what it removed with the hashes of
// the files. The tenant row stays, as the tombstone of its slug.
//
// Backups, restores and exports are River jobs of the process's one job
// client (Config.Jobs), inserted in the transaction that records them. The
// package talks to other rooms through small interfaces that controlplane
// wires: Tenants (the provisioner: make and drop databases, suspend and
// resume) and Customers (billing: the tenant's Stripe customer).
package datarights
