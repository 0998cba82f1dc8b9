// Package controlplane is tenantplane's composition root: it reads the
// configuration, opens the catalog, wires the provisioner, fan-out, router
// and billing together (the process's one River client, internal/jobs,
// included), serves the admin API, runs the background work, and shuts it
// all down in order. Only cmd/tenantplane imports it.
//
//	cfg, err := controlplane.ConfigFromEnv(os.Getenv)
//	app, err := controlplane.New(ctx, cfg, logger)
//	err = app.Run(ctx) // serves until ctx ends, then shuts down gracefully
package controlplane
