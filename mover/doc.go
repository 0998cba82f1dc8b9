// Package mover moves a tenant's database from one PostgreSQL server to
// another: the data path and the checks of a move, as functions over
// connections to the source and the target database, each reached as its
// server's admin role (the role that owns the tenant's database and tables
// and, on a managed server, has no more than CREATEDB and CREATEROLE).
//
// A move goes through phases; the move's ledger and durable jobs (not built
// yet) drive them, calling what this package gives for each:
//
//   - copying (copy.go, tables.go, sequences.go): Copy streams every user
//     table of schema public (Tables: all but schema_migrations, in
//     foreign-key order) from the source's COPY TO into the target's COPY
//     FROM, under one REPEATABLE READ snapshot of the source and in one
//     transaction on the target, reporting rows and bytes per table, then
//     moves the target's sequences up to the source's (SyncSequences). The
//     caller has built the target with the tenant migrations at the tenant's
//     version; Copy refuses one whose tables differ (*SchemaMismatchError).
//     In the "copy" mode the source is fenced for the whole copy.
//   - catching up (preflight.go, stream.go): CheckOnline says whether the online mode,
//     logical replication from source to target, can run between two servers
//     (wal_level = logical, a replication privilege for the source role,
//     replica identity on every table) and how the target would apply the
//     changes (ApplySubscription or ApplyStream), or names what stands in the
//     way. For ApplyStream, OpenStream creates a publication of the tenant's
//     tables and a pgoutput slot with an exported snapshot; Copy reads under
//     that snapshot (CopyOptions.Snapshot); Stream.CatchUp applies the
//     changes since on the target by primary key, one source transaction per
//     target transaction, up to a given LSN (CurrentLSN once fenced),
//     reporting the lag; DropStream removes the slot and publication.
//   - fenced (fence.go): Fence makes the source refuse the tenant at the
//     database (CONNECT revoked, the tenant role's sessions terminated and
//     waited for), so that no write lands there from any replica of
//     tenantplane or a stray client; Unfence undoes it when a move is aborted
//     or reverted.
//   - verifying (verify.go): Verify compares both sides table by table (row
//     count and an order-independent hash of the rows, as pgcopydb's compare
//     data does), the sequences (the target's at or past the source's) and
//     the schema version. A difference is a *MismatchError (errors.Is
//     ErrMismatch) whose sentences an operator can read: "table users: 1000
//     rows on the source, 999 on the target". A move aborts on it.
//   - switched: the catalog flip and the routers' release of held requests
//     belong to the wiring, not to this package; after it, the source is kept
//     fenced for the grace period so that a revert (Unfence, and a copy or a
//     stream the other way) loses nothing.
//
// A move in the copy mode, in the order the workflow calls it:
//
//	check, err := mover.CheckOnline(ctx, sourceDB, targetServer) // online or copy, with the reason
//	err = mover.Fence(ctx, sourceServer, database, role)         // copy mode: writes held from here
//	res, err := mover.Copy(ctx, sourceDB, targetDB, mover.CopyOptions{Progress: report})
//	vr, err := mover.Verify(ctx, sourceDB, targetDB)             // on a mismatch: Unfence, drop the target
//	// flip the catalog to the target; keep the fenced source for the grace period
//
// Not built yet: the native-subscription apply (ApplySubscription), a
// stream that resumes from its slot after a restart (CatchUp starts at the
// slot's consistent point, once per Stream), max_slot_wal_keep_size guards,
// the reverse stream that keeps a source in step for a revert, the move
// ledger and its jobs, the catalog flip, the cleanup of the source and of
// leftover replication objects, evacuation and rebalancing. Copy
// loads tables into their indexes as they are (pg_restore builds indexes
// after the data, which is faster for large tables) and one table at a
// time; partitioned tables' foreign keys do not order their partitions.
package mover
