package router

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/stall"
)

// probeServer is the stall probe of a tenant's database server: a fresh
// connection, as the tenant, within the server's connection budget (taken
// without waiting for it: a server at its budget is not judged), and
// SELECT 1. An error of the server's own is an answer.
func probeServer(cfg *pgx.ConnConfig) stall.Probe {
	return func(ctx context.Context) error {
		c := cfg.Copy()
		if d, ok := ctx.Deadline(); ok {
			c.ConnectTimeout = max(0, time.Until(d))
		}
		conn, err := pgx.ConnectConfig(ctx, c)
		if err == nil {
			defer conn.Close(context.Background())
			_, err = conn.Exec(ctx, "SELECT 1")
		}
		var pgErr *pgconn.PgError
		switch {
		case err == nil || errors.As(err, &pgErr):
			return nil
		case errors.Is(err, errBudget):
			return stall.ErrInconclusive
		}
		return err
	}
}

// serverDown is the cause of a request cancelled because its tenant's
// database server stopped answering, and the answer while it does not.
func serverDown(_ string) error {
	return catalog.Errorf(catalog.CodeUnavailable, "the tenant's database server is not answering; retry shortly")
}
