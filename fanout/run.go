package fanout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/tenantplane/tenantplane/catalog"
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

// Fan-out defaults.
const (
	// DefaultRunConcurrency is a run's concurrency when none is given.
	DefaultRunConcurrency = 10
	// maxRunConcurrency bounds a run's concurrency: each migrating tenant
	// holds a connection to its server.
	maxRunConcurrency = 500
	// runRetries is how many times a tenant whose migration found a lock
	// held elsewhere is tried before it counts as failed.
	runRetries = 3
	// runPoll is how often an idle slot asks again when nothing woke it.
	runPoll = 250 * time.Millisecond
)

// RunSpec is what starting a migration run takes. Zero fields take the defaults.
type RunSpec struct {
	// TargetVersion is the version to take the tenants to, up or down.
	// Default: the newest of the tenant migrations.
	TargetVersion *int64 `json:"target_version"`
	// Concurrency is how many tenants migrate at once in total. Default 10.
	Concurrency int `json:"concurrency"`
	// PerServer is how many tenants of one server migrate at once. Default: Concurrency.
	PerServer int `json:"per_server"`
	// Canary is how many tenants go first, alone; the rest start once they
	// all succeeded. Default: one per server; 0: no canary wave.
	Canary *int `json:"canary"`
	// MaxFailures is how many tenants may fail before the run halts. Default 0.
	MaxFailures int `json:"max_failures"`
	// Tenants names the tenants (slugs). Default: every active and suspended tenant.
	Tenants []string `json:"tenants"`
}

// StartRun starts a migration run. Bad input is a CodeInvalid error and
// leaves nothing behind; another open run is a CodeConflict error.
func (s *Service) StartRun(ctx context.Context, spec RunSpec, actor string) (MigrationRun, error) {
	nr := NewMigrationRun{
		TargetVersion: int64(s.schema.Latest()), SchemaHash: s.schema.Hash(), Concurrency: spec.Concurrency,
		PerServer: spec.PerServer, Canary: -1, MaxFailures: spec.MaxFailures, Tenants: spec.Tenants, Actor: actor,
	}
	if spec.TargetVersion != nil {
		nr.TargetVersion = *spec.TargetVersion
		if nr.TargetVersion < 0 || nr.TargetVersion > int64(^uint32(0)) || !s.schema.Has(uint(nr.TargetVersion)) {
			return MigrationRun{}, catalog.Errorf(catalog.CodeInvalid, "target_version %d is not a version of the tenant migrations (%s: %s; 0 is no schema)",
				nr.TargetVersion, s.schema.Origin(), versionList(s.schema.Versions()))
		}
	}
	if nr.Concurrency == 0 {
		nr.Concurrency = DefaultRunConcurrency
	}
	if nr.PerServer == 0 {
		nr.PerServer = nr.Concurrency
	}
	if spec.Canary != nil {
		nr.Canary = *spec.Canary
	}
	switch {
	case nr.Concurrency < 1 || nr.Concurrency > maxRunConcurrency:
		return MigrationRun{}, catalog.Errorf(catalog.CodeInvalid, "concurrency must be from 1 to %d", maxRunConcurrency)
	case nr.PerServer < 1:
		return MigrationRun{}, catalog.Errorf(catalog.CodeInvalid, "per_server must be at least 1")
	case spec.Canary != nil && nr.Canary < 0:
		return MigrationRun{}, catalog.Errorf(catalog.CodeInvalid, "canary must not be negative (0: no canary wave)")
	case nr.MaxFailures < 0:
		return MigrationRun{}, catalog.Errorf(catalog.CodeInvalid, "max_failures must not be negative")
	}
	for _, slug := range nr.Tenants {
		if err := catalog.ValidateSlug(slug); err != nil {
			return MigrationRun{}, err
		}
	}
	if err := s.checkExtensions(ctx, uint(nr.TargetVersion)); err != nil {
		return MigrationRun{}, err
	}
	run, err := createRun(ctx, s.store, nr, s.enqueueSlots)
	if err != nil {
		return MigrationRun{}, err
	}
	s.logger.InfoContext(ctx, "migration run started", "run", run.ID, "op", "fanout", "target_version", run.TargetVersion,
		"tenants", run.Counts.Total, "concurrency", run.Concurrency, "per_server", run.PerServer, "canary", run.Canary,
		"max_failures", run.MaxFailures, "actor", actor)
	// New tenants come from the template of this schema: have it and the
	// warm pool ready at the newest version before they are asked for.
	if s.cfg.Refiller != nil {
		s.cfg.Refiller.Refill()
	}
	return run, nil
}

func versionList(vs []uint) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = strconv.FormatUint(uint64(v), 10)
	}
	return "versions " + strings.Join(parts, ", ")
}

