package fanout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/stall"
	"github.com/tenantplane/tenantplane/migrations"
)

// Migration fan-out: a run takes every tenant database (or a named subset)
// to one version of the tenant schema.
//
// The run and one row per tenant live in the catalog (store.go); its state
// machine, claims included, is machine.go. Its workers are River jobs,
// "slots", in the queue of the run's tenant schema (queueName): only
// processes built with the same migrations work on it. Each slot claims a
// tenant, migrates it (migrations.Migrate: a step per transaction), records
// the result, and claims the next. Claims
// are serialized on the run's row and enforce the canary wave, the total and
// per-server limits, so any number of slots in any number of processes keep
// them. A claim is a lease kept alive while the tenant migrates; a process
// that dies leaves leases that run out, and its tenants are taken again by
// the next claimer, who finds each either migrated (the step committed with
// its version) or not at all. A run whose slots all died is noticed by the
// supervisor of any live process (no heartbeat for a lease) and given a new
// generation of slots.

// slotArgs is one worker of a run's generation.
type slotArgs struct {
	RunID      int64 `json:"run_id" river:"unique"`
	Generation int   `json:"generation" river:"unique"`
	Slot       int   `json:"slot" river:"unique"`
}

func (slotArgs) Kind() string { return "tenantplane.fanout_slot" }

// enqueueSlots queues slots workers of the run's current generation, in tx.
func (s *Service) enqueueSlots(ctx context.Context, tx pgx.Tx, run MigrationRun, slots int) error {
	opts := &river.InsertOpts{Queue: queueName(run.SchemaHash), MaxAttempts: 25, UniqueOpts: river.UniqueOpts{ByArgs: true}}
	params := make([]river.InsertManyParams, slots)
	for i := range params {
		params[i] = river.InsertManyParams{Args: slotArgs{RunID: run.ID, Generation: run.Generation, Slot: i}, InsertOpts: opts}
	}
	_, err := s.jobs.Client().InsertManyTx(ctx, tx, params)
	if err != nil {
		return fmt.Errorf("queueing the run's workers: %w", err)
	}
	return nil
}

type slotWorker struct {
	river.WorkerDefaults[slotArgs]
	s *Service
}

// Timeout is none: a slot bounds itself (it hands over after a while, and
// each statement it runs has a statement_timeout).
func (w *slotWorker) Timeout(*river.Job[slotArgs]) time.Duration { return -1 }

func (w *slotWorker) Work(ctx context.Context, job *river.Job[slotArgs]) error {
	return w.s.runSlot(ctx, job.Args, job.Attempt)
}

