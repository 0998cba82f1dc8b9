package router

import (
	"errors"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/stall"
)

// probeServer is the stall probe of a tenant's database server: a fresh
// connection, as the tenant, within the server's connection budget (taken
// without waiting for it: a server at its budget is not judged), and
// SELECT 1.
func probeServer(cfg *pgx.ConnConfig) stall.Probe {
	return stall.ConnProbe(cfg, func(err error) bool { return errors.Is(err, errBudget) })
}

// serverDown is the cause of a request cancelled because its tenant's
// database server stopped answering, and the answer while it does not.
func serverDown(_ string) error {
	return catalog.Errorf(catalog.CodeUnavailable, "the tenant's database server is not answering; retry shortly")
}
