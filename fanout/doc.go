// Package fanout rolls the tenant schema out to every tenant database:
// migration runs with a canary wave, total and per-server limits, a failure
// threshold that halts the run, pause, resume and cancel, and resumption
// after a crash by any live process. It also reads the fleet's schema from
// the tenant databases themselves (SchemaStatus: the version histogram, the
// tenants behind, dirty or disagreeing with the catalog) and clears a
// repaired tenant's dirty flag (ForceSchema).
//
// A run and its tenants are rows of the catalog (migration_runs,
// migration_run_tenants; store.go). Its workers are River jobs, "slots",
// registered into the process's one job client (Config.Jobs): each claims a
// tenant under a lease, migrates it with migrations.Migrate (a step per
// transaction), records the result and claims the next.
//
//	svc, err := fanout.New(store, fanout.Config{Logger: logger, Jobs: registry, Migrations: &schema})
//	...
//	run, err := svc.StartRun(ctx, fanout.RunSpec{Concurrency: 20, MaxFailures: 2}, "operator")
//	report, err := svc.Report(ctx, run.ID)
package fanout