// runSlot claims and migrates the run's tenants one after another until the
// run has none left for it, stops, or the slot has worked for a third of
// RescueAfter: then it hands over to a fresh attempt of itself (a snooze of
// zero, which costs no attempt), so that River never takes a busy slot for a
// stuck one.
//
// The slot claims as its process, generation, slot and River attempt: a
// snooze keeps the attempt, so a slot that snoozed because its claim's
// answer was lost takes that tenant again at its next claim; a slot River
// rescued (an attempt that looked stuck, which may still be migrating) is
// another attempt, and never takes its predecessor's tenant before the
// lease runs out.
func (s *Service) runSlot(ctx context.Context, a slotArgs, attempt int) error {
	run, err := s.store.GetMigrationRun(ctx, a.RunID)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil
	}
	if catalog.CatalogDown(err) && ctx.Err() == nil {
		return s.catalogDown(ctx, a, err)
	}
	if err != nil {
		return err
	}
	if run.SchemaHash != s.schema.Hash() {
		// Not ours to run (the queue should have kept it away).
		s.logger.ErrorContext(ctx, "a run's worker landed in a process with other tenant migrations", "run", a.RunID,
			"run_schema", run.SchemaHash, "schema", s.schema.Hash())
		return river.JobSnooze(10 * time.Second)
	}
	req := ClaimRequest{
		RunID: a.RunID, Generation: a.Generation, Worker: fmt.Sprintf("%s/g%d/s%d/a%d", s.worker(), a.Generation, a.Slot, attempt), Lease: s.cfg.Lease,
		WaitForProvisioning: uint(run.TargetVersion) != s.schema.Latest(),
	}
	handOver := time.Now().Add(s.jobs.Config().RescueAfter / 3)
	stopping := s.stoppingCh() // nil when not started: never closes
	for {
		select {
		case <-stopping:
			return river.JobSnooze(0) // for another process, or this one when it starts again
		default:
		}
		if time.Now().After(handOver) {
			return river.JobSnooze(0)
		}
		woken := s.woken()
		rt, outcome, err := claimTenant(ctx, s.store, req)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if catalog.CatalogDown(err) {
				return s.catalogDown(ctx, a, err)
			}
			return fmt.Errorf("run %d: claiming a tenant: %w", a.RunID, err)
		}
		switch outcome {
		case ClaimStop:
			return nil
		case ClaimFinished:
			s.wake()
			final, err := s.store.GetMigrationRun(ctx, a.RunID)
			if err == nil {
				s.logger.InfoContext(ctx, "migration run finished", "run", a.RunID, "op", "fanout", "state", final.State,
					"done", final.Counts.Done, "failed", final.Counts.Failed, "skipped", final.Counts.Skipped)
			}
			return nil
		case ClaimWait:
			jitter := time.Duration(rand.Int64N(int64(runPoll / 2)))
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-stopping:
			case <-woken:
			case <-time.After(runPoll + jitter):
			}
		case ClaimGot:
			err := s.migrateRunTenant(ctx, rt)
			s.wake()
			if catalog.CatalogDown(err) && ctx.Err() == nil {
				// The result could not be recorded: this attempt takes
				// the tenant again once the catalog answers.
				return s.catalogDown(ctx, a, err)
			}
			if err != nil {
				return err
			}
		}
	}
}

// catalogRetry is how long a slot, or a tenant, waits for a catalog that did
// not answer before it tries again.
const catalogRetry = time.Second

// catalogDown ends a slot's attempt whose catalog did not answer: the slot
// is tried again shortly (a snooze costs no attempt, so a catalog that hangs
// or resets for a while never uses up the slot's tries), and the run's
// tenants wait for it meanwhile.
func (s *Service) catalogDown(ctx context.Context, a slotArgs, err error) error {
	s.logger.WarnContext(ctx, "fan-out slot: the catalog did not answer; trying again in "+catalogRetry.String(),
		"run", a.RunID, "slot", a.Slot, "op", "fanout", "error", err)
	return river.JobSnooze(catalogRetry)
}

