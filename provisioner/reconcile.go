package provisioner

import (
	"context"
	"errors"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantplane/tenantplane/catalog"
)

// Orphan is a database or role on a server that looks like the
// provisioner's (by its name) but that the catalog does not account for.
//
// The admin API's orphans also hold the mover's leftover replication
// objects (mover.Leftover), which controlplane adds with their Database.
type Orphan struct {
	Server   string `json:"server"`
	Kind     string `json:"kind"` // "database" or "role"; the mover's: "replication slot", "publication", "subscription"
	Name     string `json:"name"`
	Database string `json:"database,omitempty"` // where a replication object lives
	Why      string `json:"why"`
	Gone     bool   `json:"removed"`
}

// tenantNameRE matches catalog.DatabaseName: only names the provisioner
// makes are ever reported, so a reconciler never touches anything else.
var tenantNameRE = regexp.MustCompile(`^t_[0-9a-f]{32}$`)

// Reconcile compares every server's databases and roles with the catalog and
// returns the orphans the provisioner made: tenant databases and roles the
// catalog does not hold as live, and ready or template databases of a schema
// this process does not build. With remove, it drops them.
//
// It stops at the first server that fails; the error names that server and
// says why (a server that cannot be reached is CodeUnavailable), never with
// its DSN.
func (p *Provisioner) Reconcile(ctx context.Context, remove bool) ([]Orphan, error) {
	servers, err := p.store.ListServers(ctx)
	if err != nil {
		return nil, err
	}
	orphans := []Orphan{}
	for _, srv := range servers {
		found, err := p.reconcileServer(ctx, srv, remove)
		if err != nil {
			after := ""
			if remove {
				after = "; orphans on the servers reconciled before it were removed"
			}
			return orphans, serverError(srv.Name, err, after)
		}
		orphans = append(orphans, found...)
	}
	return orphans, nil
}

// serverError gives an error met on the server named name a category and a
// message that names the server, ends with after, and holds no DSN: pgx's
// own texts can carry the host and user, so only their gist is kept.
// Errors that have a category already (the catalog's) keep theirs.
func serverError(name string, err error, after string) error {
	var known *catalog.Error
	if errors.As(err, &known) || errors.Is(err, context.Canceled) {
		return err
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return catalog.WrapError(catalog.CodeUnavailable, err, "server %q could not be reached: %s%s", name, catalog.ConnectReason(err), after)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch class := pgErr.Code[:2]; {
		case class == "08", class == "53", strings.HasPrefix(pgErr.Code, "57P"): // connection, resources, shutting down
			return catalog.WrapError(catalog.CodeUnavailable, err, "server %q could not be reached: %s%s", name, pgErr.Message, after)
		case pgErr.Code == "57014", pgErr.Code == "55P03": // statement or lock timeout
			return catalog.WrapError(catalog.CodeUnavailable, err, "server %q is busy: %s%s", name, pgErr.Message, after)
		}
		return catalog.WrapError(catalog.CodeInternal, err, "server %q: %s%s", name, pgErr.Message, after)
	}
	// Anything else is the transport: a connection lost, a read that timed out.
	return catalog.WrapError(catalog.CodeUnavailable, err, "server %q could not be reached: %s%s", name, catalog.ConnectReason(err), after)
}

func (p *Provisioner) reconcileServer(ctx context.Context, srv catalog.Server, remove bool) ([]Orphan, error) {
	pool, err := p.admin(ctx, srv.ID, srv.Name)
	if err != nil {
		return nil, err
	}
	// Read the server first, then the catalog: a tenant created in between is
	// in the catalog's answer, so it is never taken for an orphan.
	rows, err := pool.Query(ctx, `
		SELECT 'database', datname FROM pg_database WHERE datname ~ '^(t|tp)_'
		UNION ALL SELECT 'role', rolname FROM pg_roles WHERE rolname ~ '^t_'
		ORDER BY 1, 2 -- databases first: a role that owns a database cannot be dropped before it`)
	if err != nil {
		return nil, err
	}
	type object struct{ Kind, Name string }
	objects, err := pgx.CollectRows(rows, pgx.RowToStructByPos[object])
	if err != nil {
		return nil, err
	}
	known, err := p.store.KnownDatabases(ctx, srv.ID)
	if err != nil {
		return nil, err
	}
	var orphans []Orphan
	for _, o := range objects {
		why := ""
		switch {
		case tenantNameRE.MatchString(o.Name) && !known[o.Name]:
			why = "no live tenant in the catalog has this " + o.Kind
		case o.Kind == "database" && strings.HasPrefix(o.Name, templatePrefix) && o.Name != p.templateName():
			why = "template of another tenant schema"
		case o.Kind == "database" && strings.HasPrefix(o.Name, buildPrefix) && o.Name != buildPrefix+p.schema.Hash():
			why = "unfinished template build of another tenant schema"
		}
		if why == "" {
			continue
		}
		orphan := Orphan{Server: srv.Name, Kind: o.Kind, Name: o.Name, Why: why}
		if remove {
			stmt := "DROP DATABASE IF EXISTS " + ident(o.Name) + " WITH (FORCE)"
			if o.Kind == "role" {
				stmt = "DROP ROLE IF EXISTS " + ident(o.Name)
			}
			if _, err := pool.Exec(ctx, stmt); err != nil {
				return orphans, err
			}
			orphan.Gone = true
			p.logger.InfoContext(ctx, "orphan removed", "server", srv.Name, "kind", o.Kind, "name", o.Name)
		}
		orphans = append(orphans, orphan)
	}
	return orphans, nil
}
