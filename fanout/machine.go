package fanout

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/catalog"
)

// The run state machine. Each transition is one transaction of the catalog
// composed from the store's flat methods (store.go), with its audit event
// and, where a run gains workers, their River jobs (enqueue): the run is
// durable exactly when its workers are.
//
//	running -> paused -> running      (pause, resume)
//	running -> halted -> running      (too many failures, or a canary failed; resume retries them)
//	running -> done | failed          (every tenant tried; failed: some failed, no more than max_failures)
//	failed -> running                 (resume retries the failed tenants)
//	running | paused | halted -> cancelled

// createRun records a run with one row per tenant, in state running, and
// queues its workers in the same transaction. Tenants are ordered with the
// servers interleaved, so that a per-server limit never starves the total;
// the canary wave is the first of that order (by default, the first tenant
// of each server). A run while another is open is a CodeConflict error;
// named tenants that do not exist or are not active or suspended are a
// CodeInvalid error.
func createRun(ctx context.Context, st *store, nr NewMigrationRun, enqueue RunEnqueue) (MigrationRun, error) {
	var run MigrationRun
	err := st.db.InTx(ctx, func(tx pgx.Tx) error {
		var slugs []string // nil: all tenants
		if len(nr.Tenants) > 0 {
			var err error
			if slugs, err = checkRunTenants(ctx, st, tx, nr.Tenants); err != nil {
				return err
			}
		}
		if open, err := st.openRun(ctx, tx); err != nil {
			return err
		} else if open != nil {
			return catalog.Errorf(catalog.CodeConflict, "run %d is %s: resume it, or cancel it, before starting another", open.ID, open.State)
		}
		id, err := st.insertRun(ctx, tx, nr, slugs == nil)
		if err != nil {
			return err
		}
		if err := st.insertRunTenants(ctx, tx, id, slugs, nr.Canary, nr.TargetVersion); err != nil {
			return err
		}
		if run, err = st.getRun(ctx, tx, id); err != nil {
			return err
		}
		if err := catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: nr.Actor, Action: "migration_run.created", Subject: runSubject(run.ID),
			ToState: string(run.State), Details: map[string]any{
				"target_version": run.TargetVersion, "tenants": run.Counts.Total, "concurrency": run.Concurrency,
				"per_server": run.PerServer, "canary": run.Canary, "max_failures": run.MaxFailures,
			}}); err != nil {
			return err
		}
		if run.Counts.Total == 0 {
			// Nothing to do: done at once, with nothing queued.
			if err := st.endRun(ctx, tx, id, RunDone, ""); err != nil {
				return err
			}
			run, err = st.getRun(ctx, tx, id)
			return err
		}
		if enqueue != nil {
			return enqueue(ctx, tx, run, min(run.Concurrency, run.Counts.Total))
		}
		return nil
	})
	return run, err
}

// checkRunTenants returns the distinct slugs, all of tenants a run can take,
// or a CodeInvalid error naming each that is not.
func checkRunTenants(ctx context.Context, st *store, q catalog.Querier, slugs []string) ([]string, error) {
	seen := map[string]bool{}
	var distinct []string
	for _, s := range slugs {
		if !seen[s] {
			seen[s] = true
			distinct = append(distinct, s)
		}
	}
	found, err := st.tenantPlacements(ctx, q, distinct)
	if err != nil {
		return nil, err
	}
	var problems []string
	for _, s := range distinct {
		f, ok := found[s]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("%q does not exist", s))
		case f.state != catalog.TenantActive && f.state != catalog.TenantSuspended:
			problems = append(problems, fmt.Sprintf("%q is %s", s, f.state))
		case !f.placed:
			problems = append(problems, fmt.Sprintf("%q has no database", s))
		}
	}
	if len(problems) > 0 {
		return nil, catalog.Errorf(catalog.CodeInvalid, "a run takes active or suspended tenants: %s", strings.Join(problems, "; "))
	}
	return distinct, nil
}

// transitions are the states each operator action applies to.
var transitions = map[RunAction][]RunState{
	RunPause:  {RunRunning},
	RunResume: {RunPaused, RunHalted, RunFailed},
	RunCancel: {RunRunning, RunPaused, RunHalted},
}

