package fanout

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tenantplane/tenantplane/catalog"
)

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
		rep.Warning = fmt.Sprintf("the run was made with other tenant migrations (schema %s) than this process has (schema %s: %s, %s): "+
			"only processes with the same migrations work on it or resume it",
			run.SchemaHash, s.schema.Hash(), s.schema.Origin(), versionList(s.schema.Versions()))
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

// ChangeRun pauses, resumes or cancels a run. Only a process with the
// tenant migrations a run was made with resumes it: another would queue
// workers that no process of its own kind takes.
func (s *Service) ChangeRun(ctx context.Context, id int64, action RunAction, actor string) (MigrationRun, error) {
	if action == RunResume {
		run, err := s.store.GetMigrationRun(ctx, id)
		if err != nil {
			return MigrationRun{}, err
		}
		if run.SchemaHash != s.schema.Hash() {
			return MigrationRun{}, catalog.Errorf(catalog.CodeConflict,
				"run %d was made with other tenant migrations (schema %s, target version %d) than this process has (schema %s: %s, %s): "+
					"resume it from a process that has its migrations, or cancel it and start a new run here",
				id, run.SchemaHash, run.TargetVersion, s.schema.Hash(), s.schema.Origin(), versionList(s.schema.Versions()))
		}
	}
	run, err := changeRun(ctx, s.store, id, action, actor, s.enqueueSlots)
	if err == nil {
		s.logger.InfoContext(ctx, "migration run "+string(action), "run", id, "op", "fanout", "state", run.State, "actor", actor)
	}
	return run, err
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