// RunReport is a run with the tenants an operator needs to see while it goes.
type RunReport struct {
	MigrationRun
	// NewestVersion is the newest version of this process's tenant migrations.
	NewestVersion uint `json:"newest_version"`
	// Failed lists every failed tenant with its error.
	Failed []RunTenant `json:"failed"`
	// Running lists the tenants being migrated now.
	Running []RunTenant `json:"running"`
	// Warning says why the run may not be moving, when there is a reason to think so.
	Warning string `json:"warning,omitempty"`
}

// ListRuns returns a page of runs, newest first: at most limit
// (catalog.CheckLimit's bounds) after cursor, and the next page's cursor.
func (s *Service) ListRuns(ctx context.Context, limit int, cursor string) ([]MigrationRun, string, error) {
	return s.store.ListMigrationRuns(ctx, limit, cursor)
}

// Report returns a run with its counts, failed and running tenants.
func (s *Service) Report(ctx context.Context, id int64) (RunReport, error) {
	run, err := s.store.GetMigrationRun(ctx, id)
	if err != nil {
		return RunReport{}, err
	}
	rep := RunReport{MigrationRun: run, NewestVersion: s.schema.Latest(), Failed: []RunTenant{}, Running: []RunTenant{}}
	switch {
	case run.SchemaHash != s.schema.Hash():
		rep.Warning = fmt.Sprintf("the run was made with other tenant migrations (%s) than this process has (%s): only processes with the same migrations work on it",
			run.SchemaHash, s.schema.Hash())
		rep.NewestVersion = 0 // not known for that set
	case run.State == RunRunning && time.Since(run.HeartbeatAt) > 2*s.cfg.Lease:
		rep.Warning = fmt.Sprintf("no worker has touched the run for %s: are the processes with its tenant migrations running?", time.Since(run.HeartbeatAt).Round(time.Second))
	}
	if run.Counts.Failed+run.Counts.Running > 0 {
		rows, err := s.store.ListRunTenants(ctx, id, []RunTenantState{RunTenantFailed, RunTenantRunning}, 0)
		if err != nil {
			return RunReport{}, err
		}
		for _, r := range rows {
			if r.State == RunTenantFailed {
				rep.Failed = append(rep.Failed, r)
			} else {
				rep.Running = append(rep.Running, r)
			}
		}
	}
	return rep, nil
}

// ChangeRun pauses, resumes or cancels a run.
func (s *Service) ChangeRun(ctx context.Context, id int64, action RunAction, actor string) (MigrationRun, error) {
	run, err := changeRun(ctx, s.store, id, action, actor, s.enqueueSlots)
	if err == nil {
		s.logger.InfoContext(ctx, "migration run "+string(action), "run", id, "op", "fanout", "state", run.State, "actor", actor)
	}
	return run, err
}

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
	return w.s.runSlot(ctx, job.Args)
}

// runSlot claims and migrates the run's tenants one after another until the
// run has none left for it, stops, or the slot has worked for a third of
// RescueAfter: then it hands over to a fresh attempt of itself (a snooze of
// zero, which costs no attempt), so that River never takes a busy slot for a
// stuck one.
func (s *Service) runSlot(ctx context.Context, a slotArgs) error {
	run, err := s.store.GetMigrationRun(ctx, a.RunID)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil
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
		RunID: a.RunID, Generation: a.Generation, Worker: s.worker(), Lease: s.cfg.Lease,
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
			if err != nil {
				return err
			}
		}
	}
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

	// Keep the lease while the migration runs; losing it (this process was
	// taken for dead) stops the migration at the next step.
	mctx, cancel := context.WithCancel(ctx)
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
	if err == nil {
		out, err = migrations.Migrate(mctx, cfg, s.schema, uint(rt.ToVersion), s.cfg.Limits)
	}
	cancel()
	hb.Wait()

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
	default:
		res.State, res.Error = RunTenantFailed, err.Error()
	}
	return s.finishRunTenant(ctx, logger, res, start)
}

func (s *Service) finishRunTenant(ctx context.Context, logger *slog.Logger, res RunTenantResult, start time.Time) error {
	// Record the outcome even when the process is stopping: it happened.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	halted, stale, err := finishTenant(rctx, s.store, res)
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

// RunTenants lists a page of a run's tenants in a state ("" for all), in
// claim order, and the next page's cursor.
func (s *Service) RunTenants(ctx context.Context, id int64, state string, limit int, cursor string) ([]RunTenant, string, error) {
	var states []RunTenantState
	if state != "" {
		st := RunTenantState(state)
		if !slices.Contains([]RunTenantState{RunTenantPending, RunTenantRunning, RunTenantDone,
			RunTenantFailed, RunTenantSkipped}, st) {
			return nil, "", catalog.Errorf(catalog.CodeInvalid, "state must be pending, running, done, failed or skipped")
		}
		states = []RunTenantState{st}
	}
	if _, err := s.store.GetMigrationRun(ctx, id); err != nil {
		return nil, "", err
	}
	return s.store.ListRunTenantsPage(ctx, id, states, limit, cursor)
}