// changeRun pauses, resumes or cancels a run. Pause and cancel let the
// tenants being migrated finish and start no others; cancel marks the
// pending ones skipped. Resume retries the failed tenants and queues a new
// generation of workers through enqueue, in the same transaction. A run in
// a state the action does not apply to is a CodeConflict error.
func changeRun(ctx context.Context, st *store, id int64, action RunAction, actor string, enqueue RunEnqueue) (MigrationRun, error) {
	from := transitions[action]
	if from == nil {
		return MigrationRun{}, catalog.Errorf(catalog.CodeInvalid, "unknown run action %q", action)
	}
	var run MigrationRun
	err := st.db.InTx(ctx, func(tx pgx.Tx) error {
		state, err := st.lockRun(ctx, tx, id)
		if err != nil {
			return err
		}
		ok := false
		for _, s := range from {
			ok = ok || s == state
		}
		if !ok {
			names := make([]string, len(from))
			for i, s := range from {
				names[i] = string(s)
			}
			return catalog.Errorf(catalog.CodeConflict, "run %d is %s; %s needs it to be %s", id, state, action, joinStates(names))
		}
		if action == RunResume && state == RunFailed {
			// A finished run becomes open again: only if no other is.
			if open, err := st.openRun(ctx, tx); err != nil {
				return err
			} else if open != nil {
				return catalog.Errorf(catalog.CodeConflict, "run %d is %s: cancel it before resuming run %d", open.ID, open.State, id)
			}
		}
		switch action {
		case RunPause:
			err = st.setRunState(ctx, tx, id, RunPaused, "paused by "+actor)
		case RunCancel:
			if err = st.endRun(ctx, tx, id, RunCancelled, "cancelled by "+actor); err == nil {
				err = st.skipPending(ctx, tx, id, "the run was cancelled")
			}
		case RunResume:
			if err = st.reopenRun(ctx, tx, id); err == nil {
				err = st.retryFailed(ctx, tx, id)
			}
		}
		if err != nil {
			return err
		}
		if run, err = st.getRun(ctx, tx, id); err != nil {
			return err
		}
		if err := catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: actor, Action: "migration_run." + pastTense(action), Subject: runSubject(id),
			FromState: string(state), ToState: string(run.State)}); err != nil {
			return err
		}
		if action == RunResume && enqueue != nil {
			if slots := min(run.Concurrency, run.Counts.Pending+run.Counts.Running); slots > 0 {
				return enqueue(ctx, tx, run, slots)
			}
		}
		return nil
	})
	return run, err
}

func pastTense(a RunAction) string {
	switch a {
	case RunPause:
		return "paused"
	case RunResume:
		return "resumed"
	}
	return "cancelled"
}

// ClaimOutcome is what a worker's claim came to.
type ClaimOutcome int

const (
	// ClaimGot: the worker holds a tenant; migrate it, then finishTenant.
	ClaimGot ClaimOutcome = iota
	// ClaimWait: nothing to take now (limits, the canary wave, retries not
	// due, tenants still provisioning); ask again shortly.
	ClaimWait
	// ClaimStop: the run is not running, or the worker's generation is old.
	ClaimStop
	// ClaimFinished: every tenant was tried; the run is now done or failed.
	ClaimFinished
)

// ClaimRequest is a worker asking for a tenant of a run.
type ClaimRequest struct {
	RunID      int64
	Generation int
	// Worker names the claimer: the process and the slot (its generation
	// and attempt too), for operators, and so that a slot whose claim's
	// answer was lost (the catalog reset under it) takes its own row again
	// at its next claim instead of leaving it until the lease runs out. A
	// worker claims only when it migrates none, so its own row is never
	// being migrated.
	Worker string
	Lease  time.Duration // how long the claim lives without a heartbeat
	// WaitForProvisioning keeps the run from finishing while tenants are
	// still provisioning, so that those created during it join it (needed
	// when new tenants are not created at the run's target).
	WaitForProvisioning bool
}

// claimTenant takes the next tenant of a run that the limits allow: the
// run must be running and of the worker's generation; while any canary is
// not done, only canaries are taken; at most concurrency tenants run at
// once, and per_server on one server. A tenant whose worker's lease ran out
// is taken again. Claims of a run are serialized on its row (store.claim),
// so the limits hold across any number of processes. When nothing is left,
// the run is finished (done, or failed when some tenants failed), after
// taking in the tenants that appeared while it ran when it covers all
// tenants.
func claimTenant(ctx context.Context, st *store, req ClaimRequest) (RunTenant, ClaimOutcome, error) {
	c, err := st.claim(ctx, req)
	if err != nil {
		return RunTenant{}, ClaimWait, err
	}
	switch {
	case !c.running:
		return RunTenant{}, ClaimStop, nil
	case c.claimed != "":
		rt, err := st.getRunTenant(ctx, st.db.Pool(), req.RunID, c.claimed)
		if err != nil {
			return RunTenant{}, ClaimWait, err
		}
		return rt, ClaimGot, nil
	case c.unsettled:
		return RunTenant{}, ClaimWait, nil
	}
	// Every tenant settled: finish the run, or take in late ones.
	outcome := ClaimWait
	err = st.db.InTx(ctx, func(tx pgx.Tx) error {
		run, err := st.lockSettling(ctx, tx, req.RunID)
		if err != nil {
			return err
		}
		switch {
		case run.state != RunRunning || run.generation != req.Generation:
			outcome = ClaimStop
			return nil
		case run.unsettled:
			return nil
		}
		if run.allTenants {
			joined, err := st.joinLateTenants(ctx, tx, req.RunID, run.target)
			if err != nil || joined > 0 {
				return err // ClaimWait: the next claim takes them
			}
			if req.WaitForProvisioning {
				if provisioning, err := st.provisioningSince(ctx, tx, run.createdAt); err != nil || provisioning {
					return err
				}
			}
		}
		failed, err := st.countFailed(ctx, tx, req.RunID)
		if err != nil {
			return err
		}
		final, reason := RunDone, ""
		if failed > 0 {
			final, reason = RunFailed, fmt.Sprintf("%s failed (max_failures allowed it); resume retries them", tenantsN(failed))
		}
		if err := st.endRun(ctx, tx, req.RunID, final, reason); err != nil {
			return err
		}
		outcome = ClaimFinished
		return catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: "provisioner", Action: "migration_run." + string(final), Subject: runSubject(req.RunID),
			FromState: string(RunRunning), ToState: string(final), Reason: reason})
	})
	return RunTenant{}, outcome, err
}