// migrateRunTenant migrates one claimed tenant and records the result. It
// returns an error only when the slot should stop: the process is stopping
// (the tenant is handed back at once), or the catalog cannot record the
// result (the lease runs out and the tenant is taken again).
func (s *Service) migrateRunTenant(ctx context.Context, rt RunTenant) error {
	logger := s.logger.With("run", rt.RunID, "tenant", rt.Slug, "tenant_id", rt.TenantID, "server", rt.Server, "op", "fanout")
	res := RunTenantResult{RunID: rt.RunID, TenantID: rt.TenantID, Owner: rt.LeaseOwner}
	start := time.Now()
	if rt.TenantState != catalog.TenantActive && rt.TenantState != catalog.TenantSuspended {
		res.State, res.Note = RunTenantSkipped, fmt.Sprintf("the tenant is %s", rt.TenantState)
		return s.finishRunTenant(ctx, logger, res, start)
	}

	if s.servers.Down(rt.Server) {
		return s.serverDown(ctx, logger, rt, res, start, fmt.Errorf("%w: server %s is not answering", errServerDown, rt.Server))
	}
	// Keep the lease while the migration runs; losing it (this process was
	// taken for dead) stops the migration at the next step. A server found
	// hung stops it too (servers).
	mctx, cancelCause := context.WithCancelCause(ctx)
	cancel := func() { cancelCause(nil) }
	defer cancel()
	var leaseLost atomic.Bool
	var hb sync.WaitGroup
	hb.Go(func() {
		t := time.NewTicker(max(s.cfg.Lease/3, 50*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-mctx.Done():
				return
			case <-t.C:
			}
			held, err := s.store.HeartbeatRunTenant(mctx, rt.RunID, rt.TenantID, rt.LeaseOwner, s.cfg.Lease)
			if err == nil && !held {
				logger.WarnContext(mctx, "lost the tenant's lease to another worker; stopping after the current step")
				leaseLost.Store(true)
				cancel()
				return
			}
		}
	})
	var out migrations.Outcome
	cfg, err := s.connConfig(ctx, rt.Server, rt.Database, "tenantplane-fanout")
	if catalog.CatalogDown(err) && ctx.Err() == nil {
		// Not the tenant's doing: it is taken again once the catalog
		// answers, its tries untouched.
		cancel()
		hb.Wait()
		res.State, res.RetryAfter = RunTenantPending, catalogRetry
		res.Note = fmt.Sprintf("the catalog did not answer (%v); trying again", err)
		return s.finishRunTenant(ctx, logger, res, start)
	}
	if err == nil {
		unwatch := s.servers.Watch(rt.Server, rt.Server, stall.ConnProbe(cfg, nil), cancelCause)
		out, err = migrations.Migrate(mctx, cfg, s.schema, uint(rt.ToVersion), s.cfg.Limits)
		unwatch()
	}
	down := errors.Is(context.Cause(mctx), errServerDown)
	cancel()
	hb.Wait()
	if down && ctx.Err() == nil && !leaseLost.Load() {
		if out.Read {
			from, version := int64(out.From), int64(out.Version)
			res.FromVersion, res.Version, res.Dirty = &from, &version, out.Dirty
		}
		return s.serverDown(ctx, logger, rt, res, start, context.Cause(mctx))
	}

	if out.Read {
		from, version := int64(out.From), int64(out.Version)
		res.FromVersion, res.Version, res.Dirty = &from, &version, out.Dirty
	}
	var stepErr *migrations.StepError
	var dirty migrations.ErrDirty
	switch {
	case err == nil:
		res.State = RunTenantDone
		if !out.Changed {
			res.Note = fmt.Sprintf("already at version %d", out.Version)
		}
	case ctx.Err() != nil:
		// The process is stopping: hand the tenant back for anyone to take
		// now. Each step is a transaction, so whatever ran is recorded.
		res.State, res.Note = RunTenantPending, "handed back by a stopping process: "+err.Error()
		s.finishRunTenant(ctx, logger, res, start) //nolint:errcheck // the lease runs out otherwise
		return ctx.Err()
	case leaseLost.Load():
		return nil // the lease went to another worker, who records the outcome
	case errors.As(err, &dirty):
		res.State, res.Dirty = RunTenantFailed, true
		res.Error = fmt.Sprintf("%s (POST /admin/v1/tenants/%s/migrations/force)", err, rt.Slug)
	case errors.As(err, &stepErr) && stepErr.Transient() && rt.Attempts < runRetries:
		res.State, res.RetryAfter = RunTenantPending, time.Duration(rt.Attempts)*2*time.Second
		res.Note = fmt.Sprintf("attempt %d: %s; trying again", rt.Attempts, err)
	case errors.As(err, &stepErr):
		res.State, res.Error = RunTenantFailed, err.Error()
	default: // the server, not a migration: say which
		res.State, res.Error = RunTenantFailed, fmt.Sprintf("server %s: %v", rt.Server, err)
	}
	return s.finishRunTenant(ctx, logger, res, start)
}

// errServerDown marks a tenant's migration stopped because its server
// stopped answering.
var errServerDown = errors.New("the tenant's server does not answer")

// serverDown records a tenant whose server does not answer: taken again
// later while it has tries left (other servers' tenants go on meanwhile),
// then failed, saying so.
func (s *Service) serverDown(ctx context.Context, logger *slog.Logger, rt RunTenant, res RunTenantResult, start time.Time, cause error) error {
	if rt.Attempts < runRetries {
		res.State, res.RetryAfter = RunTenantPending, time.Duration(rt.Attempts)*2*time.Second
		res.Note = fmt.Sprintf("attempt %d: %v; trying again", rt.Attempts, cause)
	} else {
		res.State, res.Error = RunTenantFailed, cause.Error()
	}
	return s.finishRunTenant(ctx, logger, res, start)
}

