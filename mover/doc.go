// Package mover moves a tenant's database from one PostgreSQL server to
// another: the data path and the checks of a move, as functions over
// connections to the source and the target database, each reached as its
// server's admin role (the role that owns the tenant's database and tables
// and, on a managed server, has no more than CREATEDB and CREATEROLE).
//
// The Service (service.go, workflow.go, store.go) drives moves: StartMove
// records a move in the catalog's moves ledger and sets tenants.move_id in
// the transaction that queues its one River job (kind tenantplane.move,
// unique by move id); Get, List, Cancel and Revert read and steer it. The
// job holds the source database's golang-migrate advisory lock for its whole
// run (no fan-out migration mid-move, and no second run of the move), and
// takes the move through its phases, each recorded and idempotent, so a
// process killed anywhere is resumed or rolled back by the next run:
//
//   - pending: Targets.PrepareTarget (the provisioner) makes the tenant's
//     role and an empty database on the target at the version the source
//     database reports;
//   - online mode: copying (OpenStreamConfig, Copy under the slot's
//     snapshot), catching_up (Stream.CatchUp until the lag is under
//     Config.CatchUpLag), then the hold and the fence, the last catch-up to
//     the fenced source's WAL and SyncSequences; copy mode: the hold and the
//     fence first (fenced), then Copy (copying);
//   - the hold: tenants.held and a NOTIFY, so every router replica holds the
//     tenant's requests, at most Config.HoldWait for its transactions in
//     flight, then Fence; its start is the move's fenced_at;
//   - verifying: Verify under the fence; a difference aborts the move
//     (Unfence, hold lifted, target dropped, last_error naming it). An
//     online move verified every row before, right after its copy, against
//     the slot's snapshot (VerifyOptions.SourceSnapshot), so its fence
//     hashes only the rows its stream wrote (VerifyOptions.Changed, the
//     stream's ChangeSet), with every table's count: unless the set
//     overflowed or the run resumed, then every row;
//   - switched: one catalog transaction moves the tenant to the target,
//     lifts the hold, records write_pause_ms and keep_until, NOTIFYs the
//     routers and schedules the job that drops the kept source at
//     keep_until (and, where the source is kept in step, the keep's job);
//     then done.
//
// A process killed in any phase (SIGKILL included) leaves its job to the
// next process whose job client sees it has stopped beating (internal/jobs):
// that run goes on from the recorded phase, and TestMoveKilledInEachPhase
// shows every phase of an online move, and a copy move's copying, ending
// done with nothing left behind, and a move cancelled meanwhile rolled back.
// A kill that leaves the tenant held holds its requests until then.
//
// Cancel (before the switch) aborts the move at its next phase; Revert (a
// done move, within its keep) starts a move back onto the kept source,
// after which the original is reverted. Where the target server can
// stream (keep.go), the kept source is kept in step: a slot named like the
// move on the target, made before the hold and started at the switch, and a
// durable job (kind tenantplane.move_keep) applying the tenant's writes to
// the fenced source with the Stream, each transaction with its position
// and the keys it wrote in a ledger in the kept source (schema
// tenantplane_keep), so a restarted keep neither skips nor repeats one. A
// revert of such a move (revert.go) catches up over that slot, fences,
// verifies the rows written since the move with every table's count, and
// switches back without copying; otherwise the revert copies back every
// row. The functions below are what the phases call; each works on its own
// too:
//
//   - copying (copy.go, tables.go, sequences.go): Copy streams every user
//     table of schema public (Tables: all but schema_migrations, in
//     foreign-key order) from the source's COPY TO into the target's COPY
//     FROM, under one REPEATABLE READ snapshot of the source and in one
//     transaction on the target, reporting rows and bytes per table, then
//     moves the target's sequences up to the source's (SyncSequences). The
//     caller has built the target with the tenant migrations at the tenant's
//     version; Copy refuses one whose tables differ (*SchemaMismatchError).
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
//     CheckOnline also reports an unbounded max_slot_wal_keep_size
//     (UnboundedSlotWAL), which the move names in its mode_reason, as it
//     cannot set it; a slot whose wal_status becomes lost or unreserved
//     aborts the move (*SlotLostError).
//   - leftovers (leftovers.go): Service.Leftovers finds, and with remove
//     drops, the replication slots, publications and subscriptions named
//     like a move's (tenantplane_move_<id>) that no open move owns, on every
//     server; the admin API's orphans list them with the provisioner's.
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
//
// Use:
//
//	svc, err := mover.New(store, mover.Config{Jobs: reg, Targets: prov, Keep: 24 * time.Hour})
//	m, err := svc.StartMove(ctx, "acme", mover.MoveSpec{To: "pg-2"}, "operator") // 202
//	m, err = svc.Get(ctx, m.ID) // phase, rows and bytes copied, lag, write_pause_ms
//	m, err = svc.Revert(ctx, m.ID, "operator") // within the keep
//
// Fleet operations (evacuation.go, rebalance.go) compose StartMove:
// Evacuate moves every tenant off a server, and StartRebalance carries out
// PlanRebalance's moves, each as an evacuations ledger row with a row per
// tenant, driven by one durable job that settles the moves that ended and
// starts new ones within its bounds (concurrency, per target server, never
// past a target's capacity), under the row's lock, so PauseEvacuation and
// CancelEvacuation take effect as they answer.
//
//	e, err := svc.Evacuate(ctx, "pg-1", mover.EvacuationSpec{Concurrency: 4, PerServer: 2, Mode: mover.ModeCopy}, "operator")
//	e, err = svc.GetEvacuation(ctx, e.ID) // counts, each tenant with its move and error
//	plan, err := svc.PlanRebalance(ctx) // moves, per-server scores and the spread before and after
//
// A run of an online move that dies once its copy is verified leaves its
// slot on the source and its stream's ledger on the target (resume.go):
// the next run opens the slot again from the ledger's position instead of
// copying again, and its fence verifies the rows the ledger names.
//
// Tiers (tier.go): StartPromotion and StartDemotion are moves of one
// tenant's rows (moves.kind promote or demote, moves.pool_id the pool
// database) between a pool database and a database of the tenant's own,
// online when the servers allow it (OpenTenantStream: the publication has a
// row filter on tenant_id, so the slot streams that tenant's changes only;
// PostgreSQL 15 on the source), else in the copy mode. Copy and Verify with
// TenantID read and compare only the
// tenant's rows (CopyOptions.SharedTarget keeps a pool database's other
// rows and indexes and loads through a temporary table, since COPY FROM
// refuses a table whose row-level security applies to the role); a pool
// database's fence is FenceTenantRows, a restrictive policy per table that
// refuses the tenant's rows to the pool's role, taken under the tables'
// locks. After the keep, a promotion's rows are deleted from the pool and a
// demotion's database dropped. Revert takes one back, while its source is
// kept, by the opposite change into that source (revertTier), copying the
// tenant's rows. ChangePlan gives a tenant another plan: at once within its
// tier (catalog.Store.SetTenantPlan), else by a promotion or demotion that
// carries the plan (moves.plan, moves.from_plan): the tenant takes it in
// the switch's transaction, and a revert puts the old one back.
//
//	t, m, err := svc.ChangePlan(ctx, "acme", "pro", "operator") // m nil: applied at once
//
// Not built yet: the native-subscription apply (ApplySubscription: the
// online mode always applies the stream itself), a copy-back revert's
// verify outside the fence, a keep that follows a schema change (a
// migration ends the keep); a move killed while copying copies again. Copy loads tables
// into their indexes as they are (pg_restore builds indexes after the data,
// which is faster for large tables) and one table at a time; partitioned
// tables' foreign keys do not order their partitions.
package mover