// finishTenant records an attempt's result and copies the database's
// version to the tenant's record. A failure halts the run when it is a
// canary's or when the failures are now more than max_failures. It reports
// halted, and stale when the claim had passed to another worker (then
// nothing is recorded).
func finishTenant(ctx context.Context, st *store, res RunTenantResult) (halted, stale bool, err error) {
	if res.State != RunTenantFailed {
		// No decision rests on it: no need to queue behind the run's lock.
		recorded, err := st.recordResult(ctx, st.db.Pool(), res)
		return false, !recorded, err
	}
	err = st.db.InTx(ctx, func(tx pgx.Tx) error {
		state, maxFailures, err := st.lockRunLimits(ctx, tx, res.RunID)
		if err != nil {
			return err
		}
		recorded, err := st.recordResult(ctx, tx, res)
		if err != nil {
			return err
		}
		if !recorded {
			stale = true
			return nil
		}
		if state != RunRunning && state != RunPaused {
			return nil
		}
		rt, err := st.getRunTenant(ctx, tx, res.RunID, res.TenantID)
		if err != nil {
			return err
		}
		reason := ""
		if rt.Canary {
			reason = fmt.Sprintf("canary tenant %s failed: %s", rt.Slug, res.Error)
		} else {
			failed, err := st.countFailed(ctx, tx, res.RunID)
			if err != nil {
				return err
			}
			if failed <= maxFailures {
				return nil
			}
			reason = fmt.Sprintf("%s failed, more than max_failures (%d)", tenantsN(failed), maxFailures)
		}
		if err := st.setRunState(ctx, tx, res.RunID, RunHalted, reason); err != nil {
			return err
		}
		halted = true
		return catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: "provisioner", Action: "migration_run.halted", Subject: runSubject(res.RunID),
			FromState: string(state), ToState: string(RunHalted), Reason: reason})
	})
	return halted, stale, err
}

// reviveRun gives an unattended run a new generation of workers (through
// enqueue, in the same transaction) if it is still unattended: of several
// processes that notice, one revives it. It reports whether it did.
func reviveRun(ctx context.Context, st *store, id int64, after time.Duration, enqueue RunEnqueue) (bool, error) {
	revived := false
	err := st.db.InTx(ctx, func(tx pgx.Tx) error {
		bumped, err := st.bumpUnattended(ctx, tx, id, after)
		if err != nil || !bumped {
			return err
		}
		run, err := st.getRun(ctx, tx, id)
		if err != nil {
			return err
		}
		revived = true
		return enqueue(ctx, tx, run, max(1, min(run.Concurrency, run.Counts.Pending+run.Counts.Running)))
	})
	return revived, err
}

// abandonRun fails a running run made with other tenant migrations than
// the caller's (schemaHash) that no worker has touched for longer than
// after: no process with the run's migrations is left to work on it (its
// own supervisors revive a run after one lease). The reason says so and
// what to do; a run failed so is resumed from a process that has the run's
// migrations, and no longer keeps another run from starting. It reports
// whether it failed the run (false: attended meanwhile, no longer running,
// or of the caller's migrations).
func abandonRun(ctx context.Context, st *store, id int64, schemaHash string, after time.Duration, reason func(MigrationRun) string) (bool, error) {
	abandoned := false
	err := st.db.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := st.lockRun(ctx, tx, id); err != nil {
			return err
		}
		run, err := st.getRun(ctx, tx, id)
		if err != nil {
			return err
		}
		if run.State != RunRunning || run.SchemaHash == schemaHash {
			return nil
		}
		why := reason(run)
		if abandoned, err = st.failUnattended(ctx, tx, id, after, why); err != nil || !abandoned {
			return err
		}
		return catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: "fanout", Action: "migration_run.failed", Subject: runSubject(id),
			FromState: string(RunRunning), ToState: string(RunFailed), Reason: why})
	})
	return abandoned, err
}

func tenantsN(n int) string {
	if n == 1 {
		return "1 tenant"
	}
	return strconv.Itoa(n) + " tenants"
}

func joinStates(states []string) string {
	if len(states) == 1 {
		return states[0]
	}
	return strings.Join(states[:len(states)-1], ", ") + " or " + states[len(states)-1]
}
