package controlplane

import (
	"context"
	"net/http"

	"github.com/tenantplane/tenantplane/controlplane/console"
	"github.com/tenantplane/tenantplane/provisioner"
)

// withConsole serves the operator console under /console/ on the admin
// listener beside the admin API (admin): the console signs an operator in
// with the admin token and calls the same parts the API does.
func (a *App) withConsole(admin http.Handler) (http.Handler, error) {
	con, err := console.New(console.Config{
		AdminToken: a.cfg.AdminToken, Store: a.store, Provisioner: a.prov, Fanout: a.fanout, Moves: a.moves,
		Billing: a.billing, Orphans: a.findOrphans, Logger: a.logger,
	})
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle(console.Prefix, con)
	mux.Handle("GET /console", http.RedirectHandler(console.Prefix, http.StatusMovedPermanently))
	mux.Handle("/", admin)
	return mux, nil
}

// findOrphans reports (remove false) or drops (remove true) the databases
// and roles on the servers that the provisioner made and the catalog does
// not account for, and the replication slots, publications and
// subscriptions named like a move's that no open move owns (a forgotten
// slot fills a disk).
func (a *App) findOrphans(ctx context.Context, remove bool) ([]provisioner.Orphan, error) {
	found, err := a.prov.Reconcile(ctx, remove)
	if err != nil {
		return nil, err
	}
	leftovers, err := a.moves.Leftovers(ctx, remove)
	if err != nil {
		return nil, err
	}
	for _, l := range leftovers {
		found = append(found, provisioner.Orphan{Server: l.Server, Kind: l.Kind, Name: l.Name, Database: l.Database, Why: l.Why, Gone: l.Gone})
	}
	return found, nil
}