func (s *Service) finishRunTenant(ctx context.Context, logger *slog.Logger, res RunTenantResult, start time.Time) error {
	// Record the outcome even when the process is stopping: it happened.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	halted, stale, err := finishTenant(rctx, s.store, res)
	// A catalog that hangs or resets for a moment: record it once it
	// answers, rather than leave the tenant for its lease to run out. Only
	// the claim's owner records, so a retry never overwrites another's.
	for wait := 100 * time.Millisecond; catalog.CatalogDown(err) && rctx.Err() == nil; wait = min(2*wait, time.Second) {
		select {
		case <-rctx.Done():
		case <-time.After(wait):
			halted, stale, err = finishTenant(rctx, s.store, res)
		}
	}
	if err != nil {
		logger.ErrorContext(ctx, "recording a tenant's migration failed; it will be taken again", "error", err)
		return err
	}
	attrs := []any{"state", res.State, "duration_ms", time.Since(start).Milliseconds()}
	if res.Version != nil {
		attrs = append(attrs, "schema_version", *res.Version)
	}
	switch {
	case stale:
		logger.WarnContext(ctx, "tenant migrated, but its lease had gone to another worker, which records it", attrs...)
	case res.State == RunTenantFailed:
		logger.ErrorContext(ctx, "tenant migration failed", append(attrs, "error", res.Error)...)
	default:
		logger.InfoContext(ctx, "tenant migration "+string(res.State), append(attrs, "note", res.Note)...)
	}
	if halted {
		logger.ErrorContext(ctx, "migration run halted")
	}
	return nil
}

// abandonOtherRuns fails the running runs of other tenant migrations that
// no process has worked on for AbandonAfter (abandonRun).
func (s *Service) abandonOtherRuns(ctx context.Context) {
	ids, err := s.store.OtherUnattendedRuns(ctx, s.schema.Hash(), s.cfg.AbandonAfter)
	if err != nil && ctx.Err() == nil {
		s.logger.WarnContext(ctx, "fan-out supervisor: listing other migrations' runs failed", "error", err)
	}
	for _, id := range ids {
		abandoned, err := abandonRun(ctx, s.store, id, s.schema.Hash(), s.cfg.AbandonAfter, func(run MigrationRun) string {
			return fmt.Sprintf("no process with this run's tenant migrations (schema %s, target version %d) has worked on it for %s; "+
				"this process has other ones (schema %s: %s, %s): resume the run from a process that has its migrations, or start a new one",
				run.SchemaHash, run.TargetVersion, s.cfg.AbandonAfter, s.schema.Hash(), s.schema.Origin(), versionList(s.schema.Versions()))
		})
		switch {
		case err != nil && ctx.Err() == nil:
			s.logger.WarnContext(ctx, "fan-out supervisor: failing another migrations' run failed", "run", id, "error", err)
		case abandoned:
			s.logger.ErrorContext(ctx, "migration run failed: no process with its tenant migrations is left", "run", id, "op", "fanout",
				"schema", s.schema.Hash())
		}
	}
}

// superviseRuns gives a new generation of slots to each running run of this
// process's tenant schema that no worker has touched for a lease: the
// process that worked on it died. River would rescue its slot jobs too, but
// only after RescueAfter and once a leader is elected; this is quicker, and
// the rescued slots of the old generation stop at their first claim.
func (s *Service) superviseRuns(ctx context.Context) {
	every := max(s.cfg.Lease/2, 100*time.Millisecond)
	for {
		ids, err := s.store.UnattendedRuns(ctx, s.schema.Hash(), s.cfg.Lease)
		if err != nil && ctx.Err() == nil {
			s.logger.WarnContext(ctx, "fan-out supervisor: listing runs failed", "error", err)
		}
		for _, id := range ids {
			revived, err := reviveRun(ctx, s.store, id, s.cfg.Lease, s.enqueueSlots)
			switch {
			case err != nil && ctx.Err() == nil:
				s.logger.WarnContext(ctx, "fan-out supervisor: reviving a run failed", "run", id, "error", err)
			case revived:
				s.logger.WarnContext(ctx, "run had no live worker; queued new ones", "run", id, "op", "fanout")
			}
		}
		s.abandonOtherRuns(ctx)
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}
